// The CPU backend's entry points, called by the dispatch layer with validated problems.
#pragma once

#include <cstddef>

#include "attn/attention.hpp"
#include "problem.hpp"

namespace attn::cpu {

std::size_t forward_workspace_size(const detail::AttentionProblem& p);
void forward(const detail::AttentionProblem& p, Workspace ws);

std::size_t backward_workspace_size(const detail::BackwardProblem& p);
void backward(const detail::BackwardProblem& p, Workspace ws);

}  // namespace attn::cpu
