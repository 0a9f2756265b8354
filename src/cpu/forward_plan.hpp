// How the CPU forward cuts a problem into work units and lays out its workspace.
//
// A work unit is (sequence b, kv head(s), block of query positions, key split). Its tile has
// rows = (query position, head of the GQA group), so the G query heads of a kv group share
// every K/V tile loaded: decode (one position) still fills G rows. Units run in parallel,
// handed out dynamically (thread_pool.hpp).
//
// Split-KV (flash-decoding): when (b, kv heads, query block) alone gives too few units to keep
// every thread busy, each one's key range is cut into `splits` chunks. A chunk writes its
// normalised partial output (f32) and base-2 log-sum-exp into the workspace; a combine pass
// merges the chunks through their log-sum-exps.
//
// Decode (one query block per sequence, few rows) reads K / V rows of a single kv head that
// sit heads_kv * dim apart; such units take several kv heads (heads_per_unit) and visit them
// tile by tile, so they read whole runs of adjacent rows.
//
// Workspace (64-byte aligned blocks):
//   per thread: k (key_block x d)   key tile in f32
//               v (key_block x dv_pad)
//               s (key_block x rows_pad)  scores, key-major; probabilities in place
//               heads_per_unit x head state:
//                 q_t (d x rows_pad)      query tile, transposed and scaled (rows_pad x d,
//                                         not transposed, when scores_by_dot)
//                 o (rows_pad x dv_pad)   output accumulator
//                 row_max, row_sum, rescale (rows_pad each)
//   split partials (only when splits > 1): o (units x heads_per_unit x rows x dv),
//                                          lse (units x heads_per_unit x rows)
#pragma once

#include <cstddef>
#include <cstdint>

#include "problem.hpp"

namespace attn::cpu {

struct ForwardPlan {
  static constexpr int kKeyBlock = 64;     ///< keys per tile (Bc)
  static constexpr int kTileRows = 64;     ///< target rows per tile: positions x group heads
  static constexpr int kMaxPanel = 32;     ///< widest gemm panel of any ISA (AVX-512: 2 x 16)
  static constexpr int kMinKeysPerSplit = 256;
  /// 8 heads of 128 f16 values are 2 KiB of adjacent K (and V) per token, and 8 head states
  /// (query tile, output) stay in L2 while a unit cycles through them.
  static constexpr int kMaxHeadsPerUnit = 8;

  int group = 1;            ///< G = heads_q / heads_kv
  int block_positions = 1;  ///< query positions per tile (Mq)
  int rows = 1;             ///< block_positions * group
  int rows_pad = 0;         ///< rows rounded up to the gemm panel, or to one vector when that is enough
  int dv_pad = 0;           ///< head_dim_v rounded up to the ISA's gemm panel
  int num_query_blocks = 0; ///< per (sequence, kv head), from the longest sequence
  int splits = 1;           ///< key chunks per (sequence, kv head group, query block)
  int heads_per_unit = 1;   ///< kv heads per unit (divides heads_kv)
  /// Scores by dot products along d instead of the s^T gemm: for tiles of at most half a
  /// vector of rows (decode with small G), where the gemm would mostly multiply padding.
  bool scores_by_dot = false;
  std::int64_t num_units = 0;  ///< batch * heads_kv / heads_per_unit * num_query_blocks * splits
  int threads = 1;

  // Per-thread workspace, offsets in floats: k, v, s and head_state from the thread's slice;
  // q_t, o, row_max, row_sum, rescale from a head's state block (head_floats apart).
  std::size_t k = 0, v = 0, s = 0, head_state = 0, thread_floats = 0;
  std::size_t q_t = 0, o = 0, row_max = 0, row_sum = 0, rescale = 0, head_floats = 0;
  // Split partials, offsets in floats from the workspace start.
  std::size_t partial_o = 0, partial_lse = 0;
  std::size_t workspace_bytes = 0;
};

/// The plan for `threads` threads, a gemm panel of `panel` floats (Kernels::gemm_panel) and
/// vectors of `width` floats (Kernels::vector_width).
ForwardPlan plan_forward(const detail::AttentionProblem& p, int threads, int panel, int width);

}  // namespace attn::cpu
