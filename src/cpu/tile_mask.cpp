#include "cpu/tile_mask.hpp"

#include <limits>

namespace attn::cpu {

using detail::MaskEval;
using detail::TileKind;

GroupMask group_mask(const detail::AttentionProblem& p, int seqlen_q_b, int seqlen_k_b, int hkv) {
  const detail::MaskParams& m = p.mask;
  GroupMask gm{MaskEval{&m, seqlen_q_b, seqlen_k_b, hkv * p.group_size()}, p.group_size(), false, false};
  gm.per_head = m.block_layout != nullptr && m.layout_head_stride != 0 && gm.group > 1;
  gm.intervals_only = m.dilation == 0 && m.strided == 0 && m.fixed_stride == 0 && m.block_layout == nullptr &&
                      m.num_global == 0;
  return gm;
}

// Interval parts and globals do not depend on the head, so neither does the key range.
void group_key_range(const GroupMask& gm, int i0, int i1, int& lo, int& hi) { gm.eval.key_range(i0, i1, lo, hi); }

TileKind classify_group_tile(const GroupMask& gm, int i0, int i1, int j0, int j1) {
  if (!gm.per_head) return gm.eval.classify(i0, i1, j0, j1);
  bool all_empty = true, all_full = true;
  for (int g = 0; g < gm.group; ++g) {
    MaskEval e = gm.eval;
    e.head += g;
    const TileKind k = e.classify(i0, i1, j0, j1);
    all_empty = all_empty && k == TileKind::empty;
    all_full = all_full && k == TileKind::full;
  }
  return all_empty ? TileKind::empty : all_full ? TileKind::full : TileKind::partial;
}

void mask_group_tile(const GroupMask& gm, int i0, int i1, int j0, int j1, float* scores, int ld) {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  const int G = gm.group;
  for (int i = i0; i < i1; ++i) {
    const int row0 = (i - i0) * G;
    if (gm.intervals_only) {
      // Causal / window: one interval per position, shared by the group's heads.
      int lo, hi;
      gm.eval.interval(i + gm.eval.offset(), lo, hi);
      for (int j = j0; j < j1; ++j)
        if (j < lo || j > hi)
          for (int g = 0; g < G; ++g) scores[std::ptrdiff_t(j - j0) * ld + row0 + g] = kMinusInf;
      continue;
    }
    for (int g = 0; g < (gm.per_head ? G : 1); ++g) {
      MaskEval e = gm.eval;
      e.head += g;
      for (int j = j0; j < j1; ++j) {
        if (e.allows(i, j)) continue;
        float* s = scores + std::ptrdiff_t(j - j0) * ld + row0;
        if (gm.per_head)
          s[g] = kMinusInf;
        else
          for (int h = 0; h < G; ++h) s[h] = kMinusInf;
      }
    }
  }
}

}  // namespace attn::cpu
