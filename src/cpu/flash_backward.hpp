// The CPU backward with recomputation (FlashAttention-2), one template over the ISA's Vec.
// Plan, passes and workspace layout: backward_plan.hpp.
//
// Shape letters: Bc keys per block (64), R rows per query tile (positions x G), d / dv head
// dims, dp / dvp padded to the widest gemm panel. Per key block (K_j, V_j loaded once) and
// per query tile that the mask lets reach it, all five products by the gemm micro-kernel:
//   S  (R x Bc)   = Q (R x d) · K_j^T          -- K_j^T packed once per block
//   dP (R x Bc)   = dO (R x dv) · V_j^T        -- V_j^T packed once per block
//   P = 2^(S * scale * log2 e - lse2),  dS = P * (dP - D)   (soft-cap: dS *= 1 - tanh^2)
//   dV_j (Bc x dvp) += P^T · dO                -- gemm reading P transposed
//   dK_j (Bc x dp)  += dS^T · Q                -- gemm reading dS transposed
//   dQ   (R x dp)   += dS · K_j                -- into the chunk's f32 partial
// S and dP are row-major so the tile's Q and dO rows are used in place from the prepared f32
// copies (no per-tile transposition); only K_j and V_j are transposed, once per block.
// The scale is applied once, when dK and dQ are written.
//
// Included only from a backward_<isa>.cpp, inside namespace attn::cpu::ATTN_CPU_ISA.
#pragma once

#ifndef ATTN_CPU_ISA
#error "flash_backward.hpp is included from a backward_<isa>.cpp that defines ATTN_CPU_ISA"
#endif

#include <cstddef>
#include <cstdint>
#include <limits>

#include "attn/half.hpp"
#include "cpu/backward_plan.hpp"
#include "cpu/simd/gemm.hpp"
// After gemm.hpp, which it uses: load_row, store_row, fill, tanh_approx, kLog2e.
#include "cpu/flash_forward.hpp"
#include "cpu/thread_pool.hpp"
#include "cpu/tile_mask.hpp"
#include "problem.hpp"

namespace attn::cpu::ATTN_CPU_ISA {

template <class V, class T>
struct FlashBackward {
  static constexpr int Bc = BackwardPlan::kKeyBlock;

  const detail::BackwardProblem& p;
  const BackwardPlan& plan;
  float* ws;

  /// First prepared row of (b, kv head); row i * G + g of the head follows.
  std::size_t head_rows(int b, int hkv) const {
    const std::size_t first_token =
        p.cu_seqlens_q != nullptr ? std::size_t(p.cu_seqlens_q[b]) : std::size_t(b) * std::size_t(p.seqlen_q);
    return (first_token * p.heads_kv + std::size_t(hkv) * std::size_t(p.seqlen_q_of(b))) * plan.group;
  }
  float* thread_slice(int thread) const { return ws + plan.thread_base + std::size_t(thread) * plan.thread_floats; }

