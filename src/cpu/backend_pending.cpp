// Placeholder until the CPU kernels land (replaced by src/cpu/ kernels).
#include "cpu/backend.hpp"

namespace attn::cpu {
std::size_t forward_workspace_size(const detail::AttentionProblem&) { return 0; }
void forward(const detail::AttentionProblem&, Workspace) { detail::fail("backend: cpu kernels are not built yet"); }
std::size_t backward_workspace_size(const detail::BackwardProblem&) { return 0; }
void backward(const detail::BackwardProblem&, Workspace) { detail::fail("backend: cpu kernels are not built yet"); }
}  // namespace attn::cpu
