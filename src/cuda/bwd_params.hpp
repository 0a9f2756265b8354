// What the backward kernels receive: the validated problem plus the workspace carve-up.
// Shared by the host planner (backward.cpp) and the kernels (sm80/flash_bwd*.cu, bwd_prep.cu).
#pragma once

#include <cstddef>

#include <cuda.h>  // CUtensorMap (a type only)
#include <cuda_runtime_api.h>

#include "problem.hpp"

namespace attn::cuda {

/// Tile shape of the sm80 backward for a head_dim. Each CTA owns `block_n` keys of one kv head
/// and walks query tiles of `block_m` rows. Its warps form key groups of 16 keys; the
/// `dim_split` warps of a group share those keys and split the head dims of dK and dV, so the
/// accumulators of one warp stay D / 2 / dim_split + Dv / 2 / dim_split registers.
struct BwdTile {
  int block_m;  ///< query rows per step
  int block_n;  ///< keys per CTA, 16 per key group
  int warps;
  int dim_split;  ///< warps per key group
};
inline constexpr int kBwdWarps = 8;
inline constexpr int kBwdThreads = 32 * kBwdWarps;

ATTN_HD constexpr BwdTile bwd_tile(int head_dim) {
  // Up to 128: dK + dV of 16 keys (D registers) and S^T, dP^T of a 64-query step (64) fit 255
  // registers; 128 keys per CTA halve the dQ atomics and Q / dO loads per key against 64.
  // Beyond: two warps per 16 keys (each recomputes S^T and dP^T, 1.4x the mma work) and
  // 32-query steps keep the registers, and shared memory under A100's 164 KB.
  return head_dim <= 128 ? BwdTile{64, 128, kBwdWarps, 1} : BwdTile{32, 64, kBwdWarps, 2};
}

/// Rows of lse_log2 and dsum per (batch, head): seqlen_q rounded up to whole query tiles, so the
/// main kernel copies a tile's values with 16-byte cp.async and no bounds.
inline constexpr int kBwdRowPad = 64;

/// Launch plan and problem for one backward call. Workspace (f32 unless said), Sq = seqlen_q
/// (the maximum for packed batches), Sp = Sq rounded up to kBwdRowPad, rows indexed by
/// (batch, query) even when packed:
///   dq_accum  (B, Sq, Hq, D)     scale-free dQ sums; atomics, or ordered adds when deterministic.
///             Hopper kernel (dq_tiled): (B, Hq, m_tiles, 64 x D) instead, each query tile's sums
///             contiguous in the order of the kernel's registers (dq_tiled_offset), so that one
///             bulk reduce-add from shared memory adds a warpgroup's half tile
///   lse_log2  (B, Hq, Sp)        lse * log2(e); +inf for fully masked and padding rows, so that
///                                exp2(s - lse_log2) is 0 there
///   dsum      (B, Hq, Sp)        D_i = rowsum(dO_i * O_i); 0 in padding rows
///   counters  i32 (B, Hq, m_tiles)  deterministic only: how many key blocks have added into
///                                    each query tile, so they add in key-block order
struct BwdParams {
  detail::BackwardProblem p;
  int m_tiles = 0;  ///< query tiles per (batch, head) at the padded length
  int n_blocks = 0;  ///< key blocks per (batch, kv head)
  float scale_log2 = 0;    ///< scale * log2(e)
  float softcap_log2 = 0;  ///< softcap * log2(e)
  int seqlen_q_pad = 0;  ///< Sp
  float* dq_accum = nullptr;
  float* lse_log2 = nullptr;
  float* dsum = nullptr;
  int* counters = nullptr;
  /// The Hopper kernel's choices: dq_accum in its tiled order; Q and dO (and lse_log2, dsum) by
  /// TMA through these maps (padded rows, tma_map.hpp), otherwise by cp.async.
  bool dq_tiled = false;
  bool tma = false;
  int head_chunk = 1;  ///< (kv head, batch) pairs per chunk of the block order (sm90/flash_bwd.cuh)
  CUtensorMap tma_q{};
  CUtensorMap tma_do{};
};

/// Where the tiled dq_accum (BwdParams::dq_tiled, D = 128 or 64) keeps query row r (0..63) of a
/// tile, column c (0..D-1), in floats from the tile's start: warpgroup c / 64 owns the columns
/// (at D 64 there is one block of 64, into which both warpgroups add their partial sums), and
/// its thread t holds the wgmma accumulator (rows 16 (t / 32) + (t % 32) / 4 + 8 (e / 2),
/// columns 8 j + 2 (t % 4) + e % 2), stored as float4 j of thread t at 4 (128 j + t).
ATTN_HD constexpr int dq_tiled_offset(int r, int c) {
  const int wg = c / 64, j = (c % 64) / 8, w = c % 8;
  const int t = (r / 16) * 32 + (r % 8) * 4 + w / 2;
  const int e = ((r % 16) / 8) * 2 + w % 2;
  return wg * 4096 + (j * 128 + t) * 4 + e;
}

/// One explicit instantiation per (dtype, head_dim, head_dim_v), in src/cuda/sm80/flash_bwd_*.cu.
template <DType dtype, int D, int Dv>
void launch_flash_bwd(const BwdParams& params, cudaStream_t stream);

/// The Hopper backward (wgmma, src/cuda/sm90/flash_bwd.cuh) at D = Dv = 128 and 64, same tiles
/// (bwd_tile) and workspace; one instantiation per (dtype, D) in src/cuda/sm90/flash_bwd_*.cu.
template <DType dtype, int D>
void launch_flash_bwd_sm90(const BwdParams& params, cudaStream_t stream);

/// lse_log2 and D_i = rowsum(dO_i * O_i) into dsum (src/cuda/bwd_prep.cu).
void launch_bwd_dot_do_o(const BwdParams& params, cudaStream_t stream);
/// dq = scale * dq_accum in the storage dtype (src/cuda/bwd_prep.cu).
void launch_bwd_convert_dq(const BwdParams& params, cudaStream_t stream);

}  // namespace attn::cuda