  /// Pass 1 on query block (b, kv head, qb): f32 copies of Q and dO, lse2 and D.
  void prepare(std::int64_t index) const {
    const int qb = int(index % plan.num_query_blocks);
    const int hkv = int(index / plan.num_query_blocks % p.heads_kv);
    const int b = int(index / plan.num_query_blocks / p.heads_kv);
    const int sq = p.seqlen_q_of(b), G = plan.group;
    const int i0 = qb * plan.block_positions;
    const int i1 = i0 + plan.block_positions < sq ? i0 + plan.block_positions : sq;
    const int d = p.head_dim, dv = p.head_dim_v, dp = plan.d_pad, dvp = plan.dv_pad;
    const T* q = static_cast<const T*>(p.q);
    const T* out = static_cast<const T*>(p.out);
    const T* dout = static_cast<const T*>(p.dout);
    for (int i = i0; i < i1; ++i)
      for (int g = 0; g < G; ++g) {
        const int h = hkv * G + g;
        const std::size_t row = head_rows(b, hkv) + std::size_t(i) * G + g;
        float* qr = ws + plan.q + row * dp;
        float* dor = ws + plan.dout + row * dvp;
        load_row<V>(q + p.q_layout.offset(b, i, h), qr, d, 1.0f);
        for (int e = d; e < dp; ++e) qr[e] = 0.0f;
        load_row<V>(dout + p.dout_layout.offset(b, i, h), dor, dv, 1.0f);
        for (int e = dv; e < dvp; ++e) dor[e] = 0.0f;
        const T* o = out + p.out_layout.offset(b, i, h);
        V acc = V::zero();
        int e = 0;
        for (; e + V::width <= dv; e += V::width) acc = V::fma(V::load(o + e), V::load(dor + e), acc);
        if (e < dv) acc = V::fma(V::load_n(o + e, dv - e), V::load_n(dor + e, dv - e), acc);
        ws[plan.delta + row] = acc.reduce_add();
        const float lse = p.lse[p.lse_layout.offset(b, i, h)];
        // A row that attends to nothing has lse = -inf; +inf makes every 2^(s - lse2) exactly 0.
        ws[plan.lse2 + row] = lse == -std::numeric_limits<float>::infinity()
                                  ? std::numeric_limits<float>::infinity()
                                  : lse * kLog2e;
      }
  }

  /// K rows [j0, j1) into k (Bc x dp) and k_t (d x Bc); V rows into v_t (dv x Bc). Columns of
  /// the transposes past the block's keys are zero so S and dP stay finite there.
  void load_key_block(int b, int hkv, int j0, int j1, float* k_t, float* v_t, float* k) const {
    const int d = p.head_dim, dv = p.head_dim_v, dp = plan.d_pad;
    const T* kk = static_cast<const T*>(p.k);
    const T* vv = static_cast<const T*>(p.v);
    float row[detail::kCpuMaxHeadDim];
    for (int j = j0; j < j1; ++j) {
      float* kr = k + std::size_t(j - j0) * dp;
      load_row<V>(kk + p.k_layout.offset(b, j, hkv), kr, d, 1.0f);
      for (int e = d; e < dp; ++e) kr[e] = 0.0f;
      for (int e = 0; e < d; ++e) k_t[std::size_t(e) * Bc + (j - j0)] = kr[e];
      load_row<V>(vv + p.v_layout.offset(b, j, hkv), row, dv, 1.0f);
      for (int e = 0; e < dv; ++e) v_t[std::size_t(e) * Bc + (j - j0)] = row[e];
    }
    for (int j = j1 - j0; j < Bc; ++j) {
      for (int e = 0; e < d; ++e) k_t[std::size_t(e) * Bc + j] = 0.0f;
      for (int e = 0; e < dv; ++e) v_t[std::size_t(e) * Bc + j] = 0.0f;
    }
  }

  /// P (in s) and dS (in ds) of `rows` rows from S (in s) and dP (in ds), all Bc columns.
  void probabilities_and_ds(float* s, float* ds, const float* lse2, const float* delta, int rows) const {
    const bool capped = p.softcap > 0.0f;
    const V score_scale = V::set1(capped ? p.scale / p.softcap : p.scale * kLog2e);
    const V cap = V::set1(p.softcap * kLog2e), one = V::set1(1.0f);
    for (int r = 0; r < rows; ++r) {
      const V l = V::set1(lse2[r]), dd = V::set1(delta[r]);
      float* sr = s + std::size_t(r) * Bc;
      float* dsr = ds + std::size_t(r) * Bc;
      for (int c = 0; c < Bc; c += V::width) {
        V x = V::load(sr + c) * score_scale;
        V factor = one;
        if (capped) {
          const V t = tanh_approx<V>(x);
          factor = one - t * t;  // d/ds of cap * tanh(s / cap)
          x = cap * t;
        }
        const V prob = V::exp2(x - l);
        prob.store(sr + c);
        (prob * (V::load(dsr + c) - dd) * factor).store(dsr + c);
      }
    }
  }

