// The CUDA MLA absorbed decode's correctness cases (head dims 576 / 512 over a latent cache),
// shared by the GoogleTest suite (test_cuda_mla.cpp) and the standalone driver
// (selftest/mla_selftest.cpp, for compute-sanitizer runs). Nothing here depends on GoogleTest.
//
// Each case draws fresh bf16/f16 queries and latent rows, runs the float64 reference on f64
// copies of the same rounded values (values as a strided view of the keys' first 512
// channels, as the kernel reads them), and the CUDA backend on a shuffled page pool (or a
// padded cache through the public API) whose outputs were poisoned with NaN; then checks every
// element of out and lse.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attn/dtype.hpp"
#include "cuda/output_check.hpp"  // CheckResult

namespace attn::test::cuda {

struct MlaCase {
  std::string name;
  DType dtype = DType::bf16;
  int heads = 128;
  int seqlen_q = 1;
  /// Keys per sequence (the batch is its size).
  std::vector<int> lens_k;
  bool causal = false;
  /// > 0: the latent cache is a shuffled page pool of this page size, called through the
  /// backend's AttentionProblem; 0: a padded (B, max len, 1, 576) cache through
  /// attention_forward, all lens equal.
  int page_size = 64;
  /// 0: MLA's 1 / sqrt(qk_nope + qk_rope) = 1 / sqrt(192).
  float scale = 0.0f;
  /// Small enough for the compute-sanitizer run.
  bool small = false;
};


std::vector<MlaCase> mla_cases();
/// Runs one case (throws attn::Error when the backend does).
CheckResult check_mla(const MlaCase& c, std::uint64_t seed);

}  // namespace attn::test::cuda
