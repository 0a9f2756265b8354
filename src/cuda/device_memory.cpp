// The CUDA runtime calls behind Tensor's device memory and attn::cuda_available().
#include "core/device_memory.hpp"

#include "attn/device.hpp"
#include "cuda/check.hpp"

namespace attn {
namespace detail {
namespace {

/// Makes `device` current for one call and restores the caller's device after, so that
/// allocating on cuda:1 does not move the caller's later launches there.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    ATTN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) ATTN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

void* cuda_malloc(int device, std::size_t bytes) {
  ATTN_CHECK(device >= 0 && device < cuda_device_count(), "device: cuda:", device, " does not exist (",
             cuda_device_count(), " CUDA devices visible)");
  DeviceGuard guard(device);
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // out-of-memory is not sticky; clear it so later calls do not see it
    fail("tensor: cudaMalloc of ", bytes, " bytes on cuda:", device, " failed: ", cudaGetErrorString(e));
  }
  return p;
}

void cuda_free(int device, void* ptr) {
  // Called from destructors: errors cannot be thrown from here, and a failed free leaks at worst.
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  if (previous != device) cudaSetDevice(device);
  cudaFree(ptr);
  if (previous != device) cudaSetDevice(previous);
}

void cuda_memcpy(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  ATTN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // "no device" / "no driver" must not poison later calls
    return 0;
  }
  return n;
}

}  // namespace detail

bool cuda_available() { return detail::cuda_device_count() > 0; }

}  // namespace attn