  /// Zeroes P and dS past the block's last key and, on partial tiles, where the mask forbids
  /// (row, key). Overwrites rather than multiplies, so values there never reach the products.
  void mask_tile(const GroupMask& gm, detail::TileKind kind, int i0, int i1, int j0, int j1, float* s,
                 float* ds) const {
    const int G = plan.group;
    for (int i = i0; i < i1; ++i) {
      // Keys [lo, hi] may be allowed for position i: one interval when only causal / window
      // parts are set (the common partial tile: the diagonal), else checked key by key.
      int lo = j0, hi = j1 - 1;
      if (kind == detail::TileKind::partial && gm.intervals_only) gm.eval.interval(i + gm.eval.offset(), lo, hi);
      const bool per_key = kind == detail::TileKind::partial && !gm.intervals_only;
      for (int g = 0; g < G; ++g) {
        const std::size_t r = std::size_t(i - i0) * G + g;
        float* sr = s + r * Bc;
        float* dsr = ds + r * Bc;
        detail::MaskEval e = gm.eval;
        if (gm.per_head) e.head += g;
        for (int j = j0; j < j0 + Bc; ++j)
          if (j < lo || j > hi || j >= j1 || (per_key && !e.allows(i, j))) {
            sr[j - j0] = 0.0f;
            dsr[j - j0] = 0.0f;
          }
      }
    }
  }

  /// Pass 2 on unit (b, kv head, chunk).
  void run_unit(std::int64_t index, int thread) const {
    const int chunk = int(index % plan.chunks);
    const int hkv = int(index / plan.chunks % p.heads_kv);
    const int b = int(index / plan.chunks / p.heads_kv);
    const int sq = p.seqlen_q_of(b), sk = p.seqlen_k_of(b), G = plan.group;
    const int d = p.head_dim, dv = p.head_dim_v, dp = plan.d_pad, dvp = plan.dv_pad;
    const std::size_t base = head_rows(b, hkv);
    float* dq = ws + plan.dq + (base * plan.chunks + std::size_t(chunk) * sq * G) * dp;
    fill<V>(dq, std::size_t(sq) * G * dp, 0.0f);

    float* slice = thread_slice(thread);
    float *k_t = slice + plan.k_t, *v_t = slice + plan.v_t, *k = slice + plan.k;
    float *dk = slice + plan.dk, *dvacc = slice + plan.dv, *s = slice + plan.s, *ds = slice + plan.ds;
    const GroupMask gm = group_mask(p, sq, sk, hkv);
    const int kb0 = int(std::int64_t(plan.num_key_blocks) * chunk / plan.chunks);
    const int kb1 = int(std::int64_t(plan.num_key_blocks) * (chunk + 1) / plan.chunks);
    T* dk_out = static_cast<T*>(p.dk);
    T* dv_out = static_cast<T*>(p.dv);
    for (int kb = kb0; kb < kb1 && kb * Bc < sk; ++kb) {
      const int j0 = kb * Bc, j1 = j0 + Bc < sk ? j0 + Bc : sk, keys = j1 - j0;
      fill<V>(dk, std::size_t(Bc) * dp, 0.0f);
      fill<V>(dvacc, std::size_t(Bc) * dvp, 0.0f);
      bool loaded = false;
      for (int i0 = 0; i0 < sq; i0 += plan.block_positions) {
        const int i1 = i0 + plan.block_positions < sq ? i0 + plan.block_positions : sq;
        int lo, hi;
        group_key_range(gm, i0, i1, lo, hi);
        if (hi <= j0 || lo >= j1) continue;
        const detail::TileKind kind = classify_group_tile(gm, i0, i1, j0, j1);
        if (kind == detail::TileKind::empty) continue;
        if (!loaded) {
          load_key_block(b, hkv, j0, j1, k_t, v_t, k);
          loaded = true;
        }
        const int rows = (i1 - i0) * G;
        const std::size_t row0 = base + std::size_t(i0) * G;
        const float* q = ws + plan.q + row0 * dp;
        const float* dout = ws + plan.dout + row0 * dvp;
        gemm<V, false>(rows, Bc, d, q, dp, k_t, Bc, s, Bc);
        gemm<V, false>(rows, Bc, dv, dout, dvp, v_t, Bc, ds, Bc);
        probabilities_and_ds(s, ds, ws + plan.lse2 + row0, ws + plan.delta + row0, rows);
        if (kind == detail::TileKind::partial || keys < Bc) mask_tile(gm, kind, i0, i1, j0, j1, s, ds);
        gemm<V, true, true>(keys, dvp, rows, s, Bc, dout, dvp, dvacc, dvp);
        gemm<V, true, true>(keys, dp, rows, ds, Bc, q, dp, dk, dp);
        gemm<V, true>(rows, dp, keys, ds, Bc, k, dp, dq + std::size_t(i0) * G * dp, dp);
      }
      // Every key of the sequence is written, with zeros when no query reaches it.
      for (int j = j0; j < j1; ++j) {
        store_row<V>(dk + std::size_t(j - j0) * dp, dk_out + p.dk_layout.offset(b, j, hkv), d, p.scale);
        store_row<V>(dvacc + std::size_t(j - j0) * dvp, dv_out + p.dv_layout.offset(b, j, hkv), dv, 1.0f);
      }
    }
  }

