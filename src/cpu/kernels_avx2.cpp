// The CPU kernels for AVX2 + FMA + F16C (see kernels_scalar.cpp; CMake adds the -m flags).
#include "cpu/simd/vec_avx2.hpp"

#define ATTN_CPU_ISA avx2
#include "cpu/kernels.inc"
