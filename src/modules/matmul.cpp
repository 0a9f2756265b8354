// y = x W^T + b on the CPU backend's matmul (src/cpu/matmul.hpp): the runtime-ISA gemm over
// packed blocks of W, spread over the backend's thread pool.
#include "modules/matmul.hpp"

#include <memory>

#include "cpu/matmul.hpp"
#include "cpu/thread_pool.hpp"

namespace attn::modules::detail {

void matmul_abt(const float* x, const float* w, const float* bias, float* y, std::int64_t rows, std::int64_t in,
                std::int64_t out) {
  // The layers own their temporaries; the packing workspace is one of them. Uninitialised:
  // the kernel writes every float of it before reading.
  const std::size_t bytes = cpu::matmul_workspace_bytes(rows, in, cpu::num_threads());
  const auto workspace = std::make_unique_for_overwrite<float[]>(bytes / sizeof(float));
  cpu::matmul_abt(rows, out, in, x, in, w, in, bias, y, out, {workspace.get(), bytes});
}

}  // namespace attn::modules::detail
