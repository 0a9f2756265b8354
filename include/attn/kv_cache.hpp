// Contiguous KV cache: every sequence reserves max_seqlen token slots up front.
//
// Shape letters: B sequences, Smax max tokens per sequence, Hk kv heads, D / Dv head dims.
//   k  (B, Smax, Hk, D)   row-major: token t of sequence b, head h starts at ((b * Smax + t) * Hk + h) * D
//   v  (B, Smax, Hk, Dv)
//   seqlens i32 (B,): tokens stored per sequence; slots past them hold stale data
#pragma once

#include <cstdint>

#include "attn/tensor.hpp"

namespace attn {

class KVCache {
 public:
  KVCache(std::int32_t batch, std::int32_t max_seqlen, std::int32_t heads_kv, std::int32_t head_dim,
          std::int32_t head_dim_v, DType dtype);

  const Tensor& k() const { return k_; }
  const Tensor& v() const { return v_; }
  /// i32 (B,), ready to pass as KVCacheArgs::cache_seqlens.
  const Tensor& seqlens() const { return seqlens_; }
  std::int32_t length(int b) const;
  std::int32_t max_seqlen() const { return std::int32_t(k_.size(1)); }

  /// Appends k (B, Snew, Hk, D), v (B, Snew, Hk, Dv): Snew tokens to every sequence.
  void append(const TensorView& k, const TensorView& v);
  /// Appends k (n, Hk, D), v (n, Hk, Dv) to sequence b.
  void append(int b, const TensorView& k, const TensorView& v);
  /// Counts n more tokens in every sequence, after attention_with_kvcache wrote them as
  /// k_new / v_new (it never advances cache_seqlens itself).
  void advance(std::int32_t n);
  /// Forgets sequence b's tokens (its slots are reused).
  void reset(int b);

 private:
  Tensor k_, v_, seqlens_;
};

}  // namespace attn
