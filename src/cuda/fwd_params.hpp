// What the forward kernels receive: the validated problem plus the launch plan (tile table,
// GQA packing, KV splits). Shared by the host planner (backend.cpp) and the kernels (.cu).
#pragma once

#include <cstddef>

#include <cuda.h>  // CUtensorMap (a type only)
#include <cuda_runtime_api.h>

#include "attn/attention.hpp"  // Workspace
#include "attn/error.hpp"
#include "problem.hpp"

namespace attn::cuda {

/// Tile shape of the sm80 forward for a (head_dim, head_dim_v). Only what changes registers
/// or shared memory is here; 4 warps each own 16 query rows of a 64-row tile.
struct FwdTile {
  int block_m;  ///< query rows per CTA
  int block_n;  ///< keys per pipeline stage
  int stages;   ///< K/V tiles in shared memory: stages - 1 in flight while one is computed
};
inline constexpr int kFwdWarps = 4;
inline constexpr int kFwdThreads = 32 * kFwdWarps;

/// Heads that also compile a tall tile: 4 warps x 32 rows, which halves the shared-memory
/// reads per flop (each K/V fragment feeds two m-tiles). Beyond 128 the doubled accumulators
/// no longer fit in registers.
ATTN_HD constexpr bool fwd_has_tall_tile(int head_dim) { return head_dim <= 128; }

/// `tall`: the 128-row tile, for query tiles that fill it (see backend.cpp's planner).
/// Registers per thread: accumulators Dv / 2 per m-tile plus BN / 2 scores per m-tile; tall
/// tiles at 96 and 128 take 32 keys (255 registers, no spills). Stages: the most that keep two
/// CTAs per SM on an H100 (about 113 KB of shared memory each), so that decode, which is
/// bound by memory latency, keeps several tiles in flight per CTA.
ATTN_HD constexpr FwdTile fwd_tile(int head_dim, bool tall) {
  if (tall) return head_dim <= 64 ? FwdTile{128, 64, 3} : FwdTile{128, 32, 3};
  if (head_dim <= 128) return FwdTile{64, 32, 5};
  return head_dim <= 192 ? FwdTile{64, 32, 3} : FwdTile{64, 32, 2};
}

/// Launch plan and problem for one forward call.
///
/// Rows of a CTA tile: with `pack` = 1, tile rows are the queries of one query head (slot =
/// query head). With `pack` = G (group size), the G query heads that share one kv head are
/// packed into the rows (slot = kv head, row x -> query x / G, head slot * G + x % G), so
/// decode-shaped calls load each K/V tile once for the whole group.
///
/// With `n_splits` > 1 each CTA covers 1/n_splits of the key tiles and writes an f32 partial
/// (normalised output and lse) to the workspace; fwd_combine merges them through their lse.
///   o_part   f32 (n_splits, B, seqlen_q, Hq, Dv)
///   lse_part f32 (n_splits, B, seqlen_q, Hq)
struct FwdParams {
  detail::AttentionProblem p;
  int block_m = 64;  ///< tile rows: fwd_tile(head_dim, tall).block_m
  int pack = 1;
  int slots = 0;    ///< query heads, or kv heads when packed
  int m_tiles = 0;  ///< query-row tiles per (slot, batch)
  int n_splits = 1;
  int pairs_per_group = 1;  ///< (slot, batch) pairs whose m-tiles interleave in launch order (cta_work)
  float scale_log2 = 0;    ///< scale * log2(e): scores go straight to exp2
  float softcap_log2 = 0;  ///< softcap * log2(e)
  float* o_part = nullptr;
  float* lse_part = nullptr;
  /// Run the Hopper kernel (src/cuda/sm90/flash_fwd.cuh): 128 x 128 tiles, block_m 128, pack 1.
  bool sm90 = false;
  /// Hopper kernel: K and V tiles come by TMA through these maps (tma_map.hpp). Otherwise
  /// (packed or paged rows, per-sequence key lengths, ATTN_CUDA_TMA=0) its producer warpgroup
  /// copies them with cp.async.
  bool tma = false;
  CUtensorMap tma_k{};
  CUtensorMap tma_v{};
  /// Loop variant of the Hopper kernel (launch_fwd in sm90/flash_fwd.cuh), for comparisons:
  /// 0 is the default (pipelined, ping-pong); ATTN_CUDA_FWD=sm90-pipe / sm90-plain-pp /
  /// sm90-plain pick 1 / 2 / 3.
  int sm90_variant = 0;
  /// Hopper kernel, persistent: `grid_ctas` CTAs (about one per SM) take the `total_works`
  /// work items (cta_work's numbering) one at a time from `work_counter`, an int in the
  /// workspace that the launch zeroes.
  int grid_ctas = 0;
  int total_works = 0;
  int* work_counter = nullptr;
  /// With `tma`, Q comes by TMA too (128-row boxes).
  CUtensorMap tma_q{};
  /// Hopper kernel: each consumer warpgroup's 64 output rows leave by a TMA store (64-row
  /// boxes) from shared memory, where the map could be made (the same conditions as Q's);
  /// otherwise, and for KV splits, the output goes from registers to global memory.
  bool tma_out = false;
  CUtensorMap tma_o{};
};

/// Which work CTA `linear` (its launch index) does. Launch order: groups of pairs_per_group
/// (slot, batch) pairs (the planner uses 1, see backend.cpp); within a group the m-tiles run
/// from last to first, so that under a causal mask the CTAs with the most key tiles start
/// first and the short ones fill the tail; splits vary fastest. A bijection onto
/// [0, m_tiles) x [0, n_splits) x [0, slots) x [0, batch) (tests/cuda/test_cuda_plan.cpp).
struct CtaWork {
  int m_tile, split, slot, batch;
};
ATTN_HD CtaWork cta_work(const FwdParams& f, int linear) {
  const int per_pair = f.m_tiles * f.n_splits;
  const int pairs = f.slots * f.p.batch;
  const int group_ctas = f.pairs_per_group * per_pair;
  const int group = linear / group_ctas;
  const int in_group = f.pairs_per_group < pairs - group * f.pairs_per_group ? f.pairs_per_group
                                                                           : pairs - group * f.pairs_per_group;
  const int rank = linear - group * group_ctas;  // < in_group * per_pair
  const int pair = group * f.pairs_per_group + rank % (in_group * f.n_splits) / f.n_splits;
  return {f.m_tiles - 1 - rank / (in_group * f.n_splits), rank % f.n_splits, pair % f.slots, pair / f.slots};
}

/// The caller's workspace must hold the plan's `workspace_bytes`.
inline void check_workspace(Workspace ws, std::size_t workspace_bytes) {
  ATTN_CHECK(ws.data != nullptr && ws.bytes >= workspace_bytes, "workspace: expected at least ", workspace_bytes,
             " bytes, got ", ws.bytes);
}

/// Points `o_part` and `lse_part` (the split partials' layout above) into the caller's workspace:
/// o_part from its start, lse_part `o_part_bytes` in; the workspace must hold `workspace_bytes`.
/// Shared by the forward's and MLA decode's planners.
inline void place_split_partials(Workspace ws, std::size_t o_part_bytes, std::size_t workspace_bytes, float*& o_part,
                                 float*& lse_part) {
  check_workspace(ws, workspace_bytes);
  o_part = static_cast<float*>(ws.data);
  lse_part = reinterpret_cast<float*>(static_cast<char*>(ws.data) + o_part_bytes);
}

/// One explicit instantiation per (dtype, head_dim, head_dim_v), in src/cuda/sm80/*.cu.
template <DType dtype, int D, int Dv>
void launch_flash_fwd(const FwdParams& params, cudaStream_t stream);

/// The Hopper forward (wgmma), one instantiation per dtype at D = Dv = 64, 128 and 256, in src/cuda/sm90/*.cu.
template <DType dtype, int D>
void launch_flash_fwd_sm90(const FwdParams& params, cudaStream_t stream);
/// Query rows and keys per tile of the Hopper forward (the planner's arithmetic needs them):
/// 128 keys, or 64 at D 256, where a 64 x 256 output per warpgroup already takes 128 registers
/// per thread and a 128 x 256 Q 64 KB of shared memory.
inline constexpr int kSm90BlockM = 128;
constexpr int sm90_block_n(int head_dim) { return head_dim == 256 ? 64 : 128; }

/// Merges the KV-split partials into out and lse (src/cuda/decode_combine.cu).
void launch_fwd_combine(const FwdParams& params, cudaStream_t stream);

}  // namespace attn::cuda
