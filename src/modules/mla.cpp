#include "attn/modules/mla.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "modules/matmul.hpp"
#include "modules/packed.hpp"
#include "modules/tensor_util.hpp"

namespace attn::modules {
namespace {

/// Copies the (rows, count) block starting at feature `first` of each row of src (rows, src_cols)
/// into dst (rows, dst_cols) at feature `dst_first`: the head gathers and scatters of both paths.
void copy_block(const float* src, std::int64_t src_cols, std::int64_t first, float* dst, std::int64_t dst_cols,
                std::int64_t dst_first, std::int64_t rows, std::int64_t count) {
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_cols + dst_first, src + r * src_cols + first, std::size_t(count) * sizeof(float));
}

RopeConfig rope_of(const MLAConfig& c) { return RopeConfig{0, c.rope_base, c.rope_style}; }

}  // namespace

void MLAConfig::check() const {
  ATTN_CHECK(d_model >= 1, "d_model: expected >= 1, got ", d_model);
  ATTN_CHECK(heads >= 1, "heads: expected >= 1, got ", heads);
  ATTN_CHECK(q_lora_rank >= 0, "q_lora_rank: expected >= 0 (0 = no query LoRA), got ", q_lora_rank);
  ATTN_CHECK(kv_lora_rank >= 1, "kv_lora_rank: expected >= 1, got ", kv_lora_rank);
  ATTN_CHECK(qk_nope_head_dim >= 1, "qk_nope_head_dim: expected >= 1, got ", qk_nope_head_dim);
  ATTN_CHECK(qk_rope_head_dim >= 2 && qk_rope_head_dim % 2 == 0, "qk_rope_head_dim: expected an even value >= 2, got ",
             qk_rope_head_dim);
  ATTN_CHECK(v_head_dim >= 1, "v_head_dim: expected >= 1, got ", v_head_dim);
  ATTN_CHECK(norm_eps > 0.0f, "norm_eps: expected > 0, got ", norm_eps);
  rope_of(*this).check("rope", qk_rope_head_dim);
}

MLAConfig MLAConfig::deepseek_v3() {
  return MLAConfig{.d_model = 7168, .heads = 128, .q_lora_rank = 1536, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
                   .qk_rope_head_dim = 64, .v_head_dim = 128};
}

MLAConfig MLAConfig::deepseek_v2_lite() {
  return MLAConfig{.d_model = 2048, .heads = 16, .q_lora_rank = 0, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
                   .qk_rope_head_dim = 64, .v_head_dim = 128};
}

MultiHeadLatentAttention::MultiHeadLatentAttention(MLAConfig config, MLAWeights weights)
    : config_(config), weights_(std::move(weights)) {
  config_.check();
  const MLAConfig& c = config_;
  const std::int64_t h = c.heads, m = c.d_model, r = c.kv_lora_rank, n = c.qk_nope_head_dim;
  if (c.q_lora_rank == 0) {
    weights_.q.check("q", h * c.qk_head_dim(), m);
  } else {
    weights_.q_down.check("q_down", c.q_lora_rank, m);
    weights_.q_norm.check("q_norm", c.q_lora_rank);
    ATTN_CHECK(weights_.q_norm.kind == c.norm && weights_.q_norm.eps == c.norm_eps,
               "q_norm: expected the config's norm kind and norm_eps");
    weights_.q_up.check("q_up", h * c.qk_head_dim(), c.q_lora_rank);
  }
  weights_.kv_down.check("kv_down", r + c.qk_rope_head_dim, m);
  weights_.kv_norm.check("kv_norm", r);
  ATTN_CHECK(weights_.kv_norm.kind == c.norm && weights_.kv_norm.eps == c.norm_eps,
             "kv_norm: expected the config's norm kind and norm_eps");
  weights_.k_up.check("k_up", h * n, r);
  weights_.v_up.check("v_up", h * c.v_head_dim, r);
  ATTN_CHECK(!weights_.k_up.bias.defined(), "k_up.bias: expected none (the absorbed path folds W_uk into the query)");
  ATTN_CHECK(!weights_.v_up.bias.defined(), "v_up.bias: expected none (the absorbed path folds W_uv into the output)");
  weights_.o.check("o", m, h * c.v_head_dim);

  k_up_transposed_ = Tensor({h, r, n}, DType::f32);
  const float* w = weights_.k_up.weight.as<float>();
  for (std::int64_t hh = 0; hh < h; ++hh)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < r; ++j) k_up_transposed_.as<float>()[(hh * r + j) * n + i] = w[(hh * n + i) * r + j];
}

