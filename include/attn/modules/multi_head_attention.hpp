// The multi-head attention layer: projections, RoPE, attention through attention_forward,
// output projection. MHA, GQA and MQA are one layer with kv_heads = heads, a divisor, or 1.
//
// Shape letters: B sequences, S tokens, T packed tokens, M d_model, H heads, Hk kv heads, D head_dim.
// Weights follow nn.Linear, (out, in):
//   q (H * D, M)   k (Hk * D, M)   v (Hk * D, M)   o (M, H * D), each with an optional bias.
// Head h owns rows [h * D, (h + 1) * D) of q's weight (and columns of o's); kv head g those of k, v.
#pragma once

#include <optional>
#include <span>

#include "attn/attention.hpp"
#include "attn/modules/layer_cache.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/norm.hpp"
#include "attn/modules/rope.hpp"

namespace attn::modules {

struct MHAConfig {
  int d_model = 0;
  int heads = 0;
  /// 0 means heads (MHA); 1 is MQA; anything dividing heads is GQA.
  int kv_heads = 0;
  /// 0 means d_model / heads.
  int head_dim = 0;
  /// RoPE on q and k when set.
  std::optional<RopeConfig> rope;

  int resolved_kv_heads() const { return kv_heads == 0 ? heads : kv_heads; }
  int resolved_head_dim() const { return head_dim == 0 && heads > 0 ? d_model / heads : head_dim; }
  /// Throws attn::Error naming the first field that is out of range.
  void check() const;
};

struct MHAWeights {
  Linear q, k, v, o;
  /// Optional QK-norm, applied to the projected q and k before RoPE. A weight of D features
  /// normalises each head on its own (Qwen3, Gemma 3); one of H * D (Hk * D for k) the whole
  /// projection of a token (OLMo 2).
  std::optional<Norm> q_norm = std::nullopt;
  std::optional<Norm> k_norm = std::nullopt;
};

class MultiHeadAttention {
 public:
  /// Validates config and weight shapes (attn::Error names the field).
  MultiHeadAttention(MHAConfig config, MHAWeights weights);

  const MHAConfig& config() const { return config_; }
  const MHAWeights& weights() const { return weights_; }

  /// x f32 (B, S, M) contiguous -> (B, S, M).
  /// Without a cache: attention among x's S tokens, RoPE positions 0 .. S - 1.
  /// With a cache (prefill or decode): sequence b's tokens sit at positions cache->seqlen(b) + s;
  /// their keys and values are appended and the queries attend over everything cached.
  /// `params.mask` uses DESIGN.md's positions, so Mask::causal_mask() is right in both cases.
  /// A failed call leaves the cache as it was.
  Tensor forward(const TensorView& x, const AttentionParams& params = {}, Backend backend = Backend::automatic,
                 LayerKVCache* cache = nullptr) const;

  /// The packed form, for continuous batching: x f32 (T, M) holds new_tokens[b] tokens of
  /// sequence b (sequence 0's first; 0 skips a sequence), so one call can mix a prompt with
  /// other sequences' decode steps. Returns (T, M). Otherwise as forward with a cache.
  Tensor forward_packed(const TensorView& x, std::span<const std::int64_t> new_tokens, LayerKVCache& cache,
                        const AttentionParams& params = {}, Backend backend = Backend::automatic) const;

  /// A contiguous cache sized for this layer, storing `dtype`.
  ContiguousKVCache make_cache(int batch, std::int64_t capacity, DType dtype = DType::f32) const;

 private:
  /// Packed q (T, H, D), k (T, Hk, D), v (T, Hk, D) of x's T tokens: projected, QK-normed, and
  /// rotated at `positions`.
  struct Qkv {
    Tensor q, k, v;
  };
  Qkv project(const TensorView& x, std::span<const std::int64_t> positions) const;
  /// Appends x's keys and values to the cache and returns the attention output (T, H, D).
  Tensor attend_cached(const TensorView& x, std::span<const std::int64_t> new_tokens, LayerKVCache& cache,
                       const AttentionParams& params, Backend backend) const;

  MHAConfig config_;
  MHAWeights weights_;
};

/// Converts a layer to `kv_heads` kv heads (GQA; 1 is MQA) by mean-pooling the K and V
/// projection heads, weights and biases, within each group of consecutive kv heads (Ainslie et
/// al., 2023). kv_heads must divide the layer's kv heads. Q and O are kept as they are.
MultiHeadAttention convert_kv_heads(const MultiHeadAttention& layer, int kv_heads);

/// ||converted(x) - original(x)|| / ||original(x)|| over all outputs (Frobenius), both run
/// without a cache on the same inputs: how much a conversion changes the layer.
double output_rel_l2(const MultiHeadAttention& converted, const MultiHeadAttention& original, const TensorView& x,
                     const AttentionParams& params = {}, Backend backend = Backend::automatic);

}  // namespace attn::modules
