// The CUDA backward: planning, workspace and dispatch over the compiled (dtype, head_dim)
// instantiations. Called from backend.cpp's backward entry points.
#pragma once

#include <cstddef>

#include "attn/attention.hpp"
#include "problem.hpp"

namespace attn::cuda {

/// Bytes of device workspace `flash_backward` needs (see BwdParams for the carve-up).
std::size_t flash_backward_workspace_size(const detail::BackwardProblem& p);
/// Runs the backward on the default stream: dot(dO, O), the main kernel, dQ conversion.
void flash_backward(const detail::BackwardProblem& p, Workspace ws);

}  // namespace attn::cuda
