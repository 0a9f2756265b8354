// y = x W^T + b in f32: register-tiled dot products, tiles spread over threads.
//
// Why this shape: x's rows and W's rows both run along `in` with unit stride, so a tile of
// kRows x kCols outputs streams kRows + kCols contiguous rows once and keeps kRows * kCols
// accumulators of kLanes independent partial sums. Independent lanes let the compiler emit SIMD
// without -ffast-math (no reassociation of one sum), and the same tile serves decode (rows = 1).
#include "modules/matmul.hpp"

#include <algorithm>

#include "modules/parallel_for.hpp"

namespace attn::modules::detail {
namespace {

// 4 x 4 tiles measured 22-36 GFLOP/s on 2 shared AVX2 cores (SSE2 code, no -march) for
// 512 x 2048 x 2048, against 17-23 for 2 x 4; decode (one row) is bound by reading W either way.
constexpr int kLanes = 8;
constexpr int kRows = 4;
constexpr int kCols = 4;
// A block of outputs per task: 64 weight rows of a 1024-wide layer are 256 KiB, about an L2.
constexpr std::int64_t kBlockRows = 32;
constexpr std::int64_t kBlockCols = 64;

template <int R, int C>
void tile(const float* x, const float* w, const float* bias, float* y, std::int64_t in, std::int64_t out) {
  float acc[R][C][kLanes] = {};
  const std::int64_t full = in / kLanes * kLanes;
  for (std::int64_t k = 0; k < full; k += kLanes)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        for (int l = 0; l < kLanes; ++l) acc[r][c][l] += x[r * in + k + l] * w[c * in + k + l];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float sum = bias != nullptr ? bias[c] : 0.0f;
      for (int l = 0; l < kLanes; ++l) sum += acc[r][c][l];
      for (std::int64_t k = full; k < in; ++k) sum += x[r * in + k] * w[c * in + k];
      y[r * out + c] = sum;
    }
}

template <int R>
void row_tiles(const float* x, const float* w, const float* bias, float* y, std::int64_t in, std::int64_t out,
               std::int64_t col_begin, std::int64_t col_end) {
  std::int64_t c = col_begin;
  for (; c + kCols <= col_end; c += kCols)
    tile<R, kCols>(x, w + c * in, bias != nullptr ? bias + c : nullptr, y + c, in, out);
  for (; c < col_end; ++c) tile<R, 1>(x, w + c * in, bias != nullptr ? bias + c : nullptr, y + c, in, out);
}

}  // namespace

void matmul_abt(const float* x, const float* w, const float* bias, float* y, std::int64_t rows, std::int64_t in,
                std::int64_t out) {
  const std::int64_t row_blocks = (rows + kBlockRows - 1) / kBlockRows;
  const std::int64_t col_blocks = (out + kBlockCols - 1) / kBlockCols;
  // Grain: about 64K multiply-adds per task keeps thread start-up below a few percent.
  const std::int64_t block_work = std::min(rows, kBlockRows) * std::min(out, kBlockCols) * in;
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t(1) << 16) / std::max<std::int64_t>(1, block_work));
  parallel_for(row_blocks * col_blocks, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t r0 = t / col_blocks * kBlockRows, r1 = std::min(rows, r0 + kBlockRows);
      const std::int64_t c0 = t % col_blocks * kBlockCols, c1 = std::min(out, c0 + kBlockCols);
      std::int64_t r = r0;
      for (; r + kRows <= r1; r += kRows) row_tiles<kRows>(x + r * in, w, bias, y + r * out, in, out, c0, c1);
      for (; r < r1; ++r) row_tiles<1>(x + r * in, w, bias, y + r * out, in, out, c0, c1);
    }
  });
}

}  // namespace attn::modules::detail
