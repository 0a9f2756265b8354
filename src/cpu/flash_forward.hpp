// The CPU forward: FlashAttention-2's tiled online softmax, one template over the ISA's Vec.
//
// Shape letters: G query heads per kv head, d / dv head dims, Bc keys per tile (64),
// R rows per tile = query positions x G (position-major), Rp = R padded to the gemm panel.
//
// Per work unit (forward_plan.hpp), per key tile in the unit's key range and per kv head of
// the unit (decode units take several):
//   s^T (Bc x Rp) = K_tile (Bc x d) · q_t (d x Rp)      -- gemm, K rows used as they are
//                                                       (dot products when R is tiny: decode)
//   soft-cap, mask (partial tiles only), then per row (a column of s^T, so the SIMD lanes run
//   across rows and the softmax needs no horizontal reductions):
//     m' = max(m, max_j s), alpha = 2^(m - m'), p = 2^(s - m'), l = alpha l + sum_j p
//   o (R x dv) = alpha o + p · V_tile                    -- gemm reading p^T transposed
// Decode tiles (scores_by_dot) take run_tiles_decode instead: no f32 K / V tile copies, several
// keys per dot pass, o in registers across a step of keys, the next step's lines prefetched
// a few at a time (see "decode tiles, v4" below and docs/PERF-cpu-decode.md).
// Scores are in base 2 (log2(e) folded into the query scale, so exp is exp2). Computing s^T
// instead of s avoids transposing every K tile: only the query tile is transposed, once per
// unit, and it is reused by every key tile.
//
// Included only from kernels.inc, inside namespace attn::cpu::ATTN_CPU_ISA.
#pragma once

#ifndef ATTN_CPU_ISA
#error "flash_forward.hpp is included from a kernels_<isa>.cpp that defines ATTN_CPU_ISA"
#endif

#include <cstddef>
#include <cstdint>
#include <limits>

#include "attn/half.hpp"
#include "cpu/forward_plan.hpp"
#include "cpu/thread_pool.hpp"
#include "cpu/tile_mask.hpp"
#include "problem.hpp"

namespace attn::cpu::ATTN_CPU_ISA {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;
inline constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

/// dst[0..n) = scale * src[0..n) in f32.
template <class V, class T>
inline void load_row(const T* src, float* dst, int n, float scale) {
  const V s = V::set1(scale);
  int e = 0;
  for (; e + V::width <= n; e += V::width) (V::load(src + e) * s).store(dst + e);
  if (e < n) (V::load_n(src + e, n - e) * s).store_n(dst + e, n - e);
}

/// dst[0..n) = scale * src[0..n) in the storage type (round to nearest even).
template <class V, class T>
inline void store_row(const float* src, T* dst, int n, float scale) {
  const V s = V::set1(scale);
  int e = 0;
  for (; e + V::width <= n; e += V::width) (V::load(src + e) * s).store(dst + e);
  if (e < n) (V::load_n(src + e, n - e) * s).store_n(dst + e, n - e);
}

template <class V>
inline void fill(float* dst, std::size_t n, float value) {
  const V x = V::set1(value);
  std::size_t e = 0;
  for (; e + V::width <= n; e += V::width) x.store(dst + e);
  for (; e < n; ++e) dst[e] = value;
}

/// tanh by its odd Taylor series near 0 and (1 - t) / (1 + t), t = e^(-2|x|), elsewhere; the
/// switch at 0.25 keeps the error near float rounding on both sides (series remainder < 1e-10).
template <class V>
inline V tanh_approx(V x) {
  const V ax = V::abs(x);
  const V t = V::exp2(ax * V::set1(-2.0f * kLog2e));
  const V far = (V::set1(1.0f) - t) / (V::set1(1.0f) + t);
  const V x2 = x * x;
  V series = V::set1(-1382.0f / 155925.0f);
  series = V::fma(series, x2, V::set1(62.0f / 2835.0f));
  series = V::fma(series, x2, V::set1(-17.0f / 315.0f));
  series = V::fma(series, x2, V::set1(2.0f / 15.0f));
  series = V::fma(series, x2, V::set1(-1.0f / 3.0f));
  series = V::fma(series, x2, V::set1(1.0f));
  const V near = ax * series;
  return V::copysign(V::select_less(ax, V::set1(0.25f), near, far), x);
}

/// One work unit: its place in the problem and the shared K / V / score tiles of its thread.
struct ForwardUnit {
  int b, hkv0, heads;  ///< sequence, first kv head, kv heads in the unit
  int i0, i1;          ///< query positions [i0, i1)
  int seqlen_q, seqlen_k;
  int rows;            ///< (i1 - i0) * G, per kv head
  float* k;
  float* v;
  float* s;
  float* head_state;   ///< heads x ForwardPlan::head_floats
};

/// The running state of one kv head of a unit: query tile, output and softmax statistics.
struct HeadTile {
  int hkv;
  float* q_t;
  float* o;
  float* row_max;
  float* row_sum;
  float* rescale;
};

template <class V, class T>
struct FlashForward {
  const detail::AttentionProblem& p;
  const ForwardPlan& plan;
  std::byte* workspace;

