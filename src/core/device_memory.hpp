// The few CUDA runtime calls the core types need. Implemented by src/cuda/device_memory.cpp
// when the CUDA backend is built, else by src/core/device_memory_none.cpp (which throws).
#pragma once

#include <cstddef>

namespace attn::detail {

void* cuda_malloc(int device, std::size_t bytes);
void cuda_free(int device, void* ptr);
/// cudaMemcpy with cudaMemcpyDefault (any direction), synchronous.
void cuda_memcpy(void* dst, const void* src, std::size_t bytes);
int cuda_device_count();

}  // namespace attn::detail
