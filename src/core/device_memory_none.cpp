// Stand-ins for a build without the CUDA backend: every CUDA request is a clear error.
#include "attn/device.hpp"
#include "attn/error.hpp"
#include "core/device_memory.hpp"

namespace attn {
namespace detail {

namespace {
[[noreturn]] void no_cuda() { fail("device: CUDA tensors need the CUDA backend, which this build of attn lacks"); }
}  // namespace

void* cuda_malloc(int, std::size_t) { no_cuda(); }
void cuda_free(int, void*) {}
void cuda_memcpy(void*, const void*, std::size_t) { no_cuda(); }
int cuda_device_count() { return 0; }

}  // namespace detail

bool cuda_available() { return false; }

}  // namespace attn
