// The CPU backward compiled for avx2 (CMake adds the -m flags by the file name).
// See kernels_scalar.cpp on why each ISA gets its own namespace.
#include "cpu/simd/vec_avx2.hpp"

#define ATTN_CPU_ISA avx2
#include "cpu/flash_backward.hpp"

namespace attn::cpu::avx2 {

void flash_backward_entry(const detail::BackwardProblem& p, const BackwardPlan& plan, std::byte* workspace) {
  flash_backward<Vec>(p, plan, workspace);
}

}  // namespace attn::cpu::avx2
