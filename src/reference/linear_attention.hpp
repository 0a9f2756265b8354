// The float64 oracle for linear attention: the quadratic form, one weight per (query, key),
//   out_i = sum_j w_ij v_j / sum_j w_ij,   w_ij = phi(q_i) . phi(k_j),   phi(x) = elu(x) + 1,
// over all j, or j <= i + Sk - Sq when causal (no key: 0). q (B, Sq, H, D), k (B, Sk, Hk, D),
// v (B, Sk, Hk, Dv), out (B, Sq, H, Dv), any float dtype and strides; query head h reads kv
// head h / (H / Hk). Shapes are trusted: callers are tests.
#pragma once

#include "attn/tensor.hpp"

namespace attn::reference {

void linear_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                      bool causal);

}  // namespace attn::reference
