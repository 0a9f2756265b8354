// The CUDA backend's entry points, called by the dispatch layer (src/attention.cpp) with
// validated problems. Work goes to the current device's default stream, asynchronously;
// errors (launch configuration, unsupported dtype, misaligned rows) throw attn::Error.
#pragma once

#include <cstddef>

#include "attn/attention.hpp"
#include "problem.hpp"

namespace attn::cuda {

/// Bytes of device workspace `forward` needs: the f32 partials of a split-KV plan, else 0.
std::size_t forward_workspace_size(const detail::AttentionProblem& p);
/// Runs the forward. Besides the padded/packed layouts of the public API, `p` may describe
/// paged K/V (TokenLayout::block_table) and per-sequence key lengths (`seqlens_k`, with
/// `seqlen_k` their maximum).
void forward(const detail::AttentionProblem& p, Workspace ws);

std::size_t backward_workspace_size(const detail::BackwardProblem& p);
void backward(const detail::BackwardProblem& p, Workspace ws);

}  // namespace attn::cuda
