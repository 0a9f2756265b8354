// Linear attention (Katharopoulos et al., 2020) with the feature map phi(x) = elu(x) + 1 > 0:
//
//   out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j))
//
// over all keys j (non-causal) or j <= p_i (causal, p_i = i + Sk - Sq as for softmax attention;
// a query with no key gets 0). Cost O(S D Dv) instead of O(S^2 D): the sums are computed once
// (non-causal) or as running prefix sums (causal); the recurrent form keeps only the running
// sums, a constant Hk (D Dv + D) values per sequence, for decoding token by token.
//
// Shapes: q (B, Sq, H, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv), out (B, Sq, H, Dv); f32 on the
// CPU, unit last stride; H % Hk == 0 and query head h reads kv head h / (H / Hk), as in GQA.
#pragma once

#include <cstdint>

#include "attn/tensor.hpp"

namespace attn::modules {

/// The parallel forms (prefill).
void linear_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                      bool causal);

/// The recurrent form: per sequence and kv head, state = sum phi(k) v^T (D, Dv) and
/// normaliser = sum phi(k) (D), over every token fed so far.
class LinearAttentionState {
 public:
  LinearAttentionState(int batch, int heads_kv, int head_dim, int head_dim_v);

  /// Feeds S tokens per sequence: for each s in order, adds k_s, v_s (B, S, Hk, D / Dv) to the
  /// state, then writes out_s (B, S, H, Dv) for q_s (B, S, H, D). Feeding a prompt this way
  /// equals causal linear_attention over it.
  void step(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out);

  /// Forgets sequence b (a new sequence takes its slot).
  void reset(int b);
  /// State bytes per sequence: constant, whatever the sequence length.
  std::int64_t bytes_per_sequence() const;

 private:
  Tensor state_;       ///< f32 (B, Hk, D, Dv)
  Tensor normaliser_;  ///< f32 (B, Hk, D)
};

}  // namespace attn::modules
