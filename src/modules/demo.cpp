#include "attn/modules/demo.hpp"

#include <chrono>
#include <cmath>
#include <random>

#include "attn/modules/linear_attention.hpp"
#include "attn/modules/mla.hpp"
#include "attn/modules/multi_head_attention.hpp"

namespace attn::modules {
namespace {

Tensor normal(std::initializer_list<std::int64_t> shape, double sigma, std::mt19937_64& rng) {
  Tensor t(shape, DType::f32);
  std::normal_distribution<float> dist(0.0f, float(sigma));
  for (std::int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = dist(rng);
  return t;
}

/// Weights scaled by 1 / sqrt(in) so activations stay O(1) through the layer.
Linear random_linear(std::int64_t out, std::int64_t in, std::mt19937_64& rng) {
  return Linear{normal({out, in}, 1.0 / std::sqrt(double(in)), rng), {}};
}

double rel_l2(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double d = double(a.as<float>()[i]) - double(b.as<float>()[i]);
    num += d * d;
    den += double(b.as<float>()[i]) * double(b.as<float>()[i]);
  }
  return std::sqrt(num / den);
}

/// Tokens [first, first + count) of x (B, S, F).
Tensor tokens(const Tensor& x, std::int64_t first, std::int64_t count) {
  const std::int64_t b = x.size(0), s = x.size(1), f = x.size(2);
  Tensor y({b, count, f}, DType::f32);
  for (std::int64_t i = 0; i < b; ++i)
    std::copy_n(x.as<float>() + (i * s + first) * f, count * f, y.as<float>() + i * count * f);
  return y;
}

double elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

std::vector<DemoRow> demo_rows(Backend backend, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<DemoRow> rows;
  AttentionParams causal;
  causal.mask = Mask::causal_mask();
  const int batch = 2, prompt = 24, total = 32;

  // MHA with RoPE: decode after prefill against one pass over the whole sequence.
  const MHAConfig mha_config{.d_model = 256, .heads = 8, .kv_heads = 0, .head_dim = 32, .rope = RopeConfig{}};
  const MultiHeadAttention mha(mha_config, {random_linear(256, 256, rng), random_linear(256, 256, rng),
                                            random_linear(256, 256, rng), random_linear(256, 256, rng)});
  const Tensor x = normal({batch, total, 256}, 1.0, rng);
  const std::string mha_shape = "d_model 256, heads 8, head_dim 32, B 2, S 32";
  auto start = std::chrono::steady_clock::now();
  const Tensor whole = mha.forward(x, causal, backend);
  rows.push_back({"mha prefill", mha_shape, elapsed_ms(start), "ms"});
  ContiguousKVCache cache = mha.make_cache(batch, total);
  mha.forward(tokens(x, 0, prompt), causal, backend, &cache);
  start = std::chrono::steady_clock::now();
  Tensor last;
  for (int t = prompt; t < total; ++t) last = mha.forward(tokens(x, t, 1), causal, backend, &cache);
  rows.push_back({"mha decode step", mha_shape, elapsed_ms(start) / (total - prompt), "ms"});
  rows.push_back({"mha decode vs whole sequence", mha_shape + ", last token", rel_l2(last, tokens(whole, total - 1, 1)),
                  "rel L2"});

  // GQA / MQA conversion of the MHA layer (random heads: the worst case; trained heads are closer).
  for (int kv : {4, 2, 1})
    rows.push_back({"mha -> " + std::string(kv == 1 ? "mqa" : "gqa") + " conversion",
                    "8 -> " + std::to_string(kv) + " kv heads", output_rel_l2(convert_kv_heads(mha, kv), mha, x, causal, backend),
                    "rel L2"});

  // MLA: the absorbed path against the expanded one.
  const MLAConfig mla_config{.d_model = 256, .heads = 8, .q_lora_rank = 96, .kv_lora_rank = 64,
                             .qk_nope_head_dim = 32, .qk_rope_head_dim = 16, .v_head_dim = 32};
  MLAWeights w;
  w.q_down = random_linear(96, 256, rng);
  w.q_norm = Norm::identity_weights(NormKind::rms_norm, 96, mla_config.norm_eps);
  w.q_up = random_linear(8 * 48, 96, rng);
  w.kv_down = random_linear(64 + 16, 256, rng);
  w.kv_norm = Norm::identity_weights(NormKind::rms_norm, 64, mla_config.norm_eps);
  w.k_up = random_linear(8 * 32, 64, rng);
  w.v_up = random_linear(8 * 32, 64, rng);
  w.o = random_linear(256, 8 * 32, rng);
  const MultiHeadLatentAttention mla(mla_config, w);
  const std::string mla_shape = "d_model 256, heads 8, Rq 96, R 64, N 32, P 16, V 32, S 32";
  rows.push_back({"mla absorbed vs expanded", mla_shape,
                  rel_l2(mla.forward(x, causal, backend, nullptr, MLAPath::absorbed),
                         mla.forward(x, causal, backend, nullptr, MLAPath::expanded)),
                  "rel L2"});

  // Cache footprint of DeepSeek-V3 (61 layers, bf16) against MHA and GQA-8 versions of it.
  const CacheBytesPerToken bytes = mla_cache_bytes_per_token(MLAConfig::deepseek_v3(), 61, DType::bf16, 8);
  rows.push_back({"cache bytes per token, mla", "DeepSeek-V3, 61 layers, bf16", double(bytes.mla), "bytes/token"});
  rows.push_back({"cache bytes per token, mha", "same model, 128 kv heads", double(bytes.mha), "bytes/token"});
  rows.push_back({"cache bytes per token, gqa", "same model, 8 kv heads", double(bytes.gqa), "bytes/token"});

  // Linear attention: the recurrent state against the causal prefix sums.
  const Tensor q = normal({batch, total, 4, 32}, 1.0, rng), k = normal({batch, total, 4, 32}, 1.0, rng);
  const Tensor v = normal({batch, total, 4, 32}, 1.0, rng);
  Tensor parallel_out({batch, total, 4, 32}, DType::f32), recurrent_out({batch, total, 4, 32}, DType::f32);
  linear_attention(q, k, v, parallel_out, true);
  LinearAttentionState state(batch, 4, 32, 32);
  state.step(q, k, v, recurrent_out);
  rows.push_back({"linear attention recurrent vs causal", "heads 4, D 32, S 32", rel_l2(recurrent_out, parallel_out),
                  "rel L2"});
  rows.push_back({"linear attention state", "heads 4, D 32, Dv 32, any length", double(state.bytes_per_sequence()),
                  "bytes/sequence"});
  return rows;
}

}  // namespace attn::modules