  HeadTile head_tile(const ForwardUnit& u, int index) const {
    float* base = u.head_state + std::size_t(index) * plan.head_floats;
    return {u.hkv0 + index, base + plan.q_t, base + plan.o, base + plan.row_max, base + plan.row_sum,
            base + plan.rescale};
  }

  /// q_t(e, row) = q(row)[e] * scale, with zero columns for padding rows; or, for
  /// scores_by_dot, the rows as they are: q_t[row * d + e].
  void load_query_tile(const ForwardUnit& u, const HeadTile& h, float query_scale) const {
    const int G = plan.group, d = p.head_dim, ld = plan.rows_pad;
    const T* q = static_cast<const T*>(p.q);
    float row[detail::kCpuMaxHeadDim];
    for (int i = u.i0; i < u.i1; ++i)
      for (int g = 0; g < G; ++g) {
        const int r = (i - u.i0) * G + g;
        const T* src = q + p.q_layout.offset(u.b, i, h.hkv * G + g);
        if (plan.scores_by_dot) {
          load_row<V>(src, h.q_t + std::ptrdiff_t(r) * d, d, query_scale);
          continue;
        }
        load_row<V>(src, row, d, query_scale);
        for (int e = 0; e < d; ++e) h.q_t[std::ptrdiff_t(e) * ld + r] = row[e];
      }
    if (plan.scores_by_dot) return;
    for (int e = 0; e < d; ++e)
      for (int r = u.rows; r < ld; ++r) h.q_t[std::ptrdiff_t(e) * ld + r] = 0.0f;
  }

  /// s^T(j, row) = k_j . q_row for a tile of few rows: one vector of products per (key, row)
  /// and a horizontal sum, instead of a gemm whose panel would be mostly padding. Padding
  /// rows get 0 so the softmax never meets stale workspace values.
  void scores_by_dot(const ForwardUnit& u, const HeadTile& h, int keys) const {
    const int d = p.head_dim, ld = plan.rows_pad;
    for (int j = 0; j < keys; ++j) {
      const float* kj = u.k + std::ptrdiff_t(j) * d;
      float* sj = u.s + std::ptrdiff_t(j) * ld;
      for (int r = 0; r < u.rows; ++r) {
        const float* qr = h.q_t + std::ptrdiff_t(r) * d;
        V acc0 = V::zero(), acc1 = V::zero();  // two chains: FMA latency, not throughput, bounds one
        int e = 0;
        for (; e + 2 * V::width <= d; e += 2 * V::width) {
          acc0 = V::fma(V::load(kj + e), V::load(qr + e), acc0);
          acc1 = V::fma(V::load(kj + e + V::width), V::load(qr + e + V::width), acc1);
        }
        for (; e < d; e += V::width) {
          const int n = d - e < V::width ? d - e : V::width;
          acc0 = V::fma(V::load_n(kj + e, n), V::load_n(qr + e, n), acc0);
        }
        sj[r] = (acc0 + acc1).reduce_add();
      }
      for (int r = u.rows; r < ld; ++r) sj[r] = 0.0f;
    }
  }

  /// K rows [j0, j1) of kv head hkv into k (Bc x d), V rows into v (Bc x dv_pad, zero padding
  /// columns). Reads through the TokenLayout, so padded, packed and paged caches look the same.
  /// Rows sit heads * dim apart (a page or more for big models), so hardware prefetchers do
  /// not follow them: each row loaded also asks for the row one tile ahead (below
  /// `prefetch_end`), so the next tile's misses overlap this tile's arithmetic.
  void load_kv_tile(const ForwardUnit& u, int hkv, int j0, int j1, int prefetch_end) const {
    constexpr int kLine = 64, Bc = ForwardPlan::kKeyBlock;
    const int d = p.head_dim, dv = p.head_dim_v, dvp = plan.dv_pad;
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    for (int j = j0; j < j1; ++j) {
      if (j + Bc < prefetch_end) {
        const char* krow = reinterpret_cast<const char*>(k + p.k_layout.offset(u.b, j + Bc, hkv));
        const char* vrow = reinterpret_cast<const char*>(v + p.v_layout.offset(u.b, j + Bc, hkv));
        for (int e = 0; e < d * int(sizeof(T)); e += kLine) __builtin_prefetch(krow + e);
        for (int e = 0; e < dv * int(sizeof(T)); e += kLine) __builtin_prefetch(vrow + e);
      }
      load_row<V>(k + p.k_layout.offset(u.b, j, hkv), u.k + std::ptrdiff_t(j - j0) * d, d, 1.0f);
      float* vrow = u.v + std::ptrdiff_t(j - j0) * dvp;
      load_row<V>(v + p.v_layout.offset(u.b, j, hkv), vrow, dv, 1.0f);
      for (int e = dv; e < dvp; ++e) vrow[e] = 0.0f;
    }
  }

