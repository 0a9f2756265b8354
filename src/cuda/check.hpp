// CUDA runtime errors as attn::Error. Every runtime call and every launch goes through these,
// so a failure surfaces as an exception naming the call instead of a silent wrong result.
#pragma once

#include <cuda_runtime_api.h>

#include "attn/error.hpp"

namespace attn::cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) detail::fail("cuda: ", what, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

}  // namespace attn::cuda

#define ATTN_CUDA_CHECK(expr) ::attn::cuda::check_cuda((expr), #expr)
/// After a <<<...>>> launch: configuration errors show up here, not at the launch statement.
#define ATTN_CUDA_CHECK_LAUNCH(name) ::attn::cuda::check_cuda(cudaGetLastError(), "launch of " name)
