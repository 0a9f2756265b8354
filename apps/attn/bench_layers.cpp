// The rows of `attn bench` beyond one attention call on fresh tensors: decode over a paged
// cache against a contiguous one (bandwidth-bound, read against the copy ceiling), an MLA
// layer's decode step on its absorbed and expanded paths, and linear against softmax attention
// at growing lengths. Each row is timed in a forked child like the attention rows.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

#include "attn/attention_kvcache.hpp"
#include "attn/modules/linear_attention.hpp"
#include "attn/modules/mla.hpp"
#include "bench.hpp"
#include "counters.hpp"
#include "workload.hpp"

namespace attn::cli {
namespace {

using Setup = std::function<std::function<void()>()>;

// ---- decode over a KV cache ----------------------------------------------------------------

/// One decode step (Sq = 1) of `s.batch` sequences of s.seqlen_k cached tokens; with a page
/// size, the cache is a pool whose pages are handed out in a shuffled order, as a pool that
/// has served many requests hands them out, so no sequence's pages are adjacent.
Setup decode_setup(const Shape& s, int page_size) {
  return [s, page_size] {
    const std::int64_t B = s.batch, L = s.seqlen_k;
    KVCacheArgs a;
    const Tensor q = random_input({B, 1, s.heads_q, s.head_dim}, s.dtype, 1);
    const Tensor out({B, 1, s.heads_q, s.head_dim_v}, s.dtype);
    Tensor lens({B}, DType::i32), table, k, v;
    std::fill_n(lens.as<std::int32_t>(), B, std::int32_t(L));
    if (page_size > 0) {
      const std::int64_t per_seq = L / page_size, pages = B * per_seq;
      k = random_input({pages, page_size, s.heads_kv, s.head_dim}, s.dtype, 2);
      v = random_input({pages, page_size, s.heads_kv, s.head_dim_v}, s.dtype, 3);
      std::vector<std::int32_t> order(static_cast<std::size_t>(pages));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937(4));
      table = Tensor({B, per_seq}, DType::i32);
      std::copy(order.begin(), order.end(), table.as<std::int32_t>());
    } else {
      k = random_input({B, L, s.heads_kv, s.head_dim}, s.dtype, 2);
      v = random_input({B, L, s.heads_kv, s.head_dim_v}, s.dtype, 3);
    }
    a.q = q;
    a.k_cache = k;
    a.v_cache = v;
    a.block_table = table;
    a.cache_seqlens = lens;
    a.out = out;
    const Tensor ws({std::int64_t(attention_with_kvcache_workspace_size(a, Backend::cpu))}, DType::u8);
    // The call holds the tensors: the args only view their storage.
    return std::function<void()>([q, out, lens, table, k, v, ws, a] {
      attention_with_kvcache(a, {ws.data(), ws.nbytes()}, Backend::cpu);
    });
  };
}

std::vector<BenchCase> decode_cases(const BenchOptions& o) {
  // Llama-3-8B-like heads (32 query, 8 kv, D 128) at 4096 tokens for 16 sequences: 256 MiB of
  // f16 K and V per step, 8x the last-level cache, so every step reads DRAM.
  const Shape s = o.quick ? Shape{2, 1, 512, 8, 2, 64, 64, DType::f16} : Shape{16, 1, 4096, 32, 8, 128, 128, DType::f16};
  const int page = 16;
  std::vector<BenchCase> cases;
  for (const int page_size : {page, 0}) {
    BenchCase c;
    c.group = "decode";
    c.name = page_size > 0 ? "paged " + std::to_string(page) : "contiguous";
    c.shape = s.str();
    c.dtype = s.dtype;
    c.pass = "fwd";
    c.flops = forward_flops(s, std::int64_t(s.batch) * s.heads_q * s.seqlen_k);
    c.bytes = kv_read_bytes(s);
    c.memory_bound = true;
    c.repeat = o.quick ? RepeatPolicy{3, 5, 0.05, false} : RepeatPolicy{5, 20, 1.0, false};
    c.setup = decode_setup(s, page_size);
    cases.push_back(std::move(c));
  }
  return cases;
}

// ---- MLA decode: absorbed against expanded -------------------------------------------------

/// A random nn.Linear of unit-variance outputs for unit-variance inputs.
modules::Linear random_linear(std::int64_t out, std::int64_t in, std::uint64_t seed) {
  Tensor w = random_input({out, in}, DType::f32, seed);
  const float scale = 1.0f / std::sqrt(float(in));
  std::for_each(w.as<float>(), w.as<float>() + w.numel(), [scale](float& x) { x *= scale; });
  return {w, {}};
}

// Both paths' attention cores run on the CPU kernels: the absorbed path attends with keys of
// R + P = 576 and values of R = 512 (the CPU limit, src/problem.hpp), the expanded one with
// 192 / 128.
constexpr Backend kMlaCore = Backend::cpu;

/// One decode step of an MLA layer (one new token per sequence after `context` cached ones).
/// The step appends its latent to the cache; the timed call drops it again so every run sees
/// the same context.
Setup mla_setup(const modules::MLAConfig& c, int batch, int context, modules::MLAPath path) {
  return [c, batch, context, path] {
    modules::MLAWeights w;
    w.q = random_linear(std::int64_t(c.heads) * c.qk_head_dim(), c.d_model, 11);
    w.kv_down = random_linear(c.kv_lora_rank + c.qk_rope_head_dim, c.d_model, 12);
    w.kv_norm = modules::Norm::identity_weights(c.norm, c.kv_lora_rank, c.norm_eps);
    w.k_up = random_linear(std::int64_t(c.heads) * c.qk_nope_head_dim, c.kv_lora_rank, 13);
    w.v_up = random_linear(std::int64_t(c.heads) * c.v_head_dim, c.kv_lora_rank, 14);
    w.o = random_linear(c.d_model, std::int64_t(c.heads) * c.v_head_dim, 15);
    auto layer = std::make_shared<modules::MultiHeadLatentAttention>(c, std::move(w));
    auto cache = std::make_shared<modules::ContiguousLatentCache>(layer->make_cache(batch, context + 1));
    const std::vector<std::int64_t> prompt(std::size_t(batch), context);
    cache->append(random_input({std::int64_t(batch) * context, c.kv_lora_rank}, DType::f32, 16),
                  random_input({std::int64_t(batch) * context, c.qk_rope_head_dim}, DType::f32, 17), prompt);
    const Tensor x = random_input({batch, 1, c.d_model}, DType::f32, 18);
    return std::function<void()>([layer, cache, x, batch, path] {
      AttentionParams causal;
      causal.mask = Mask::causal_mask();
      layer->forward(x, causal, kMlaCore, cache.get(), path);
      cache->discard_last(std::vector<std::int64_t>(std::size_t(batch), 1));
    });
  };
}

std::vector<BenchCase> mla_cases(const BenchOptions& o) {
  // DeepSeek-V3's attention dims. d_model (7168) only sizes the projections in and out, the
  // same on both paths: 1024 keeps the weights at 240 MiB; no query LoRA for the same reason.
  modules::MLAConfig c = modules::MLAConfig::deepseek_v3();
  c.d_model = 1024;
  c.q_lora_rank = 0;
  int batch = 1, context = 4096;
  if (o.quick) {
    c = {.d_model = 64, .heads = 4, .kv_lora_rank = 32, .qk_nope_head_dim = 16, .qk_rope_head_dim = 16,
         .v_head_dim = 16};
    context = 128;
  }
  std::vector<BenchCase> cases;
  for (const auto path : {modules::MLAPath::absorbed, modules::MLAPath::expanded}) {
    const bool absorbed = path == modules::MLAPath::absorbed;
    BenchCase k;
    k.group = "mla";
    k.name = absorbed ? "absorbed" : "expanded";
    k.shape = "B" + std::to_string(batch) + " L" + std::to_string(context) + " H" + std::to_string(c.heads) + " R" +
              std::to_string(c.kv_lora_rank) + " P" + std::to_string(c.qk_rope_head_dim);
    k.dtype = DType::f32;
    k.pass = "fwd";
    const auto flops = absorbed ? mla_absorbed_flops : mla_expanded_flops;
    k.flops = flops(batch, context, c.heads, c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim);
    k.bytes = double(batch) * context * (c.kv_lora_rank + c.qk_rope_head_dim) * 4.0;  // the latent cache it reads
    // At full size the expanded step multiplies out k and v for every cached token (69 G
    // multiply-adds, ~1 GB of f32) per call: seconds, so one run.
    k.repeat = o.quick ? RepeatPolicy{3, 5, 0.05, false} : RepeatPolicy{1, 3, 5.0, !absorbed};
    k.setup = mla_setup(c, batch, context, path);
    cases.push_back(std::move(k));
  }
  return cases;
}

// ---- linear against softmax attention ------------------------------------------------------

Setup linear_setup(const Shape& s, bool linear) {
  return [s, linear] {
    const Workload w = make_workload(s, false, 21, DType::f32);
    if (linear)
      return std::function<void()>([w] { modules::linear_attention(w.q, w.k, w.v, w.out, true); });
    AttentionParams causal;
    causal.mask = Mask::causal_mask();
    const ForwardArgs fa = w.forward_args(causal);
    const Tensor ws({std::int64_t(attention_forward_workspace_size(fa, Backend::cpu))}, DType::u8);
    return std::function<void()>([w, fa, ws] { attention_forward(fa, {ws.data(), ws.nbytes()}, Backend::cpu); });
  };
}

std::vector<BenchCase> linear_cases(const BenchOptions& o) {
  std::vector<BenchCase> cases;
  const std::vector<int> lengths = o.quick ? std::vector<int>{256} : std::vector<int>{1024, 4096, 16384};
  for (const bool linear : {true, false})
    for (const int len : lengths) {
      const Shape s = Shape::square(len, 4, 64);
      BenchCase c;
      c.group = "linear";
      c.name = linear ? "linear causal" : "softmax causal";
      c.shape = s.str();
      c.dtype = s.dtype;
      c.pass = "fwd";
      c.flops = linear ? linear_attention_flops(s) : forward_flops(s, allowed_pairs(s, Mask::causal_mask()));
      c.bytes = io_bytes(s, false);
      // Softmax at 16384 is seconds: one run.
      c.repeat = o.quick ? RepeatPolicy{3, 5, 0.05, false} : RepeatPolicy{3, 10, 1.0, !linear && len >= 16384};
      c.setup = linear_setup(s, linear);
      cases.push_back(std::move(c));
    }
  return cases;
}

}  // namespace

BenchSuite cpu_layers_suite() {
  return {"decode, mla, linear (cpu)", Backend::cpu,
          [](const BenchOptions& o) {
            std::vector<BenchCase> cases = decode_cases(o);
            for (auto* more : {mla_cases, linear_cases})
              for (BenchCase& c : more(o)) cases.push_back(std::move(c));
            return cases;
          },
          [](const BenchCase& c, const BenchOptions&) { return measure_in_child(c.setup, c.repeat); }};
}

}  // namespace attn::cli