  /// Pass 3 on query block (b, kv head, qb): dq = scale * sum over chunks, chunk 0 first.
  void finish(std::int64_t index) const {
    const int qb = int(index % plan.num_query_blocks);
    const int hkv = int(index / plan.num_query_blocks % p.heads_kv);
    const int b = int(index / plan.num_query_blocks / p.heads_kv);
    const int sq = p.seqlen_q_of(b), G = plan.group, d = p.head_dim, dp = plan.d_pad;
    const int i0 = qb * plan.block_positions;
    const int i1 = i0 + plan.block_positions < sq ? i0 + plan.block_positions : sq;
    const std::size_t base = head_rows(b, hkv);
    const float* partials = ws + plan.dq + base * plan.chunks * dp;
    const std::size_t chunk_stride = std::size_t(sq) * G * dp;
    T* dq = static_cast<T*>(p.dq);
    float sum[detail::kCpuMaxHeadDim];  // d_pad <= the limit: it is a panel multiple
    for (int i = i0; i < i1; ++i)
      for (int g = 0; g < G; ++g) {
        const std::size_t r = std::size_t(i) * G + g;
        const float* src = partials + r * dp;
        for (int e = 0; e < dp; e += V::width) V::load(src + e).store(sum + e);
        for (int c = 1; c < plan.chunks; ++c)
          for (int e = 0; e < dp; e += V::width)
            (V::load(sum + e) + V::load(src + c * chunk_stride + e)).store(sum + e);
        store_row<V>(sum, dq + p.dq_layout.offset(b, i, hkv * G + g), d, p.scale);
      }
  }

  void run() const {
    const std::int64_t heads = std::int64_t(p.batch) * p.heads_kv;
    const std::int64_t blocks = heads * plan.num_query_blocks;
    parallel_for(blocks, plan.threads, [this](std::int64_t i, int) { prepare(i); });
    parallel_for(heads * plan.chunks, plan.threads, [this](std::int64_t i, int thread) { run_unit(i, thread); });
    parallel_for(blocks, plan.threads, [this](std::int64_t i, int) { finish(i); });
  }
};

template <class V>
void flash_backward(const detail::BackwardProblem& p, const BackwardPlan& plan, std::byte* workspace) {
  float* ws = reinterpret_cast<float*>(workspace);
  switch (p.dtype) {
    case DType::f32: return FlashBackward<V, float>{p, plan, ws}.run();
    case DType::f16: return FlashBackward<V, half_t>{p, plan, ws}.run();
    case DType::bf16: return FlashBackward<V, bfloat16_t>{p, plan, ws}.run();
    default: return;  // validate.cpp admits only the three storage types
  }
}

}  // namespace attn::cpu::ATTN_CPU_ISA
