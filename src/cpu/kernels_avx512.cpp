// The CPU kernels for AVX-512 F/BW/VL/DQ (see kernels_scalar.cpp; CMake adds the -m flags).
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*(), which its
// -Wmaybe-uninitialized reports as a false positive at every use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "cpu/simd/vec_avx512.hpp"

#define ATTN_CPU_ISA avx512
#include "cpu/kernels.inc"
