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

/// Bytes of K and V a decode step reads from a cache: every sequence's seqlen_k tokens of
/// Hk heads, D + Dv values each (q and out are a rounding error beside them).
double kv_read_bytes(const Shape& s);

/// Multiply-adds x 2 of one MLA decode step's attention core over `context` cached tokens per
/// sequence (H heads, R kv_lora_rank, P rope, N nope, V v_head_dim):
///   absorbed: q_nope -> latent (H N R), scores and values over the latent (H L (R + P + R)),
///             latent -> v (H R V);
///   expanded: k_nope and v for every cached token (L H (N + V) R), then attention
///             (H L (N + P + V)).
double mla_absorbed_flops(int batch, int context, int heads, int rank, int rope, int nope, int v_dim);
double mla_expanded_flops(int batch, int context, int heads, int rank, int rope, int nope, int v_dim);

/// Causal linear attention: per token and head, phi(k) v^T into the state (D Dv) and
/// phi(q) against it (D Dv), plus the normaliser (2 D): multiply-adds x 2.
double linear_attention_flops(const Shape& s);

}  // namespace attn::cli