  // ---- decode tiles, v4 ------------------------------------------------------------------
  // A decode unit has N = u.rows <= width / 2 rows per kv head (the G query heads of one
  // position, or a few positions). v4 (docs/PERF-cpu-decode.md) does the arithmetic with as
  // few loads and horizontal sums as the registers allow:
  //   scores: KB = width / Np keys at a time (Np = N rounded up to a power of two), one
  //           accumulator per (key, row), each K vector converted once for the N rows, the
  //           width dot products finished by one reduce_add_each; the head's score tile is
  //           compact: s[(j - j0) * Np + r], so a vector holds KB keys' scores.
  //   softmax: on those compact vectors (half the exp2 of a row-padded tile at N = 4).
  //   P V: o held in registers, two vectors of N rows at a time, across every key of the
  //           step, with the rescale folded into its load: o is loaded and stored once per step.
  // K / V rows are found through per-step pointer tables built one block-table lookup per page,
  // so paged and contiguous caches share the inner loops.

  /// Keys per decode step: the step's K and V (heads x 256 B each per key at D 128 f16: 64 KiB
  /// apiece) and the next step's K, prefetched during this one, sit in L2 together.
  static constexpr int kDecodeKeys = 32;

  static constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

  /// rows[j - j0] = base + layout.offset(b, j, h) for j in [j0, j1): one block-table lookup
  /// (and one division) per page instead of per key.
  static void row_pointers(const detail::TokenLayout& l, const T* base, int b, int j0, int j1, int h, const T** rows) {
    for (int j = j0; j < j1;) {
      const int run = l.block_table != nullptr ? l.page_size - j % l.page_size : j1 - j;
      const int n = run < j1 - j ? run : j1 - j;
      const T* r = base + l.offset(b, j, h);
      for (int c = 0; c < n; ++c) rows[j - j0 + c] = r + std::ptrdiff_t(c) * l.token_stride;
      j += n;
    }
  }

  /// s[c * Np + r] = k_c . q_r for the KB = width / Np keys at keys[c] + offset, rows r < N
  /// (rows N..Np get 0).
  template <int N, int Np>
  void dot_keys(const T* const* keys, std::ptrdiff_t offset, const float* q, float* s) const {
    constexpr int W = V::width, KB = W / Np;
    const int d = p.head_dim;
    V acc[W];
    for (int a = 0; a < W; ++a) acc[a] = V::zero();
    int e = 0;
    for (; e + W <= d; e += W) {
      V qv[N];
      for (int r = 0; r < N; ++r) qv[r] = V::load(q + std::ptrdiff_t(r) * d + e);
#if defined(__AVX2__)
      // The N q vectors stay in registers for the KB keys: GCC otherwise folds each load into
      // every key's fma as a memory operand, 10 loads per 8 fma at N = 4 (two 256-bit loads a
      // cycle on Zen 3, so the loop was bound by loads at ~1.6 fma a cycle). Same-process A/B
      // in cache (B1 ctx256, 1 thread): 0.094 / 0.126 ms against 0.100 / 0.133.
      if constexpr (V::width == 8)
        for (int r = 0; r < N; ++r) asm("" : "+x"(qv[r].v));
#endif
      for (int c = 0; c < KB; ++c) {
        const V kv = V::load(keys[c] + offset + e);
        for (int r = 0; r < N; ++r) acc[c * Np + r] = V::fma(kv, qv[r], acc[c * Np + r]);
      }
    }
    if (e < d) {
      const int m = d - e;
      for (int c = 0; c < KB; ++c) {
        const V kv = V::load_n(keys[c] + offset + e, m);
        for (int r = 0; r < N; ++r)
          acc[c * Np + r] = V::fma(kv, V::load_n(q + std::ptrdiff_t(r) * d + e, m), acc[c * Np + r]);
      }
    }
    V::reduce_add_each(acc).store(s);
  }

  /// The online softmax on a head's compact score tile (n = keys_pad * Np floats, whole
  /// vectors): row r's lanes are r, r + Np, ...; the per-row statistics go through a lane
  /// buffer once per step, the exponentials stay vectors.
  template <int Np>
  void decode_softmax(const HeadTile& h, int n, float* s) const {
    constexpr int W = V::width;
    V tile_max = V::set1(kMinusInf);
    for (int e = 0; e < n; e += W) tile_max = V::max(tile_max, V::load(s + e));
    float lanes[W], old_max[W], reference[W];
    tile_max.store(lanes);
    float new_max[Np];
    for (int r = 0; r < Np; ++r) {
      float m = h.row_max[r];
      for (int l = r; l < W; l += Np) m = lanes[l] > m ? lanes[l] : m;
      new_max[r] = m;
    }
    // A row still at -inf uses 0 as reference: 2^(-inf - 0) = 0, never NaN.
    for (int l = 0; l < W; ++l) {
      old_max[l] = h.row_max[l % Np];
      reference[l] = new_max[l % Np] == kMinusInf ? 0.0f : new_max[l % Np];
    }
    const V ref = V::load(reference);
    V sum = V::zero();
    for (int e = 0; e < n; e += W) {
      const V prob = V::exp2(V::load(s + e) - ref);
      prob.store(s + e);
      sum = sum + prob;
    }
    V::exp2(V::load(old_max) - ref).store(old_max);  // alpha per lane
    sum.store(lanes);
    for (int r = 0; r < Np; ++r) {
      float total = 0.0f;
      for (int l = r; l < W; l += Np) total += lanes[l];
      h.row_sum[r] = old_max[r] * h.row_sum[r] + total;
      h.row_max[r] = new_max[r];
      h.rescale[r] = old_max[r];
    }
  }

