// How the threads of a CTA (or of a producer warpgroup) split the copy of a tile of rows into
// 16-byte chunks: shared by the forward and backward kernels, sm80 and sm90.
#pragma once

#include "cuda/sm80/ptx.cuh"

namespace attn::cuda::sm80 {

/// Calls copy(r, c, row) for the 16-byte chunks (r, c) of a ROWS x CHUNKS tile that thread
/// `tid` of kThreads copies, where row = row_ptr(r) is looked up once per row and pass.
///
/// Each row is split among kPer = max(4, kThreads / ROWS) threads: thread x takes row
/// x / kPer (+ kThreads / kPer per pass) and chunks x % kPer, x % kPer + kPer, ... So a thread
/// computes one row address per pass (one block-table read when paged) and its copies sit at
/// constant offsets from it. A lookup and a 64-bit address per chunk instead made decode bound
/// by instructions at half the memory bandwidth (bench/gpu_notes.md, v7). A warp's copies
/// cover 8 rows x 64 bytes: whole sectors, and no more shared-memory wavefronts than bytes
/// need, for rows padded by 16 bytes or 128-byte swizzled alike.
///
/// Passes stay a rolled loop: unrolled, their row pointers spilled the tall forward tile (255
/// registers) and the Hopper producer (40). Shapes that do not split so fall back to chunk ids
/// tid, tid + kThreads, ... with a lookup per chunk.
template <int kThreads, int ROWS, int CHUNKS, class RowPtr, class Copy>
__device__ __forceinline__ void copy_tile_rows(int tid, RowPtr row_ptr, Copy copy) {
  constexpr int kPer = ROWS >= kThreads / 4 ? 4 : kThreads / ROWS;
  constexpr int kRowsPerPass = kThreads / kPer;
  if constexpr (kThreads % kPer == 0 && ROWS % kRowsPerPass == 0 && CHUNKS % kPer == 0) {
    const int r0 = tid / kPer, c0 = tid % kPer;
#pragma unroll 1
    for (int pass = 0; pass < ROWS / kRowsPerPass; ++pass) {
      const int r = r0 + pass * kRowsPerPass;
      const auto row = row_ptr(r);
#pragma unroll
      for (int u = 0; u < CHUNKS / kPer; ++u) copy(r, c0 + u * kPer, row);
    }
  } else {
    for (int id = tid; id < ROWS * CHUNKS; id += kThreads) copy(id / CHUNKS, id % CHUNKS, row_ptr(id / CHUNKS));
  }
}

/// ROWS rows of COLS elements of T from the global rows that row_ptr(r) returns (nullptr: zero
/// fill) into shared memory rows of `stride` elements, by the kThreads threads of the CTA.
/// `base` is any valid global address, named by the zero-filling copies.
template <int kThreads, class T, int ROWS, int COLS, class RowPtr>
__device__ __forceinline__ void load_rows_async(T* smem, int stride, const T* base, RowPtr row_ptr) {
  copy_tile_rows<kThreads, ROWS, COLS / 8>(int(threadIdx.x), row_ptr, [&](int r, int c, const T* row) {
    cp_async_16(smem + r * stride + c * 8, row != nullptr ? row + c * 8 : base, row != nullptr);
  });
}

}  // namespace attn::cuda::sm80
