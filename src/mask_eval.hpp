// Mask evaluation shared by the CPU and CUDA kernels: the element predicate, and the
// classification of a (query rows x key columns) tile as empty, partial or full so kernels
// skip empty tiles and drop per-element masking on full ones.
//
// The float64 reference does NOT use this file: it spells DESIGN.md's rules out on its own,
// so the two can catch each other's mistakes.
#pragma once

#include <cstdint>

#include "problem.hpp"

namespace attn::detail {

enum class TileKind : std::uint8_t { empty, partial, full };

/// The mask of one (sequence, query head).
struct MaskEval {
  const MaskParams* m;
  int seqlen_q;
  int seqlen_k;
  int head;  ///< query head (selects a per-head block layout)

  ATTN_HD int offset() const { return seqlen_k - seqlen_q; }
  ATTN_HD int step() const { return m->dilation + 1; }
  /// Causal, strided and fixed all bound j <= p.
  ATTN_HD bool bounded_right_by_p() const { return m->causal || m->strided > 0 || m->fixed_stride > 0; }

  ATTN_HD bool is_global(int position) const {
    int lo = 0, hi = m->num_global;  // binary search in the sorted positions
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      const int v = m->global_positions[mid];
      if (v == position) return true;
      if (v < position) lo = mid + 1; else hi = mid;
    }
    return false;
  }
  /// True when some global position lies in [a, b].
  ATTN_HD bool any_global_in(int a, int b) const {
    if (m->num_global == 0 || b < a) return false;
    int lo = 0, hi = m->num_global;  // first position >= a
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (m->global_positions[mid] < a) lo = mid + 1; else hi = mid;
    }
    return lo < m->num_global && m->global_positions[lo] <= b;
  }

  ATTN_HD bool layout_allows(int i, int j) const {
    const std::uint8_t* row = m->block_layout + head * m->layout_head_stride +
                              std::int64_t(i / m->block_q) * m->layout_row_stride;
    return row[j / m->block_k] != 0;
  }

  /// Lowest and highest key allowed by the interval parts (causal, window extents) for a
  /// query at absolute position p; lo > hi when none. Ignores sparse parts and globals.
  ATTN_HD void interval(int p, int& lo, int& hi) const {
    lo = 0;
    hi = seqlen_k - 1;
    if (m->window_left >= 0) { const int v = p - m->window_left * step(); lo = v > lo ? v : lo; }
    if (m->window_right >= 0) { const int v = p + m->window_right * step(); hi = v < hi ? v : hi; }
    if (bounded_right_by_p()) hi = p < hi ? p : hi;
  }

  /// The AND of the set parts, without globals.
  ATTN_HD bool base_allows(int i, int j) const {
    const int p = i + offset();
    int lo, hi;
    interval(p, lo, hi);
    if (j < lo || j > hi) return false;
    const int d = p - j;
    if (m->dilation > 0 && d % step() != 0) return false;  // C++ % is 0 exactly when divisible
    if (m->strided > 0 && !(d <= m->strided || d % m->strided == 0)) return false;
    if (m->fixed_stride > 0) {
      const int l = m->fixed_stride;
      if (!(j / l == p / l || j % l >= l - m->fixed_summary)) return false;
    }
    if (m->block_layout != nullptr && !layout_allows(i, j)) return false;
    return true;
  }

  /// The full predicate of DESIGN.md.
  ATTN_HD bool allows(int i, int j) const {
    if (base_allows(i, j)) return true;
    if (m->num_global == 0) return false;
    const int p = i + offset();
    if (m->causal && j > p) return false;
    return is_global(p) || is_global(j);
  }

  /// Keys [lo, hi) that rows [i0, i1) may touch: the union of the interval parts, widened for
  /// global tokens. Kernels visit key tiles in this range and classify each.
  ATTN_HD void key_range(int i0, int i1, int& lo, int& hi) const {
    const int p0 = i0 + offset(), p1 = i1 - 1 + offset();
    int lo0, hi0, lo1, hi1;
    interval(p0, lo0, hi0);
    interval(p1, lo1, hi1);
    lo = lo0;
    hi = hi1 + 1;
    if (m->num_global > 0) {
      lo = 0;
      hi = m->causal ? (p1 + 1 < seqlen_k ? p1 + 1 : seqlen_k) : seqlen_k;
    }
    if (lo < 0) lo = 0;
    if (hi > seqlen_k) hi = seqlen_k;
    if (hi < lo) hi = lo;
  }

  /// Classifies rows [i0, i1) x keys [j0, j1). `empty` and `full` are exact claims; anything
  /// uncertain is `partial`.
  ATTN_HD TileKind classify(int i0, int i1, int j0, int j1) const {
    const int p0 = i0 + offset(), p1 = i1 - 1 + offset();
    TileKind base = classify_base(i0, i1, j0, j1);
    if (base == TileKind::full || m->num_global == 0) return base;
    // Globals can only add allowed elements; causal still bounds them.
    if (m->causal && j0 > p1) return TileKind::empty;
    if (any_global_in(p0, p1) || any_global_in(j0, j1 - 1)) return TileKind::partial;
    return base;
  }

  ATTN_HD TileKind classify_base(int i0, int i1, int j0, int j1) const {
    const int p0 = i0 + offset(), p1 = i1 - 1 + offset();
    int lo0, hi0, lo1, hi1;
    interval(p0, lo0, hi0);
    interval(p1, lo1, hi1);
    // Row bounds grow with p, so row p0 has the lowest bounds and row p1 the highest.
    if (j1 - 1 < lo0 || j0 > hi1 || lo0 > hi1) return TileKind::empty;
    bool full = lo1 <= j0 && hi0 >= j1 - 1 && m->dilation == 0 && m->strided == 0 && m->fixed_stride == 0;
    if (m->block_layout != nullptr) {
      bool any = false, all = true;
      for (int bi = i0 / m->block_q; bi <= (i1 - 1) / m->block_q; ++bi)
        for (int bj = j0 / m->block_k; bj <= (j1 - 1) / m->block_k; ++bj) {
          const bool set = m->block_layout[head * m->layout_head_stride + bi * m->layout_row_stride + bj] != 0;
          any = any || set;
          all = all && set;
        }
      if (!any) return TileKind::empty;
      full = full && all;
    }
    if (m->fixed_stride > 0 && m->strided == 0 && m->dilation == 0) {
      // Fixed sparse empties a tile when every (p, j) pair misses both the block and the summary.
      // Exact test is per element; cheap conservative check: all keys in earlier blocks and
      // none in the summary columns.
      const int l = m->fixed_stride, c = m->fixed_summary;
      if (j1 - 1 < (p0 / l) * l && (j1 - 1) / l == j0 / l && j0 % l >= 0 && (j1 - 1) % l < l - c)
        return TileKind::empty;
    }
    return full ? TileKind::full : TileKind::partial;
  }
};

}  // namespace attn::detail
