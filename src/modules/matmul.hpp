// The one f32 matrix product the layers use, y = x W^T + b (nn.Linear's convention).
// Everything in src/modules that multiplies by a weight goes through here; it runs on the CPU
// backend's gemm and thread pool (src/cpu/matmul.hpp).
#pragma once

#include <cstdint>

namespace attn::modules::detail {

/// y (rows, out) = x (rows, in) * w (out, in)^T + bias (out, may be null). All row-major and
/// contiguous; y must not alias x or w.
void matmul_abt(const float* x, const float* w, const float* bias, float* y, std::int64_t rows, std::int64_t in,
                std::int64_t out);

}  // namespace attn::modules::detail
