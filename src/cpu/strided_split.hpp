// The Sparse Transformer's strided pattern (j <= p and (p - j <= l or (p - j) % l == 0)) as two
// dense problems instead of one where every tile is partial: a causal band of width l, and for
// each residue class c of positions mod l, causal attention among the class's rows (queries
// p = c + a l against keys c + b l with b <= a - 2), both through the ordinary kernels on
// strided views, merged through their log-sum-exps. Work drops from about S^2 / 2 to
// S (l + S / l) per head.
#pragma once

#include <cstddef>

#include "attn/attention.hpp"
#include "problem.hpp"

namespace attn::cpu {

/// True when forward() should take the split: a mask of the strided part alone (causal allowed,
/// since strided already bounds j <= p), f32 storage (the partial outputs are exact, so the
/// merge adds no rounding), padded layouts, seqlen_q <= seqlen_k, and keys enough for the
/// classes to pay (seqlen_k >= 4 l).
bool strided_split_applies(const detail::AttentionProblem& p);

/// Workspace of the split: the strided part's output and both parts' lse (f32), then the
/// largest workspace of the dense problems, each `inner_size`d.
std::size_t strided_split_workspace_size(const detail::AttentionProblem& p,
                                         std::size_t (*inner_size)(const detail::AttentionProblem&));

/// Runs the split; `inner` runs one dense problem (the backend's forward without the split).
void strided_split_forward(const detail::AttentionProblem& p, Workspace ws,
                           std::size_t (*inner_size)(const detail::AttentionProblem&),
                           void (*inner)(const detail::AttentionProblem&, Workspace));

/// The backward of the same split: P over the union of the band's and the classes' keys uses
/// the global lse and D_i = dO_i . O_i, so each part's backward, given the global out and lse,
/// yields its share of the gradients. The band writes dq / dk / dv; the classes write f32
/// scratch on strided views, added in after. Same conditions as the forward.
std::size_t strided_split_backward_workspace_size(const detail::BackwardProblem& p,
                                                  std::size_t (*inner_size)(const detail::BackwardProblem&));
void strided_split_backward(const detail::BackwardProblem& p, Workspace ws,
                            std::size_t (*inner_size)(const detail::BackwardProblem&),
                            void (*inner)(const detail::BackwardProblem&, Workspace));

}  // namespace attn::cpu
