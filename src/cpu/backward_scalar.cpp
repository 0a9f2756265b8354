// The CPU backward compiled for no particular instruction set.
// See kernels_scalar.cpp on why each ISA gets its own namespace.
#include "cpu/simd/vec_scalar.hpp"

#define ATTN_CPU_ISA scalar
#include "cpu/flash_backward.hpp"

namespace attn::cpu::scalar {

void flash_backward_entry(const detail::BackwardProblem& p, const BackwardPlan& plan, std::byte* workspace) {
  flash_backward<Vec>(p, plan, workspace);
}

}  // namespace attn::cpu::scalar