  /// o(r, e .. e + E vectors) = rescale(r) o(r, ...) + sum_j p(j, r) v_j(...) over `keys` keys;
  /// the last chunk of a head dim that is not a multiple of the width reads m < W values.
  template <int N, int Np, int E>
  void pv_chunk(const T* const* vrows, std::ptrdiff_t offset, int keys, const float* prob, const HeadTile& h, int e,
                int m) const {
    constexpr int W = V::width;
    const int dvp = plan.dv_pad;
    V acc[N][E];
    for (int r = 0; r < N; ++r) {
      const V alpha = V::set1(h.rescale[r]);
      for (int x = 0; x < E; ++x) acc[r][x] = V::load(h.o + std::ptrdiff_t(r) * dvp + e + x * W) * alpha;
    }
    for (int j = 0; j < keys; ++j) {
      const T* vj = vrows[j] + offset + e;
      V vv[E];
      for (int x = 0; x < E; ++x) vv[x] = m == W ? V::load(vj + x * W) : V::load_n(vj + x * W, m);
      for (int r = 0; r < N; ++r) {
        const V pr = V::set1(prob[std::ptrdiff_t(j) * Np + r]);
        for (int x = 0; x < E; ++x) acc[r][x] = V::fma(pr, vv[x], acc[r][x]);
      }
    }
    for (int r = 0; r < N; ++r)
      for (int x = 0; x < E; ++x) acc[r][x].store(h.o + std::ptrdiff_t(r) * dvp + e + x * W);
  }

  /// decode_pv for one head, `lines` of `ahead` requested before each chunk.
  template <int N, int Np, class Prefetch>
  void decode_pv(const T* const* vrows, std::ptrdiff_t offset, int keys, const float* prob, const HeadTile& h,
                 Prefetch& ahead, int lines) const {
    constexpr int W = V::width;
    const int dv = p.head_dim_v;
    int e = 0;
    for (; e + 2 * W <= dv; e += 2 * W) {
      ahead.issue(lines);
      pv_chunk<N, Np, 2>(vrows, offset, keys, prob, h, e, W);
    }
    for (; e < dv; e += W) {
      ahead.issue(lines / 2);
      pv_chunk<N, Np, 1>(vrows, offset, keys, prob, h, e, dv - e < W ? dv - e : W);
    }
  }

  /// Requests the cache lines of two lists of row runs a few lines per issue(n), in address
  /// order, so the requests spread over the step's arithmetic: a burst of them fills the
  /// core's miss buffers and stalls it (docs/PERF-cpu-decode.md, v4). The lines of one call
  /// mostly lie in one row run: they go out in one tight loop, with the row / section
  /// bookkeeping once per run rather than once per line (v5: ~12% less time in cache).
  struct LinePrefetch {
    const T* const* rows[2] = {nullptr, nullptr};
    int count[2] = {0, 0}, lines[2] = {0, 0};
    int section = 0, row = 0, line = 0;
    int total() const { return count[0] * lines[0] + count[1] * lines[1]; }
    void issue(int n) {
      while (n > 0 && section < 2) {
        if (row >= count[section]) {
          ++section;
          row = line = 0;
          continue;
        }
        const int take = lines[section] - line < n ? lines[section] - line : n;
        const char* a = reinterpret_cast<const char*>(rows[section][row]) + 64 * line;
        for (int x = 0; x < take; ++x) __builtin_prefetch(a + 64 * x, 0, 2);
        n -= take;
        line += take;
        if (line == lines[section]) line = 0, ++row;
      }
    }
  };