ContiguousLatentCache MultiHeadLatentAttention::make_cache(int batch, std::int64_t capacity, DType dtype) const {
  return ContiguousLatentCache(batch, capacity, config_.kv_lora_rank, config_.qk_rope_head_dim, dtype);
}

Tensor MultiHeadLatentAttention::queries(const TensorView& x) const {
  if (config_.q_lora_rank == 0) return linear(weights_.q, x);
  return linear(weights_.q_up, apply_norm(weights_.q_norm, linear(weights_.q_down, x)));
}

Tensor MultiHeadLatentAttention::attend_cached(const TensorView& x, std::span<const std::int64_t> new_tokens,
                                               LatentKVCache& cache, const AttentionParams& params, Backend backend,
                                               MLAPath path) const {
  const MLAConfig& c = config_;
  const std::int64_t tokens = detail::packed_total(new_tokens, cache.batch_size());
  const std::int64_t r = c.kv_lora_rank, p = c.qk_rope_head_dim;
  ATTN_CHECK(x.numel() / c.d_model == tokens, "x: holds ", x.numel() / c.d_model, " tokens, new_tokens add up to ",
             tokens);
  ATTN_CHECK(cache.kv_lora_rank() == r && cache.rope_dim() == p, "cache: expected kv_lora_rank ", r, " and rope_dim ",
             p, ", got ", cache.kv_lora_rank(), " and ", cache.rope_dim());

  const Tensor q = queries(x);
  const Tensor latent = linear(weights_.kv_down, x);
  Tensor c_raw({tokens, r}, DType::f32), k_rope({tokens, p}, DType::f32);
  copy_block(latent.as<float>(), r + p, 0, c_raw.as<float>(), r, 0, tokens, r);
  copy_block(latent.as<float>(), r + p, r, k_rope.as<float>(), p, 0, tokens, p);
  const Tensor c_kv = apply_norm(weights_.kv_norm, c_raw);
  const std::vector<std::int64_t> positions = detail::new_token_positions(cache, new_tokens);
  apply_rope(detail::last_dim_slice(reshape(q, {tokens, c.heads, c.qk_head_dim()}), c.qk_nope_head_dim, p), positions,
             rope_of(c));
  apply_rope(reshape(k_rope, {tokens, 1, p}), positions, rope_of(c));
  cache.append(c_kv, k_rope, new_tokens);

  if (path == MLAPath::automatic) {
    std::int64_t most = 0;
    for (std::int64_t n : new_tokens) most = std::max(most, n);
    const std::int64_t extra_per_query = 2 * r + p - c.qk_head_dim() - c.v_head_dim;
    path = most * extra_per_query < r * (c.qk_nope_head_dim + c.v_head_dim) ? MLAPath::absorbed : MLAPath::expanded;
  }
  Tensor out({tokens, c.heads, c.v_head_dim}, DType::f32);
  try {
    if (path == MLAPath::expanded) {
      attend_expanded(q, cache, new_tokens, out, params, backend);
    } else {
      attend_absorbed(q, cache, new_tokens, out, params, backend);
    }
  } catch (...) {
    cache.discard_last(new_tokens);
    throw;
  }
  return out;
}

