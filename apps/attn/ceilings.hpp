// Ceilings measured in the same run as the bench rows, so a row's GFLOP/s can be read against
// what this machine does at best right now (clock, thermal state and neighbours included).
#pragma once

#include <cstddef>

namespace attn::cli {

/// GFLOP/s of an n x n x n single-precision GEMM through cblas (OpenBLAS) on `threads` threads,
/// median of several runs; 0 when attn was built without cblas.
double sgemm_gflops(int n, int threads);

/// GFLOP/s of a loop of independent fused multiply-adds held in registers, on `threads` threads
/// with the widest vectors this CPU has (AVX-512, AVX2+FMA, or scalar): the arithmetic peak.
double fma_peak_gflops(int threads, double seconds);

/// Memory bandwidth in GB/s on `threads` threads, each streaming its share of a buffer of
/// `bytes`, median of several passes; the buffer should be many times the last-level cache.
/// stream_read: bytes read (a sum over the buffer), what a decode kernel reading a KV cache
/// can reach. memcpy: bytes read plus bytes written by memcpy into a second buffer.
double stream_read_gbytes(int threads, std::size_t bytes);
double memcpy_gbytes(int threads, std::size_t bytes);

/// Name of the instruction set fma_peak_gflops uses here ("avx512", "avx2", "scalar").
const char* fma_peak_isa();

}  // namespace attn::cli