  template <int N>
  void run_tiles_decode(const ForwardUnit& u, int lo, int hi, int tile_begin, int tile_end) const {
    constexpr int Np = pow2_at_least(N), W = V::width, KB = W / Np, S = kDecodeKeys;
    constexpr int Bc = ForwardPlan::kKeyBlock;
    const int d = p.head_dim, dv = p.head_dim_v;
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    // The unit's heads are adjacent in every cache layout: one run of heads * dim values per
    // key. Other head strides prefetch the first head's row only.
    const int k_run = p.k_layout.head_stride == d ? u.heads * d : d;
    const int v_run = p.v_layout.head_stride == dv ? u.heads * dv : dv;
    const int k_lines = (k_run * int(sizeof(T)) + 63) / 64, v_lines = (v_run * int(sizeof(T)) + 63) / 64;
    const int first = lo / Bc * Bc;
    const int begin = first + tile_begin * Bc > lo ? first + tile_begin * Bc : lo;
    const int end = first + tile_end * Bc < hi ? first + tile_end * Bc : hi;
    HeadTile heads[ForwardPlan::kMaxHeadsPerUnit];
    GroupMask masks[ForwardPlan::kMaxHeadsPerUnit];
    detail::TileKind kinds[ForwardPlan::kMaxHeadsPerUnit];
    for (int index = 0; index < u.heads; ++index) {
      heads[index] = head_tile(u, index);
      masks[index] = group_mask(p, u.seqlen_q, u.seqlen_k, heads[index].hkv);
    }
    // Row tables of this step and the next, whose lines are prefetched during this one.
    const T* krows[2][S + W];
    const T* vrows[2][S];
    auto step_end = [&](int j0) { return (j0 / S + 1) * S < end ? (j0 / S + 1) * S : end; };
    if (begin < end) {
      row_pointers(p.k_layout, k, u.b, begin, step_end(begin), u.hkv0, krows[0]);
      row_pointers(p.v_layout, v, u.b, begin, step_end(begin), u.hkv0, vrows[0]);
    }
    const int pv_chunks = (dv + 2 * W - 1) / (2 * W);
    int cur = 0;
    for (int j0 = begin; j0 < end; j0 = step_end(j0), cur ^= 1) {
      const int j1 = step_end(j0), keys = j1 - j0, keys_pad = (keys + KB - 1) / KB * KB;
      const int n0 = j1, n1 = n0 < end ? step_end(n0) : n0;
      if (n0 < n1) {
        row_pointers(p.k_layout, k, u.b, n0, n1, u.hkv0, krows[cur ^ 1]);
        row_pointers(p.v_layout, v, u.b, n0, n1, u.hkv0, vrows[cur ^ 1]);
      }
      bool any = false;
      for (int index = 0; index < u.heads; ++index) {
        kinds[index] = classify_group_tile(masks[index], u.i0, u.i1, j0, j1);
        any = any || kinds[index] != detail::TileKind::empty;
      }
      if (!any) continue;
      const T** kr = krows[cur];
      for (int j = keys; j < keys_pad; ++j) kr[j] = kr[keys - 1];  // padding keys: real rows, scores -inf below
      // The next step's K and V lines, requested a few at a time between this step's calls,
      // in proportion to each call's fma: a score call does KB keys x N rows x d, a P V chunk
      // all the step's keys x N rows x 2 vectors.
      LinePrefetch ahead;
      ahead.rows[0] = krows[cur ^ 1], ahead.count[0] = n1 - n0, ahead.lines[0] = k_lines;
      ahead.rows[1] = vrows[cur ^ 1], ahead.count[1] = n1 - n0, ahead.lines[1] = v_lines;
      const double score_fma = double(KB) * ((d + W - 1) / W), pv_fma = 2.0 * keys;
      const double per_fma = ahead.total() / (u.heads * (keys_pad / KB * score_fma + pv_chunks * pv_fma));
      const int score_lines = int(per_fma * score_fma) + 1, pv_lines = int(per_fma * pv_fma) + 1;
      // Scores, keys outer and heads inner (each key's heads are one run).
      for (int j = 0; j < keys_pad; j += KB)
        for (int index = 0; index < u.heads; ++index) {
          ahead.issue(score_lines);
          if (kinds[index] != detail::TileKind::empty)
            dot_keys<N, Np>(kr + j, std::ptrdiff_t(index) * p.k_layout.head_stride, heads[index].q_t,
                            u.s + std::ptrdiff_t(index) * Bc * plan.rows_pad + std::ptrdiff_t(j) * Np);
        }
      for (int index = 0; index < u.heads; ++index) {
        if (kinds[index] == detail::TileKind::empty) continue;
        float* s = u.s + std::ptrdiff_t(index) * Bc * plan.rows_pad;
        if (p.softcap > 0.0f) soft_cap_n(s, keys_pad * Np);
        if (kinds[index] == detail::TileKind::partial) mask_group_tile(masks[index], u.i0, u.i1, j0, j1, s, Np);
        for (int e = keys * Np; e < keys_pad * Np; ++e) s[e] = kMinusInf;
        decode_softmax<Np>(heads[index], keys_pad * Np, s);
        decode_pv<N, Np>(vrows[cur], std::ptrdiff_t(index) * p.v_layout.head_stride, keys, s, heads[index], ahead,
                         pv_lines);
      }
    }
  }