Tensor MultiHeadLatentAttention::forward(const TensorView& x, const AttentionParams& params, Backend backend,
                                         LatentKVCache* cache, MLAPath path) const {
  detail::check_f32(x, "x", 3);
  ATTN_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
  detail::check_dim(x, "x", 2, config_.d_model, "d_model");
  const std::int64_t batch = x.size(0), seqlen = x.size(1);
  if (cache != nullptr)
    ATTN_CHECK(cache->batch_size() == batch, "cache: holds ", cache->batch_size(), " sequences, x has ", batch);
  // Without a cache the tokens attend among themselves: a cache of exactly this call's tokens.
  std::optional<ContiguousLatentCache> local;
  if (cache == nullptr) local.emplace(make_cache(int(batch), std::max<std::int64_t>(seqlen, 1)));
  const Tensor out = attend_cached(x, detail::uniform_new_tokens(batch, seqlen), cache != nullptr ? *cache : *local,
                                   params, backend, path);
  return linear(weights_.o, reshape(out, {batch, seqlen, std::int64_t(config_.heads) * config_.v_head_dim}));
}

Tensor MultiHeadLatentAttention::forward_packed(const TensorView& x, std::span<const std::int64_t> new_tokens,
                                                LatentKVCache& cache, const AttentionParams& params, Backend backend,
                                                MLAPath path) const {
  detail::check_f32(x, "x", 2);
  ATTN_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
  detail::check_dim(x, "x", 1, config_.d_model, "d_model");
  const Tensor out = attend_cached(x, new_tokens, cache, params, backend, path);
  return linear(weights_.o, reshape(out, {x.size(0), std::int64_t(config_.heads) * config_.v_head_dim}));
}

void MultiHeadLatentAttention::attend_expanded(const Tensor& q, const LatentKVCache& cache,
                                               std::span<const std::int64_t> new_tokens, const Tensor& out,
                                               const AttentionParams& params, Backend backend) const {
  const MLAConfig& c = config_;
  const std::int64_t tokens = out.size(0), h = c.heads;
  const std::int64_t n = c.qk_nope_head_dim, p = c.qk_rope_head_dim, dk = c.qk_head_dim(), dv = c.v_head_dim;
  const TensorView q3 = reshape(q, {tokens, h, dk});
  std::int64_t first = 0;
  for (int b = 0; b < cache.batch_size(); ++b) {
    const std::int64_t count = new_tokens[std::size_t(b)], len = cache.seqlen(b);
    if (count == 0) continue;
    Tensor c_kv({len, c.kv_lora_rank}, DType::f32), k_rope({len, p}, DType::f32);
    cache.read(b, c_kv, k_rope);
    const Tensor k_nope = linear(weights_.k_up, c_kv);  // (L, H N)
    const Tensor v = linear(weights_.v_up, c_kv);       // (L, H V)
    Tensor k({1, len, h, dk}, DType::f32);
    for (std::int64_t hh = 0; hh < h; ++hh) {
      copy_block(k_nope.as<float>(), h * n, hh * n, k.as<float>(), h * dk, hh * dk, len, n);
      copy_block(k_rope.as<float>(), p, 0, k.as<float>(), h * dk, hh * dk + n, len, p);
    }
    ForwardArgs args;
    args.q = detail::packed_sequence(q3, first, count);
    args.k = k;
    args.v = reshape(v, {1, len, h, dv});
    args.out = detail::packed_sequence(out, first, count);
    args.params = params;
    attention_forward(args, backend);
    first += count;
  }
}

