// Ceilings measured in the same run as the bench rows, so a row's GFLOP/s can be read against
// what this machine does at best right now (clock, thermal state and neighbours included).
#pragma once

namespace attn::cli {

/// GFLOP/s of an n x n x n single-precision GEMM through cblas (OpenBLAS) on `threads` threads,
/// median of several runs; 0 when attn was built without cblas.
double sgemm_gflops(int n, int threads);

/// GFLOP/s of a loop of independent fused multiply-adds held in registers, on `threads` threads
/// with the widest vectors this CPU has (AVX-512, AVX2+FMA, or scalar): the arithmetic peak.
double fma_peak_gflops(int threads, double seconds);

/// Name of the instruction set fma_peak_gflops uses here ("avx512", "avx2", "scalar").
const char* fma_peak_isa();

}  // namespace attn::cli
