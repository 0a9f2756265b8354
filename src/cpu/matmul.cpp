#include "cpu/matmul.hpp"

#include <algorithm>

#include "attn/error.hpp"
#include "cpu/isa.hpp"
#include "cpu/kernels.hpp"
#include "cpu/thread_pool.hpp"

namespace attn::cpu {
namespace {

// Rows of W per task: a multiple of every ISA's gemm panel (2, 16 and 32 floats).
constexpr std::int64_t kBlockCols = 64;
// Rows of the C tile: a multiple of every ISA's micro-kernel rows (4, 6 and 12).
constexpr std::int64_t kTileRows = 96;
// Fewer rows than this take the unpacked dot-product kernel (gemm_abt), which reads W in place.
// Packing W costs about as much as running 32 rows against it: for 2048 x 2048 on AVX2 both
// forms took the same CPU time at 32 rows, the packed one 20% less at 64 and 35% less at 512,
// the dot form 4x less at 7-8 rows (and half the wall time of the old modules GEMM there).
constexpr std::int64_t kPackRows = 32;
// Depth of one gemm call: a 256 x 64 slice of the packed block is 64 KiB, which stays in L2
// while the tile's rows stream past it; the C tile is re-read once per slice.
constexpr std::int64_t kDepth = 256;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// The packed block (K x kBlockCols) and the C tile (kTileRows x kBlockCols) of one thread.
std::int64_t floats_per_thread(std::int64_t K) { return (K + kTileRows) * kBlockCols; }

// packed[k * kBlockCols + c] = w[c * ldw + k] for c < cols, and 0 for cols <= c < width so the
// padded columns of the last panel add nothing. 16 values of k at a time: each row of W gives a
// 64-byte line, and the 16 packed rows being written stay in L1 (a column-by-column copy would
// walk the whole block once per column).
void pack_transposed(const float* w, std::int64_t ldw, std::int64_t cols, std::int64_t width, std::int64_t K,
                     float* packed) {
  constexpr std::int64_t kStep = 16;
  for (std::int64_t k0 = 0; k0 < K; k0 += kStep) {
    const std::int64_t k1 = std::min(K, k0 + kStep);
    for (std::int64_t c = 0; c < cols; ++c)
      for (std::int64_t k = k0; k < k1; ++k) packed[k * kBlockCols + c] = w[c * ldw + k];
    for (std::int64_t k = k0; k < k1; ++k) std::fill(packed + k * kBlockCols + cols, packed + k * kBlockCols + width, 0.0f);
  }
}

}  // namespace

std::size_t matmul_workspace_bytes(std::int64_t M, std::int64_t K, int threads) {
  if (M < kPackRows) return 0;
  return std::size_t(floats_per_thread(K)) * sizeof(float) * std::size_t(std::max(threads, 1));
}

void matmul_abt(std::int64_t M, std::int64_t N, std::int64_t K, const float* x, std::int64_t ldx, const float* w,
                std::int64_t ldw, const float* bias, float* y, std::int64_t ldy, Workspace ws) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    for (std::int64_t r = 0; r < M; ++r)
      for (std::int64_t c = 0; c < N; ++c) y[r * ldy + c] = bias != nullptr ? bias[c] : 0.0f;
    return;
  }
  const Kernels& kernels = kernels_for(active_isa());
  const std::int64_t col_blocks = ceil_div(N, kBlockCols);
  const std::int64_t pool_threads = num_threads();
  const auto add_bias = [&](std::int64_t r0, std::int64_t rows, std::int64_t c0, std::int64_t cols, const float* acc,
                            std::int64_t ld_acc) {
    for (std::int64_t r = 0; r < rows; ++r) {
      float* out = y + (r0 + r) * ldy + c0;
      for (std::int64_t c = 0; c < cols; ++c) out[c] = acc[r * ld_acc + c] + (bias != nullptr ? bias[c0 + c] : 0.0f);
    }
  };
  if (M < kPackRows) {
    parallel_for(col_blocks, int(std::min(pool_threads, col_blocks)), [&](std::int64_t block, int) {
      const std::int64_t c0 = block * kBlockCols, cols = std::min(kBlockCols, N - c0);
      kernels.gemm_abt(int(M), int(cols), int(K), x, int(ldx), w + c0 * ldw, int(ldw), y + c0, int(ldy));
      add_bias(0, M, c0, cols, y + c0, ldy);
    });
    return;
  }
  // Split rows only until every thread has about two tasks: each row chunk packs W again.
  const std::int64_t row_tiles = ceil_div(M, kTileRows);
  const std::int64_t wanted_chunks = std::clamp<std::int64_t>(ceil_div(2 * pool_threads, col_blocks), 1, row_tiles);
  const std::int64_t chunk_rows = ceil_div(row_tiles, wanted_chunks) * kTileRows;
  const std::int64_t tasks = col_blocks * ceil_div(M, chunk_rows);
  const std::int64_t thread_bytes = std::int64_t(matmul_workspace_bytes(M, K, 1));
  const int threads = int(std::min({pool_threads, std::int64_t(ws.bytes) / thread_bytes, tasks}));
  ATTN_CHECK(threads >= 1, "workspace: matmul_abt needs ", thread_bytes, " bytes, got ", ws.bytes);
  float* const base = static_cast<float*>(ws.data);
  parallel_for(tasks, threads, [&](std::int64_t task, int thread) {
    float* packed = base + thread * floats_per_thread(K);
    float* tile = packed + K * kBlockCols;
    const std::int64_t c0 = task % col_blocks * kBlockCols, cols = std::min(kBlockCols, N - c0);
    const std::int64_t width = ceil_div(cols, kernels.gemm_panel) * kernels.gemm_panel;
    const std::int64_t r_begin = task / col_blocks * chunk_rows, r_end = std::min(M, r_begin + chunk_rows);
    pack_transposed(w + c0 * ldw, ldw, cols, width, K, packed);
    for (std::int64_t r0 = r_begin; r0 < r_end; r0 += kTileRows) {
      const std::int64_t rows = std::min(kTileRows, r_end - r0);
      for (std::int64_t k0 = 0; k0 < K; k0 += kDepth)
        kernels.gemm(int(rows), int(width), int(std::min(kDepth, K - k0)), x + r0 * ldx + k0, int(ldx),
                     packed + k0 * kBlockCols, int(kBlockCols), tile, int(kBlockCols), k0 > 0, false);
      add_bias(r0, rows, c0, cols, tile, kBlockCols);
    }
  });
}

}  // namespace attn::cpu
