// Mask work for the CPU kernels' tiles, done once for the G query heads of a kv head.
//
// A kernel tile holds rows (query position, head of the GQA group), position-major:
// row = (i - i0) * group + g for query head head0 + g. These functions are compiled once,
// without ISA flags (tile_mask.cpp), so the kernels of every ISA share them instead of
// inlining MaskEval into each (see kernels_scalar.cpp on why that matters). They run once per
// key tile, so a call costs nothing next to the tile's arithmetic.
#pragma once

#include "mask_eval.hpp"
#include "problem.hpp"

namespace attn::cpu {

struct GroupMask {
  detail::MaskEval eval;  ///< with head = the group's first query head
  int group;              ///< query heads per kv head
  bool per_head;          ///< the block layout differs between heads
  bool intervals_only;    ///< only causal / window parts are set: rows are intervals of keys
};

/// The mask of sequence b (lengths seqlen_q_b, seqlen_k_b) for the query heads of kv head hkv.
GroupMask group_mask(const detail::AttentionProblem& p, int seqlen_q_b, int seqlen_k_b, int hkv);

/// Keys [lo, hi) that query positions [i0, i1) of any head of the group may attend to.
void group_key_range(const GroupMask& gm, int i0, int i1, int& lo, int& hi);

/// Positions [i0, i1) x keys [j0, j1) over all heads of the group: empty only when empty for
/// every head, full only when full for every head.
detail::TileKind classify_group_tile(const GroupMask& gm, int i0, int i1, int j0, int j1);

/// Sets scores of disallowed (row, key) pairs to -inf in a key-major score tile:
/// scores[(j - j0) * ld + row] for j in [j0, j1), rows of positions [i0, i1).
void mask_group_tile(const GroupMask& gm, int i0, int i1, int j0, int j1, float* scores, int ld);

}  // namespace attn::cpu
