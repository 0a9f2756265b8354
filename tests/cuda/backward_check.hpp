// The CUDA backward's correctness cases, shared by the GoogleTest suite (test_cuda_backward.cpp)
// and the standalone driver (selftest/gpu_selftest_backward.cpp). Nothing here depends on
// GoogleTest.
//
// Each case draws fresh bf16/f16 q, k, v, dout, runs the float64 reference forward (out rounded
// to the storage dtype, lse in f32: what a real forward hands the backward) and the float64
// reference backward on those exact values, then the CUDA backward on device copies with dq,
// dk, dv poisoned with NaN, and checks every element of the three gradients.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "cuda/case_mask.hpp"
#include "cuda/output_check.hpp"  // CheckResult

namespace attn::test::cuda {

/// A case: shapes and numerics here, the mask parts in CaseMask.
struct BwdCase : CaseMask {
  std::string name;
  DType dtype = DType::bf16;
  int head_dim = 128;
  int head_dim_v = 0;  ///< 0: head_dim
  int batch = 2;
  int seqlen_q = 128;
  int seqlen_k = 128;
  int heads_q = 4;
  int heads_kv = 4;
  /// Packed (varlen) batch: per-sequence query and key lengths (override batch / seqlens).
  std::vector<int> lens_q, lens_k;
  float scale = 0.0f;
  float softcap = 0.0f;
  double sigma = 1.0;  ///< standard deviation of q and k
  bool deterministic = false;
  bool small = false;  ///< small enough for the compute-sanitizer runs
};


std::vector<BwdCase> backward_cases();
/// Runs one case (throws attn::Error when the backend does). With `repeat_bitwise`, runs the
/// CUDA backward twice and also requires bitwise-equal gradients.
CheckResult check_backward(const BwdCase& c, std::uint64_t seed, bool repeat_bitwise = false);

}  // namespace attn::test::cuda
