// The CPU backward compiled for avx512 (CMake adds the -m flags by the file name).
// See kernels_scalar.cpp on why each ISA gets its own namespace.
#include "cpu/simd/vec_avx512.hpp"

#define ATTN_CPU_ISA avx512
#include "cpu/flash_backward.hpp"

namespace attn::cpu::avx512 {

void flash_backward_entry(const detail::BackwardProblem& p, const BackwardPlan& plan, std::byte* workspace) {
  flash_backward<Vec>(p, plan, workspace);
}

}  // namespace attn::cpu::avx512