  /// run_tiles for decode tiles: u.rows as a constant.
  void run_tiles_decode_rows(const ForwardUnit& u, int lo, int hi, int tile_begin, int tile_end) const {
    if constexpr (V::width >= 2) {
      switch (u.rows) {
        case 1: return run_tiles_decode<1>(u, lo, hi, tile_begin, tile_end);
        case 2: return run_tiles_decode<2>(u, lo, hi, tile_begin, tile_end);
        case 3: if constexpr (V::width >= 8) return run_tiles_decode<3>(u, lo, hi, tile_begin, tile_end); break;
        case 4: if constexpr (V::width >= 8) return run_tiles_decode<4>(u, lo, hi, tile_begin, tile_end); break;
        case 5: if constexpr (V::width >= 16) return run_tiles_decode<5>(u, lo, hi, tile_begin, tile_end); break;
        case 6: if constexpr (V::width >= 16) return run_tiles_decode<6>(u, lo, hi, tile_begin, tile_end); break;
        case 7: if constexpr (V::width >= 16) return run_tiles_decode<7>(u, lo, hi, tile_begin, tile_end); break;
        case 8: if constexpr (V::width >= 16) return run_tiles_decode<8>(u, lo, hi, tile_begin, tile_end); break;
        default: break;
      }
    }
    run_tiles(u, lo, hi, tile_begin, tile_end);  // not reached: scores_by_dot means rows <= width / 2
  }

  /// s = cap * log2(e) * tanh(s / cap) on n floats (a multiple of the width).
  void soft_cap_n(float* s, int n) const {
    const V inv_cap = V::set1(1.0f / p.softcap), cap = V::set1(p.softcap * kLog2e);
    for (int e = 0; e < n; e += V::width) (cap * tanh_approx<V>(V::load(s + e) * inv_cap)).store(s + e);
  }

  /// s = cap * log2(e) * tanh(s / cap) on the first `keys` rows of the score tile.
  void soft_cap(float* s, int keys) const { soft_cap_n(s, keys * plan.rows_pad); }

  /// Online softmax over one score tile (keys x Rp, key-major), probabilities written in place.
  /// A row whose maximum is still -inf uses 0 as its reference, so 2^(-inf - ref) = 0 and
  /// never NaN; its alpha is 0 too (its o and l are 0 anyway).
  void online_softmax(const ForwardUnit& /*u*/, const HeadTile& h, int keys, float* s) const {
    const int ld = plan.rows_pad;
    const V minus_inf = V::set1(kMinusInf), zero = V::zero();
    for (int c = 0; c < ld; c += V::width) {
      V tile_max = minus_inf;
      for (int j = 0; j < keys; ++j) tile_max = V::max(tile_max, V::load(s + std::ptrdiff_t(j) * ld + c));
      const V old_max = V::load(h.row_max + c);
      const V new_max = V::max(old_max, tile_max);
      const V reference = V::select_equal(new_max, minus_inf, zero, new_max);
      const V alpha = V::exp2(old_max - reference);
      V sum = zero;
      for (int j = 0; j < keys; ++j) {
        float* sj = s + std::ptrdiff_t(j) * ld + c;
        const V prob = V::exp2(V::load(sj) - reference);
        prob.store(sj);
        sum = sum + prob;
      }
      V::fma(V::load(h.row_sum + c), alpha, sum).store(h.row_sum + c);
      new_max.store(h.row_max + c);
      alpha.store(h.rescale + c);
    }
  }

  /// o(row) *= rescale(row); skipped for rows whose maximum did not move.
  void rescale_output(const ForwardUnit& u, const HeadTile& h) const {
    const int dvp = plan.dv_pad;
    for (int r = 0; r < u.rows; ++r) {
      const float alpha = h.rescale[r];
      if (alpha == 1.0f) continue;
      float* o = h.o + std::ptrdiff_t(r) * dvp;
      const V a = V::set1(alpha);
      for (int e = 0; e < dvp; e += V::width) (V::load(o + e) * a).store(o + e);
    }
  }

  /// Runs key tiles [tile_begin, tile_end) of the unit's range for every kv head of the unit,
  /// leaving o unnormalised and row_max / row_sum in base 2. Heads are the inner loop so the
  /// unit reads whole tokens (all its heads' rows, adjacent in memory) tile after tile.
  void run_tiles(const ForwardUnit& u, int lo, int hi, int tile_begin, int tile_end) const {
    constexpr int Bc = ForwardPlan::kKeyBlock;
    const int d = p.head_dim, rp = plan.rows_pad, dvp = plan.dv_pad;
    const int first = lo / Bc * Bc;  // tiles aligned to multiples of Bc (matches block layouts)
    const int range_end = first + tile_end * Bc < hi ? first + tile_end * Bc : hi;
    for (int t = tile_begin; t < tile_end; ++t) {
      const int j0 = first + t * Bc > lo ? first + t * Bc : lo;
      const int j1 = first + (t + 1) * Bc < hi ? first + (t + 1) * Bc : hi;
      if (j0 >= j1) continue;
      const int keys = j1 - j0;
      for (int index = 0; index < u.heads; ++index) {
        const HeadTile h = head_tile(u, index);
        const GroupMask gm = group_mask(p, u.seqlen_q, u.seqlen_k, h.hkv);
        const detail::TileKind kind = classify_group_tile(gm, u.i0, u.i1, j0, j1);
        if (kind == detail::TileKind::empty) continue;
        load_kv_tile(u, h.hkv, j0, j1, range_end);
        if (plan.scores_by_dot)
          scores_by_dot(u, h, keys);
        else if (rp % kPanel<V> == 0)
          gemm<V, false>(keys, rp, d, u.k, d, h.q_t, rp, u.s, rp);
        else
          gemm<V, false, false, 1>(keys, rp, d, u.k, d, h.q_t, rp, u.s, rp);
        if (p.softcap > 0.0f) soft_cap(u.s, keys);
        if (kind == detail::TileKind::partial) mask_group_tile(gm, u.i0, u.i1, j0, j1, u.s, rp);
        online_softmax(u, h, keys, u.s);
        rescale_output(u, h);
        gemm<V, true, true>(u.rows, dvp, keys, u.s, rp, u.v, dvp, h.o, dvp);
      }
    }
  }

