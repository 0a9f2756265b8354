// The float64 oracle ("Algorithm 0"): plain loops that materialise S and P, DESIGN.md's
// semantics taken literally. Slow on purpose; every kernel is tested against it.
//
// It reads q, k, v, dout in any float dtype (f64 included) and writes out, lse and the
// gradients in whatever float dtype those tensors have. Arguments are validated by the
// dispatch layer (attention_forward with Backend::reference) before these run.
#pragma once

#include "attn/attention.hpp"

namespace attn::reference {

/// DESIGN.md's mask predicate for query row i, key column j of (sequence, query head).
bool mask_allows(const Mask& mask, int i, int j, int seqlen_q, int seqlen_k, int head);

void forward(const ForwardArgs& args);
void backward(const BackwardArgs& args);

}  // namespace attn::reference
