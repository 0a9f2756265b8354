// The CUDA forward's correctness cases, shared by the GoogleTest suite (test_cuda_forward.cpp)
// and the standalone driver (selftest/gpu_selftest.cpp, for GPU machines without GoogleTest
// and for compute-sanitizer runs). Nothing here depends on GoogleTest.
//
// Each case draws fresh bf16/f16 inputs, runs the float64 reference on host copies of the
// same values and the CUDA backend on device copies whose outputs were poisoned with NaN, and
// checks every element of out and lse.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "cuda/case_mask.hpp"
#include "cuda/output_check.hpp"  // CheckResult

namespace attn::test::cuda {

/// A case: shapes and numerics here, the mask parts in CaseMask.
struct FwdCase : CaseMask {
  std::string name;
  DType dtype = DType::bf16;
  int head_dim = 128;
  int head_dim_v = 128;
  int batch = 2;
  int seqlen_q = 128;
  int seqlen_k = 128;
  int heads_q = 4;
  int heads_kv = 4;
  /// Packed (varlen) batch: per-sequence query and key lengths (override batch / seqlens).
  std::vector<int> lens_q, lens_k;
  /// > 0: K and V live in a shuffled page pool (page_size tokens per page) with per-sequence
  /// key lengths `lens_k` (or seqlen_k for all); queries stay padded (batch, seqlen_q).
  int page_size = 0;
  float scale = 0.0f;
  float softcap = 0.0f;
  /// Standard deviation of q and k; large values give huge logits.
  double sigma = 1.0;
  /// q, k and v as strided views into one (batch, seqlen, 3, heads, dim) buffer.
  bool qkv_packed = false;
  /// Small enough for the compute-sanitizer runs.
  bool small = false;
};


/// Every case of the suite.
std::vector<FwdCase> forward_cases();
/// Runs one case (throws attn::Error when the backend does).
CheckResult check_forward(const FwdCase& c, std::uint64_t seed);

}  // namespace attn::test::cuda