  /// Final output and lse of one row: o / l, and (m + log2 l) * ln 2; a row that attended to
  /// nothing (l = 0) gets 0 and -inf.
  void write_row(const ForwardUnit& u, const HeadTile& h, int r) const {
    const int G = plan.group;
    const int i = u.i0 + r / G, head = h.hkv * G + r % G;
    const float l = h.row_sum[r];
    T* out = static_cast<T*>(p.out) + p.out_layout.offset(u.b, i, head);
    store_row<V>(h.o + std::ptrdiff_t(r) * plan.dv_pad, out, p.head_dim_v, l > 0.0f ? 1.0f / l : 0.0f);
    if (p.lse != nullptr)
      p.lse[p.lse_layout.offset(u.b, i, head)] = l > 0.0f ? (h.row_max[r] + log2_of(l)) * kLn2 : kMinusInf;
  }

  /// log2 for the finalisation (a few calls per row): exponent bits plus a short series,
  /// accurate to float rounding, written here so no libm code is shared across ISAs.
  static float log2_of(float x) {
    std::uint32_t bits;
    __builtin_memcpy(&bits, &x, 4);
    int exponent = int((bits >> 23) & 0xff) - 127;
    bits = (bits & 0x007fffffu) | 0x3f800000u;  // mantissa in [1, 2)
    float m;
    __builtin_memcpy(&m, &bits, 4);
    if (m > 1.41421356f) {
      m *= 0.5f;
      ++exponent;
    }
    // log2(m) = 2 atanh(z) / ln 2 with z = (m - 1) / (m + 1), |z| < 0.172.
    const float z = (m - 1.0f) / (m + 1.0f), z2 = z * z;
    const float series = 1.0f + z2 * (1.0f / 3 + z2 * (1.0f / 5 + z2 * (1.0f / 7 + z2 * (1.0f / 9))));
    return float(exponent) + 2.0f * kLog2e * z * series;
  }

  /// Base index = (b, kv head group, query block), query block fastest.
  ForwardUnit unit_at(std::int64_t base_index, int thread) const {
    ForwardUnit u{};
    const int nqb = plan.num_query_blocks, head_groups = p.heads_kv / plan.heads_per_unit;
    const int qb = int(base_index % nqb);
    u.heads = plan.heads_per_unit;
    u.hkv0 = int(base_index / nqb % head_groups) * u.heads;
    u.b = int(base_index / nqb / head_groups);
    u.seqlen_q = p.seqlen_q_of(u.b);
    u.seqlen_k = p.seqlen_k_of(u.b);
    u.i0 = qb * plan.block_positions;
    u.i1 = u.i0 + plan.block_positions < u.seqlen_q ? u.i0 + plan.block_positions : u.seqlen_q;
    u.rows = u.i1 > u.i0 ? (u.i1 - u.i0) * plan.group : 0;
    float* ws = reinterpret_cast<float*>(workspace) + std::size_t(thread) * plan.thread_floats;
    u.k = ws + plan.k;
    u.v = ws + plan.v;
    u.s = ws + plan.s;
    u.head_state = ws + plan.head_state;
    return u;
  }

  /// Row r of kv head `index` of a unit in the split partials.
  std::size_t partial_row(std::int64_t unit_index, int index, int r) const {
    return (std::size_t(unit_index) * plan.heads_per_unit + std::size_t(index)) * plan.rows + std::size_t(r);
  }

