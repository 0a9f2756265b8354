// The key tiles one forward CTA visits, shared by the sm80 and sm90 kernels: its split's share
// of the tiles that its query rows may reach (MaskEval::key_range), each classified so that
// empty tiles are skipped and full ones skip the per-element mask.
#pragma once

#include "mask_eval.hpp"

namespace attn::cuda {

/// Causal masks and plain windows allow one key interval per row (MaskEval::interval), which
/// the kernels test unrolled instead of calling the general predicate.
ATTN_HD bool is_interval_mask(const detail::MaskParams& m) {
  return m.dilation == 0 && m.strided == 0 && m.fixed_stride == 0 && m.block_layout == nullptr && m.num_global == 0;
}

/// BN: keys per tile. Rows [i_lo, i_hi) of one (sequence, head) against its Sk keys.
template <int BN>
struct KeyTiles {
  const detail::MaskEval& me;
  int i_lo, i_hi;
  /// This split's tiles [t_begin, t_end), empty ones included, except that t_begin is the
  /// first that is not empty (t_end when none is).
  int t_begin, t_end;
  /// Tiles [full_from, full_to) are full and the others partial, or, where full_from >
  /// full_to, each tile is classified by MaskEval::classify. Without a mask the range covers
  /// every tile; for interval masks (causal, windows) it is computed once here, so that a
  /// tile's kind is two compares: classify re-reads the mask's parameters for every tile, on
  /// the consumers' path between a tile's scores and its softmax (the Hopper forward's trace
  /// measured ~700 clocks a tile). Two ints, no flags: the Hopper consumers have no registers
  /// to spare (spills there cost more than the classification saves).
  int full_from, full_to;

  __device__ KeyTiles(const detail::MaskEval& eval, int rows_lo, int rows_hi, int split, int n_splits)
      : me(eval), i_lo(rows_lo), i_hi(rows_hi) {
    int k_lo, k_hi;
    me.key_range(i_lo, i_hi, k_lo, k_hi);
    const int t_first = k_lo / BN, t_last = k_hi > k_lo ? (k_hi + BN - 1) / BN : t_first;
    const int per_split = (t_last - t_first + n_splits - 1) / n_splits;
    t_begin = min(t_last, t_first + split * per_split);
    t_end = min(t_last, t_begin + per_split);
    if (eval.m->is_full()) {
      full_from = t_begin;
      full_to = t_end;
    } else if (is_interval_mask(*eval.m)) {
      // MaskEval::classify_base on an interval mask, for keys [j0, j1) with j1 = min(Sk, j0 +
      // BN): empty never happens inside key_range; full when the last row's lowest key is <=
      // j0 and the first row's highest is >= j1 - 1.
      int lo_first, hi_first, lo_last, hi_last;
      me.interval(i_lo + me.offset(), lo_first, hi_first);
      me.interval(i_hi - 1 + me.offset(), lo_last, hi_last);
      full_from = (lo_last + BN - 1) / BN;  // lo_last >= 0
      full_to = hi_first >= me.seqlen_k - 1 ? t_last : (hi_first + 1) / BN;
      full_to = max(full_to, full_from);  // an empty range stays a range
    } else {
      full_from = 1;
      full_to = 0;
    }
    t_begin = next(t_begin);
  }

  /// The range another thread computed with the constructor above (the Hopper forward's
  /// producer publishes it with each item).
  __device__ KeyTiles(const detail::MaskEval& eval, int rows_lo, int rows_hi, int first, int end, int from, int to)
      : me(eval), i_lo(rows_lo), i_hi(rows_hi), t_begin(first), t_end(end), full_from(from), full_to(to) {}

  __device__ detail::TileKind kind(int t) const {
    if (full_from <= full_to) return t >= full_from && t < full_to ? detail::TileKind::full : detail::TileKind::partial;
    return me.classify(i_lo, i_hi, t * BN, min(me.seqlen_k, (t + 1) * BN));
  }
  /// The first tile at or after t that is not empty, or t_end.
  __device__ int next(int t) const {
    while (t < t_end && kind(t) == detail::TileKind::empty) ++t;
    return t;
  }
};

}  // namespace attn::cuda