void MultiHeadLatentAttention::attend_absorbed(const Tensor& q, const LatentKVCache& cache,
                                               std::span<const std::int64_t> new_tokens, const Tensor& out,
                                               const AttentionParams& params, Backend backend) const {
  const MLAConfig& c = config_;
  const std::int64_t rows = out.size(0), h = c.heads, r = c.kv_lora_rank;
  const std::int64_t n = c.qk_nope_head_dim, p = c.qk_rope_head_dim, dk = c.qk_head_dim(), dv = c.v_head_dim;
  // q_abs per head: [q_nope W_uk,h (R) ; q_rope (P)].
  Tensor q_abs({rows, h, r + p}, DType::f32);
  Tensor q_nope({rows, n}, DType::f32), q_lat({rows, r}, DType::f32);
  for (std::int64_t hh = 0; hh < h; ++hh) {
    copy_block(q.as<float>(), h * dk, hh * dk, q_nope.as<float>(), n, 0, rows, n);
    detail::matmul_abt(q_nope.as<float>(), k_up_transposed_.as<float>() + hh * r * n, nullptr, q_lat.as<float>(), rows,
                       n, r);
    copy_block(q_lat.as<float>(), r, 0, q_abs.as<float>(), h * (r + p), hh * (r + p), rows, r);
    copy_block(q.as<float>(), h * dk, hh * dk + n, q_abs.as<float>(), h * (r + p), hh * (r + p) + r, rows, p);
  }
  // The scale belongs to the expanded head dim N + P, not to the latent's R + P.
  AttentionParams latent_params = params;
  if (latent_params.scale <= 0.0f) latent_params.scale = float(1.0 / std::sqrt(double(dk)));
  Tensor o_lat({rows, h, r}, DType::f32);
  cache.attend(q_abs, o_lat, new_tokens, latent_params, backend);
  // o_h = W_uv,h o_lat,h.
  Tensor o_head_lat({rows, r}, DType::f32), o_head({rows, dv}, DType::f32);
  for (std::int64_t hh = 0; hh < h; ++hh) {
    copy_block(o_lat.as<float>(), h * r, hh * r, o_head_lat.as<float>(), r, 0, rows, r);
    detail::matmul_abt(o_head_lat.as<float>(), weights_.v_up.weight.as<float>() + hh * dv * r, nullptr,
                       o_head.as<float>(), rows, r, dv);
    copy_block(o_head.as<float>(), dv, 0, out.as<float>(), h * dv, hh * dv, rows, dv);
  }
}

SplitKvUp split_kv_b_proj(const Linear& kv_b_proj, const MLAConfig& config) {
  config.check();
  const std::int64_t h = config.heads, n = config.qk_nope_head_dim, v = config.v_head_dim, r = config.kv_lora_rank;
  kv_b_proj.check("kv_b_proj", h * (n + v), r);
  ATTN_CHECK(!kv_b_proj.bias.defined(), "kv_b_proj.bias: expected none (MLA's up-projections have no bias)");
  SplitKvUp split{{Tensor({h * n, r}, DType::f32), {}}, {Tensor({h * v, r}, DType::f32), {}}};
  const float* w = kv_b_proj.weight.as<float>();
  for (std::int64_t hh = 0; hh < h; ++hh) {
    std::copy_n(w + hh * (n + v) * r, n * r, split.k_up.weight.as<float>() + hh * n * r);
    std::copy_n(w + (hh * (n + v) + n) * r, v * r, split.v_up.weight.as<float>() + hh * v * r);
  }
  return split;
}

std::int64_t kv_cache_bytes_per_token(int layers, int kv_heads, int head_dim, int head_dim_v, DType dtype) {
  ATTN_CHECK(layers >= 1, "layers: expected >= 1, got ", layers);
  ATTN_CHECK(kv_heads >= 1, "kv_heads: expected >= 1, got ", kv_heads);
  return std::int64_t(layers) * kv_heads * (head_dim + head_dim_v) * std::int64_t(dtype_size(dtype));
}

CacheBytesPerToken mla_cache_bytes_per_token(const MLAConfig& config, int layers, DType dtype, int gqa_kv_heads) {
  config.check();
  ATTN_CHECK(gqa_kv_heads >= 1 && config.heads % gqa_kv_heads == 0, "gqa_kv_heads: expected a divisor of heads = ",
             config.heads, ", got ", gqa_kv_heads);
  CacheBytesPerToken bytes;
  bytes.mla = kv_cache_bytes_per_token(layers, 1, config.kv_lora_rank, config.qk_rope_head_dim, dtype);
  bytes.mha = kv_cache_bytes_per_token(layers, config.heads, config.qk_head_dim(), config.v_head_dim, dtype);
  bytes.gqa = kv_cache_bytes_per_token(layers, gqa_kv_heads, config.qk_head_dim(), config.v_head_dim, dtype);
  return bytes;
}

}  // namespace attn::modules