  /// One work unit: base index (b, kv head group, query block) and key chunk `split`.
  void run_unit(std::int64_t unit_index, int thread) const {
    const std::int64_t base_index = unit_index / plan.splits;
    const int split = int(unit_index % plan.splits);
    const ForwardUnit u = unit_at(base_index, thread);
    if (u.rows == 0) return;  // query block past this sequence's end
    // The key range depends on the interval parts and globals only, not on the head.
    int lo = 0, hi = 0;
    if (u.seqlen_k > 0) group_key_range(group_mask(p, u.seqlen_q, u.seqlen_k, u.hkv0), u.i0, u.i1, lo, hi);
    constexpr int Bc = ForwardPlan::kKeyBlock;
    const int num_tiles = hi > lo ? (hi - 1) / Bc - lo / Bc + 1 : 0;
    const int tile_begin = int(std::int64_t(num_tiles) * split / plan.splits);
    const int tile_end = int(std::int64_t(num_tiles) * (split + 1) / plan.splits);

    // Base 2 scores: log2(e) joins the scale unless the soft-cap needs the natural scores.
    const float query_scale = p.softcap > 0.0f ? p.scale : p.scale * kLog2e;
    for (int index = 0; index < u.heads; ++index) {
      const HeadTile h = head_tile(u, index);
      fill<V>(h.o, std::size_t(plan.rows_pad) * plan.dv_pad, 0.0f);
      fill<V>(h.row_max, std::size_t(plan.rows_pad), kMinusInf);
      fill<V>(h.row_sum, std::size_t(plan.rows_pad), 0.0f);
      if (tile_begin < tile_end) load_query_tile(u, h, query_scale);
    }
    if (tile_begin < tile_end) {
      if (plan.scores_by_dot)
        run_tiles_decode_rows(u, lo, hi, tile_begin, tile_end);
      else
        run_tiles(u, lo, hi, tile_begin, tile_end);
    }

    const int dv = p.head_dim_v;
    float* partial_o = reinterpret_cast<float*>(workspace) + plan.partial_o;
    float* partial_lse = reinterpret_cast<float*>(workspace) + plan.partial_lse;
    for (int index = 0; index < u.heads; ++index) {
      const HeadTile h = head_tile(u, index);
      for (int r = 0; r < u.rows; ++r) {
        if (plan.splits == 1) {
          write_row(u, h, r);
          continue;
        }
        // Partial of this chunk: normalised output and base-2 log-sum-exp (-inf when empty).
        const float l = h.row_sum[r];
        const std::size_t row = partial_row(unit_index, index, r);
        store_row<V>(h.o + std::ptrdiff_t(r) * plan.dv_pad, partial_o + row * dv, dv, l > 0.0f ? 1.0f / l : 0.0f);
        partial_lse[row] = l > 0.0f ? h.row_max[r] + log2_of(l) : kMinusInf;
      }
    }
  }

  /// Merges the chunks of base unit (b, kv head group, query block): o = sum_c 2^(lse_c - lse)
  /// o_c, lse = log2 sum_c 2^lse_c, reusing the thread's head tiles for the sums.
  void combine_unit(std::int64_t base_index, int thread) const {
    const ForwardUnit u = unit_at(base_index, thread);
    if (u.rows == 0) return;
    const int dv = p.head_dim_v, splits = plan.splits;
    const float* partial_o = reinterpret_cast<const float*>(workspace) + plan.partial_o;
    const float* partial_lse = reinterpret_cast<const float*>(workspace) + plan.partial_lse;
    for (int index = 0; index < u.heads; ++index) {
      const HeadTile h = head_tile(u, index);
      for (int r = 0; r < u.rows; ++r) {
        float best = kMinusInf;
        for (int c = 0; c < splits; ++c) {
          const float lse = partial_lse[partial_row(base_index * splits + c, index, r)];
          best = lse > best ? lse : best;
        }
        float* o = h.o + std::ptrdiff_t(r) * plan.dv_pad;
        fill<V>(o, std::size_t(plan.dv_pad), 0.0f);
        float sum = 0.0f;
        if (best != kMinusInf) {
          for (int c = 0; c < splits; ++c) {
            const std::size_t row = partial_row(base_index * splits + c, index, r);
            // exp2 through the vector type: no libm code is shared across ISAs.
            const float weight = V::exp2(V::set1(partial_lse[row] - best)).reduce_max();
            if (weight == 0.0f) continue;
            sum += weight;
            const V w = V::set1(weight);
            const float* src = partial_o + row * dv;
            int e = 0;
            for (; e + V::width <= dv; e += V::width) V::fma(w, V::load(src + e), V::load(o + e)).store(o + e);
            if (e < dv) V::fma(w, V::load_n(src + e, dv - e), V::load(o + e)).store(o + e);
          }
        }
        // write_row divides by l and adds log2 l to m: o is already normalised per chunk,
        // so l = the sum of weights and m = the largest chunk lse.
        h.row_sum[r] = sum;
        h.row_max[r] = best;
        write_row(u, h, r);
      }
    }
  }

  void run() const {
    parallel_for(plan.num_units, plan.threads, [this](std::int64_t i, int thread) { run_unit(i, thread); });
    if (plan.splits > 1)
      parallel_for(plan.num_units / plan.splits, plan.threads,
                   [this](std::int64_t i, int thread) { combine_unit(i, thread); });
  }
};

template <class V>
void flash_forward(const detail::AttentionProblem& p, const ForwardPlan& plan, std::byte* workspace) {
  switch (p.dtype) {
    case DType::f32: return FlashForward<V, float>{p, plan, workspace}.run();
    case DType::f16: return FlashForward<V, half_t>{p, plan, workspace}.run();
    case DType::bf16: return FlashForward<V, bfloat16_t>{p, plan, workspace}.run();
    default: return;  // validate.cpp admits only the three storage types
  }
}

}  // namespace attn::cpu::ATTN_CPU_ISA
