// The CPU backend's entry points: plan, pick the ISA's kernels, run.
#include "cpu/backend.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu/backward_plan.hpp"
#include "cpu/forward_plan.hpp"
#include "cpu/kernels.hpp"
#include "cpu/strided_split.hpp"
#include "cpu/thread_pool.hpp"

namespace attn::cpu {

const Kernels& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::avx512: return avx512::kernels;
    case Isa::avx2: return avx2::kernels;
    case Isa::scalar: break;
  }
  return scalar::kernels;
}

namespace {

// Sized for the widest gemm panel so the answer holds whichever ISA runs the call.
std::size_t dense_workspace_size(const detail::AttentionProblem& p) {
  return plan_forward(p, num_threads(), ForwardPlan::kMaxPanel, ForwardPlan::kMaxPanel / 2).workspace_bytes;
}

void dense_forward(const detail::AttentionProblem& p, Workspace ws) {
  const Kernels& k = kernels_for(active_isa());
  // The pool may have grown since the workspace was sized: use only the threads it covers.
  int threads = num_threads();
  ForwardPlan plan = plan_forward(p, threads, k.gemm_panel, k.vector_width);
  while (plan.workspace_bytes > ws.bytes && threads > 1) plan = plan_forward(p, --threads, k.gemm_panel, k.vector_width);
  ATTN_CHECK(plan.workspace_bytes <= ws.bytes, "workspace: the cpu forward needs ", plan.workspace_bytes,
             " bytes, got ", ws.bytes);
  if (plan.num_units == 0) return;
  k.forward(p, plan, static_cast<std::byte*>(ws.data));
}

/// ATTN_CPU_STRIDED=dense keeps strided masks on the dense walk (for comparisons).
bool use_strided_split(const detail::AttentionProblem& p) {
  if (!strided_split_applies(p)) return false;
  const char* env = std::getenv("ATTN_CPU_STRIDED");
  return env == nullptr || std::strcmp(env, "dense") != 0;
}

}  // namespace

std::size_t forward_workspace_size(const detail::AttentionProblem& p) {
  return use_strided_split(p) ? strided_split_workspace_size(p, dense_workspace_size) : dense_workspace_size(p);
}

void forward(const detail::AttentionProblem& p, Workspace ws) {
  if (use_strided_split(p)) return strided_split_forward(p, ws, dense_workspace_size, dense_forward);
  dense_forward(p, ws);
}

std::size_t backward_workspace_size(const detail::BackwardProblem& p) {
  return use_strided_split(p) ? strided_split_backward_workspace_size(p, flash_backward_workspace_size)
                              : flash_backward_workspace_size(p);
}

void backward(const detail::BackwardProblem& p, Workspace ws) {
  if (use_strided_split(p)) return strided_split_backward(p, ws, flash_backward_workspace_size, flash_backward_run);
  flash_backward_run(p, ws);
}

}  // namespace attn::cpu
