// The FLOP and byte counters every bench row and the demo share, so that a GFLOP/s figure
// means the same thing on every row and for every backend.
//
// Only work the mask keeps is counted: a causal row at length S does half the FLOPs of a full
// one, and a kernel that computed masked-out scores anyway would show a lower GFLOP/s.
#pragma once

#include <cstdint>

#include "attn/mask.hpp"
#include "workload.hpp"

namespace attn::cli {

/// Number of (batch, query head, query, key) quadruples the mask allows.
std::int64_t allowed_pairs(const Shape& s, const Mask& mask);

/// Forward: 2*D per pair for Q K^T and 2*Dv per pair for P V (4*D when D == Dv).
double forward_flops(const Shape& s, std::int64_t pairs);
/// Backward: 2.5x the forward (dV, dP, dS->dQ, dK and the recomputed S), the convention of
/// flash-attention's benchmarks.
double backward_flops(const Shape& s, std::int64_t pairs);

/// Bytes of the call's own tensors: q, k, v, out and lse; with `backward` also dout and the
/// three gradients. The least memory any implementation needs.
double io_bytes(const Shape& s, bool backward);
/// Bytes that materialising the f32 score matrix S (and P) of every (batch, head) would take:
/// what "Algorithm 0" needs on top of io_bytes; the backward needs dP/dS too.
double score_matrix_bytes(const Shape& s, bool backward);

}  // namespace attn::cli
