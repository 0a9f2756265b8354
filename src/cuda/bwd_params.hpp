// What the backward kernels receive: the validated problem plus the workspace carve-up.
// Shared by the host planner (backward.cpp) and the kernels (sm80/flash_bwd*.cu, bwd_prep.cu).
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "problem.hpp"

namespace attn::cuda {

/// Tile shape of the sm80 backward. Each CTA owns `block_n` keys of one kv head (16 per warp,
/// dK and dV accumulated in registers) and walks query tiles of `block_m` rows.
struct BwdTile {
  int block_m;  ///< query rows per step
  int block_n;  ///< keys per CTA, 16 per warp
  int warps;
};
// dK and dV of 16 keys cost D / 2 + Dv / 2 f32 registers per thread, S^T and dP^T of a 64-query
// step another 32 each: this fits head_dim up to 128 within 255 registers. 128 keys per CTA
// (not 64) halve the dQ atomics and the Q / dO loads per key.
inline constexpr BwdTile kBwdTile{64, 128, 8};
inline constexpr int kBwdThreads = 32 * kBwdTile.warps;

/// Launch plan and problem for one backward call. Workspace (f32 unless said), Sq = seqlen_q
/// (the maximum for packed batches), rows indexed by (batch, query) even when packed:
///   dq_accum  (B, Sq, Hq, D)     scale-free dQ sums; atomics, or ordered adds when deterministic
///   dsum      (B, Hq, Sq)        D_i = rowsum(dO_i * O_i)
///   counters  i32 (B, Hq, m_tiles)  deterministic only: how many key blocks have added into
///                                    each query tile, so they add in key-block order
struct BwdParams {
  detail::BackwardProblem p;
  int m_tiles = 0;  ///< query tiles per (batch, head) at the padded length
  int n_blocks = 0;  ///< key blocks per (batch, kv head)
  float scale_log2 = 0;    ///< scale * log2(e)
  float softcap_log2 = 0;  ///< softcap * log2(e)
  float* dq_accum = nullptr;
  float* dsum = nullptr;
  int* counters = nullptr;
};

/// One explicit instantiation per (dtype, head_dim), in src/cuda/sm80/flash_bwd_*.cu.
template <DType dtype, int D>
void launch_flash_bwd(const BwdParams& params, cudaStream_t stream);

/// D_i = rowsum(dO_i * O_i) into dsum (src/cuda/bwd_prep.cu).
void launch_bwd_dot_do_o(const BwdParams& params, cudaStream_t stream);
/// dq = scale * dq_accum in the storage dtype (src/cuda/bwd_prep.cu).
void launch_bwd_convert_dq(const BwdParams& params, cudaStream_t stream);

}  // namespace attn::cuda
