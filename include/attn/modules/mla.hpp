// Multi-head latent attention (MLA), as in DeepSeek-V2 / V3.
//
// Shape letters: B sequences, S new tokens, T packed new tokens, L cached tokens, M d_model, H heads,
// Rq q_lora_rank, R kv_lora_rank, N qk_nope_head_dim, P qk_rope_head_dim, V v_head_dim.
//
//   queries:  q = W_uq norm(W_dq x)   (or q = W_q x when Rq = 0);  per head [q_nope (N) ; q_rope (P)]
//   latent:   [c_kv_raw (R) ; k_rope (P)] = W_dkv x;  c_kv = norm(c_kv_raw);  k_rope gets RoPE
//   per head: k = [W_uk,h c_kv ; k_rope]  (N + P, k_rope shared by all heads),  v = W_uv,h c_kv  (V)
//   output:   W_o [o_1 ; ... ; o_H]
// Only c_kv and the RoPE'd k_rope are cached (R + P values per token per layer).
//
// Two paths give the same result (the scale is 1 / sqrt(N + P) in both):
//   expanded: materialise k and v for the L cached tokens and attend with head dims N + P / V.
//   absorbed: fold W_uk into the query, q_lat,h = W_uk,h^T q_nope,h (R), and attend over the
//             latent cache as an MQA with keys [c_kv ; k_rope] (R + P) and values c_kv (R);
//             then fold W_uv into the output, o_h = W_uv,h o_lat,h. Nothing per head is expanded.
#pragma once

#include <cstdint>
#include <span>

#include "attn/attention.hpp"
#include "attn/modules/layer_cache.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/norm.hpp"
#include "attn/modules/rope.hpp"

namespace attn::modules {

struct MLAConfig {
  int d_model = 0;
  int heads = 0;
  /// 0: queries straight from x (DeepSeek-V2-Lite); else the rank of the query down-projection.
  int q_lora_rank = 0;
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  /// Norm of c_kv (and of the query latent when q_lora_rank > 0); the weights' Norm must agree.
  NormKind norm = NormKind::rms_norm;
  float norm_eps = 1e-6f;
  /// RoPE over the qk_rope_head_dim features (all of them).
  double rope_base = 10000.0;
  RopeStyle rope_style = RopeStyle::interleaved;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Throws attn::Error naming the first field out of range.
  void check() const;

  /// DeepSeek-V3's attention dims (d_model 7168, 128 heads, Rq 1536, R 512, N 128, P 64, V 128).
  static MLAConfig deepseek_v3();
  /// DeepSeek-V2-Lite's (d_model 2048, 16 heads, no query LoRA, R 512, N 128, P 64, V 128).
  static MLAConfig deepseek_v2_lite();
};

/// nn.Linear layouts (out, in). Per head, rows are consecutive blocks: q's head h owns rows
/// [h (N + P), (h + 1)(N + P)), nope first; k_up's head h rows [h N, (h + 1) N); v_up's [h V, (h + 1) V).
/// (DeepSeek's kv_b_proj is k_up and v_up interleaved per head; split them when loading.)
struct MLAWeights {
  Linear q;        ///< (H (N + P), M), when q_lora_rank = 0
  Linear q_down;   ///< (Rq, M), when q_lora_rank > 0
  Norm q_norm;     ///< (Rq), when q_lora_rank > 0
  Linear q_up;     ///< (H (N + P), Rq), when q_lora_rank > 0
  Linear kv_down;  ///< (R + P, M): rows [0, R) give c_kv before its norm, rows [R, R + P) k_rope
  Norm kv_norm;    ///< (R)
  Linear k_up;     ///< W_uk (H N, R), no bias (the absorbed path folds it into the query)
  Linear v_up;     ///< W_uv (H V, R), no bias (folded into the output)
  Linear o;        ///< (M, H V)
};

/// Splits DeepSeek's kv_b_proj weight (H (N + V), R), whose head h holds N key rows then V value
/// rows, into MLAWeights' k_up (H N, R) and v_up (H V, R).
struct SplitKvUp {
  Linear k_up, v_up;
};
SplitKvUp split_kv_b_proj(const Linear& kv_b_proj, const MLAConfig& config);

enum class MLAPath {
  automatic,  ///< whichever costs fewer multiply-adds for this call (see forward)
  expanded,
  absorbed,
};

class MultiHeadLatentAttention {
 public:
  /// Validates the config and every weight's shape (attn::Error names the field).
  MultiHeadLatentAttention(MLAConfig config, MLAWeights weights);

