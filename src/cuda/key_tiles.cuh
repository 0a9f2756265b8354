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
  int t_begin, t_end;  ///< this split's tiles [t_begin, t_end), empty ones included
  bool no_mask;        ///< without a mask every reachable tile is full: no classification

  __device__ KeyTiles(const detail::MaskEval& eval, int rows_lo, int rows_hi, int split, int n_splits)
      : me(eval), i_lo(rows_lo), i_hi(rows_hi), no_mask(eval.m->is_full()) {
    int k_lo, k_hi;
    me.key_range(i_lo, i_hi, k_lo, k_hi);
    const int t_first = k_lo / BN, t_last = k_hi > k_lo ? (k_hi + BN - 1) / BN : t_first;
    const int per_split = (t_last - t_first + n_splits - 1) / n_splits;
    t_begin = min(t_last, t_first + split * per_split);
    t_end = min(t_last, t_begin + per_split);
  }

  __device__ detail::TileKind kind(int t) const {
    return no_mask ? detail::TileKind::full : me.classify(i_lo, i_hi, t * BN, min(me.seqlen_k, (t + 1) * BN));
  }
  /// The first tile at or after t that is not empty, or t_end.
  __device__ int next(int t) const {
    while (t < t_end && kind(t) == detail::TileKind::empty) ++t;
    return t;
  }
};

}  // namespace attn::cuda