  const MLAConfig& config() const { return config_; }
  const MLAWeights& weights() const { return weights_; }

  /// x f32 (B, S, M) contiguous -> (B, S, M). With a cache, sequence b's tokens sit at
  /// positions cache->seqlen(b) + s and their latents are appended before attending; without
  /// one, the S tokens attend among themselves. `params.scale` 0 means 1 / sqrt(N + P).
  /// automatic picks absorbed when S (R + P + R - N - P - V) < R (N + V), S the most new tokens
  /// of any sequence: absorption adds per-query work in the wider latent dims but saves
  /// expanding k and v for every cached token, so decode (and short chunks) goes absorbed, long
  /// prefill expanded. A failed call leaves the cache as it was.
  Tensor forward(const TensorView& x, const AttentionParams& params = {}, Backend backend = Backend::automatic,
                 LatentKVCache* cache = nullptr, MLAPath path = MLAPath::automatic) const;

  /// The packed form, for continuous batching: x f32 (T, M) holds new_tokens[b] tokens of
  /// sequence b (see layer_cache.hpp). Returns (T, M).
  Tensor forward_packed(const TensorView& x, std::span<const std::int64_t> new_tokens, LatentKVCache& cache,
                        const AttentionParams& params = {}, Backend backend = Backend::automatic,
                        MLAPath path = MLAPath::automatic) const;

  /// A contiguous latent cache sized for this layer, storing `dtype`.
  ContiguousLatentCache make_cache(int batch, std::int64_t capacity, DType dtype = DType::f32) const;

 private:
  /// Appends the latents of x's T tokens (any leading shape) and returns the per-head
  /// attention output (T, H, V).
  Tensor attend_cached(const TensorView& x, std::span<const std::int64_t> new_tokens, LatentKVCache& cache,
                       const AttentionParams& params, Backend backend, MLAPath path) const;
  Tensor queries(const TensorView& x) const;
  void attend_expanded(const Tensor& q, const LatentKVCache& cache, std::span<const std::int64_t> new_tokens,
                       const Tensor& out, const AttentionParams& params, Backend backend) const;
  void attend_absorbed(const Tensor& q, const LatentKVCache& cache, std::span<const std::int64_t> new_tokens,
                       const Tensor& out, const AttentionParams& params, Backend backend) const;

  MLAConfig config_;
  MLAWeights weights_;
  /// W_uk,h^T per head, (H, R, N): the absorbed query is q_lat,h = q_nope,h W_uk,h.
  Tensor k_up_transposed_;
};

/// Cache bytes one token costs over `layers` layers in `dtype`, for an MLA model and for the
/// same model with ordinary K/V caches (DESIGN.md, "Caches"): MHA keeps H heads of N + P key
/// and V value features, GQA `gqa_kv_heads` heads of the same.
struct CacheBytesPerToken {
  std::int64_t mla = 0;
  std::int64_t mha = 0;
  std::int64_t gqa = 0;
};
CacheBytesPerToken mla_cache_bytes_per_token(const MLAConfig& config, int layers, DType dtype, int gqa_kv_heads);

/// 2-tensor K/V cache bytes per token: layers * kv_heads * (head_dim + head_dim_v) * sizeof(dtype).
std::int64_t kv_cache_bytes_per_token(int layers, int kv_heads, int head_dim, int head_dim_v, DType dtype);

}  // namespace attn::modules
