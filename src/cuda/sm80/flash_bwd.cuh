// FlashAttention-2 backward for sm80+ (mma.sync), recomputing P from the forward's lse.
//
// One CTA per (key block of BN keys, kv head, batch); 8 warps in key groups of 16 keys (one
// warp per group up to head_dim 128, two splitting the head dims beyond, see bwd_tile). The CTA
// walks the query tiles (BM rows) of every query head of its kv group that the mask leaves
// reachable, so dK and dV of a GQA group accumulate in registers with no atomics. Per tile:
//   dP^T = V dO^T,  S^T = K Q^T                  (16 keys x BM queries per warp, registers)
//   P = exp2(S * scale * log2e - lse * log2e),   dS = P * (dP - D) [* (1 - tanh^2) soft-cap]
//   dV += P^T dO,   dK += dS^T Q                 (P and dS go from accumulators to A operands)
//   dQ += dS K                                   (dS through shared memory, each warp 16 rows
//                                                 x a share of D; f32 atomics into dq_accum, or
//                                                 ordered adds when deterministic)
// The scale multiplies dK here and dQ in the convert kernel, so dS stays scale-free.
//
// Letters: Sq/Sk this sequence's lengths, D/Dv head dims, BM/BN (bwd_tile). Shared memory (T
// elements, rows padded by 16 bytes so the 8 rows of one ldmatrix hit 8 bank groups):
//   sK (BN, D + 8)   sV (BN, Dv + 8)   sQ (2, BM, D + 8)   sdO (2, BM, Dv + 8)   sdS (BN, BM + 8)
//   then f32: lse * log2e (2, BM) and D_i (2, BM); stage s holds the s-th visited tile mod 2.
//   About 155 KB at head_dim 128 and 140 KB at 256: one CTA of 8 warps per SM on A100 and H100.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/bwd_params.hpp"
#include "cuda/check.hpp"
#include "cuda/sm80/flash_fwd.cuh"  // row_offset, tanh_exp2
#include "cuda/sm80/ptx.cuh"
#include "cuda/sm80/tile_copy.cuh"
#include "mask_eval.hpp"

namespace attn::cuda::sm80 {

/// Query rows [lo, hi) that may attend to keys [j0, j1): the interval parts read backwards.
/// Conservative (classify then decides per tile); globals only keep the causal bound, since a
/// global query or key escapes every other part.
ATTN_HD void query_range(const detail::MaskEval& me, int j0, int j1, int& lo, int& hi) {
  const detail::MaskParams& m = *me.m;
  const int off = me.offset();
  lo = 0;
  hi = me.seqlen_q;
  if (m.num_global > 0) {
    if (m.causal) lo = max(lo, j0 - off);
  } else {
    if (me.bounded_right_by_p()) lo = max(lo, j0 - off);  // j <= p
    if (m.window_right >= 0) lo = max(lo, j0 - m.window_right * me.step() - off);
    if (m.window_left >= 0) hi = min(hi, j1 + m.window_left * me.step() - off);
  }
  if (hi < lo) hi = lo;
}

/// Whether key block nb visits query tile m (of the head `me` describes): the one relation that
/// both the tile walk and the deterministic ordering use.
template <int BM, int BN>
__device__ __forceinline__ bool bwd_visits(const detail::MaskEval& me, int m, int nb) {
  const int i0 = m * BM, i1 = min(me.seqlen_q, i0 + BM);
  const int j0 = nb * BN, j1 = min(me.seqlen_k, j0 + BN);
  if (i0 >= i1 || j0 >= j1) return false;
  if (me.m->is_full()) return true;  // the common case, without the mask arithmetic
  int lo, hi;
  query_range(me, j0, j1, lo, hi);
  if (i1 <= lo || i0 >= hi) return false;
  return me.classify(i0, i1, j0, j1) != detail::TileKind::empty;
}

/// The query tiles that the backward CTA of key block nb (keys [n0, n1)) and kv head hk visits:
/// x = g * mt + (m - m_lo) for group head g and query tile m in [m_lo, m_hi), the tiles the
/// mask's interval parts leave reachable; next() skips those it leaves empty. With atomics each
/// key block starts at a different tile (rotated by nb), so the CTAs of a head do not all add
/// into the same dQ rows at once. The deterministic mode, where key blocks add into a tile in
/// their order, walks m descending instead: the tiles a block reaches end where the next
/// block's end or before (causal: all at the last tile; windows: earlier), so every block
/// reaches a tile at the same step as the blocks before it or later, and waits at most for
/// their adds. Ascending, block nb of a causal mask starts at tile 2 nb and waits ~2 nb steps
/// for block 0 to get there, holding its SM the while.
template <int BM, int BN>
struct BwdWalk {
  const detail::MaskParams* mask;
  int seqlen_q, seqlen_k, hk, group, nb;
  // rotate: the first tile's offset from m_lo, or -mt for the deterministic (descending) order:
  // a value of rotate rather than a flag, which would cost the Hopper kernel a spilled register.
  int m_lo = 0, mt = 0, total = 0, rotate = 0;
  // x / mt as ((umulhi(x, mt_mul) + x) >> mt_shift), exact for 0 <= x < 2^31 (round-up
  // reciprocal): the walk divides by mt several times per visited tile, and a 32-bit
  // division is ~20 instructions.
  unsigned mt_mul = 0;
  int mt_shift = 0;

  __device__ BwdWalk(const detail::BackwardProblem& p, int Sq, int Sk, int kv_head, int key_block, int n0, int n1)
      : mask(&p.mask), seqlen_q(Sq), seqlen_k(Sk), hk(kv_head), group(p.group_size()), nb(key_block) {
    int r_lo, r_hi;
    query_range(detail::MaskEval{mask, Sq, Sk, 0}, n0, n1, r_lo, r_hi);
    m_lo = r_lo / BM;
    mt = (r_hi + BM - 1) / BM - m_lo;
    total = group * mt;
    if (mt > 0) {
      rotate = p.deterministic ? -mt : nb % mt;
      while ((1ll << mt_shift) < mt) ++mt_shift;
      mt_mul = unsigned(((1ull << 32) * ((1ull << mt_shift) - unsigned(mt))) / unsigned(mt) + 1);
    }
  }
  __device__ int div_mt(int x) const { return int((__umulhi(unsigned(x), mt_mul) + unsigned(x)) >> mt_shift); }
  __device__ int head_of(int x) const { return hk * group + div_mt(x); }
  /// Tiles in rotated order (rotate < mt): the key blocks of a head start on different tiles;
  /// deterministic: descending.
  __device__ int tile_of(int x) const {
    const int r = x - div_mt(x) * mt + rotate;  // descending: r = t - mt < 0, tile mt - 1 - t
    return m_lo + (r < 0 ? -1 - r : r >= mt ? r - mt : r);
  }
  __device__ detail::MaskEval eval_of(int h) const { return detail::MaskEval{mask, seqlen_q, seqlen_k, h}; }
  /// The first visited tile at or after x, or total.
  __device__ int next(int x) const {
    while (x < total && !bwd_visits<BM, BN>(eval_of(head_of(x)), tile_of(x), nb)) ++x;
    return x;
  }
};

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

/// acc (16 rows x BM queries) += A B^T over K columns: A = 16 rows at sA, B = BM query rows at
/// sB, both row-major with STRIDE (dP^T = V dO^T and S^T = K Q^T).
template <class T, int BM, int K, int STRIDE>
__device__ __forceinline__ void mma_rows_by_queries(float (&acc)[BM / 8][4], const T* sA, const T* sB, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    std::uint32_t a[4];
    ldmatrix_x4(a, sA + (lane % 8 + (lane / 8) % 2 * 8) * STRIDE + kk * 16 + lane / 16 * 8);
#pragma unroll
    for (int nj = 0; nj < BM / 16; ++nj) {
      std::uint32_t bq[4];
      ldmatrix_x4(bq, sB + (nj * 16 + lane % 8 + lane / 16 * 8) * STRIDE + kk * 16 + (lane / 8) % 2 * 8);
      mma_16816<T>(acc[2 * nj], a, bq[0], bq[1]);
      mma_16816<T>(acc[2 * nj + 1], a, bq[2], bq[3]);
    }
  }
}

/// acc (16 rows x N columns) += src B over BM queries: src is a (16 x BM) accumulator tile (P^T
/// or dS^T), whose two adjacent 8-query tiles form one 16-query A operand; B = BM query rows at
/// sB, row-major with STRIDE, read through ldmatrix.trans (dV += P^T dO, dK += dS^T Q).
template <class T, int BM, int N, int STRIDE>
__device__ __forceinline__ void mma_keys_by_dims(float (&acc)[N / 8][4], const float (&src)[BM / 8][4], const T* sB,
                                                 int lane) {
#pragma unroll
  for (int kk = 0; kk < BM / 16; ++kk) {
    const std::uint32_t a[4] = {pack2<T>(src[2 * kk][0], src[2 * kk][1]), pack2<T>(src[2 * kk][2], src[2 * kk][3]),
                                pack2<T>(src[2 * kk + 1][0], src[2 * kk + 1][1]),
                                pack2<T>(src[2 * kk + 1][2], src[2 * kk + 1][3])};
#pragma unroll
    for (int dj = 0; dj < N / 16; ++dj) {
      std::uint32_t bt[4];
      ldmatrix_x4_trans(bt, sB + (kk * 16 + lane % 8 + (lane / 8) % 2 * 8) * STRIDE + dj * 16 + lane / 16 * 8);
      mma_16816<T>(acc[2 * dj], a, bt[0], bt[1]);
      mma_16816<T>(acc[2 * dj + 1], a, bt[2], bt[3]);
    }
  }
}

template <class T, int D, int Dv>
struct BwdTraits {
  static constexpr BwdTile kTile = bwd_tile(D);
  static constexpr int kBlockM = kTile.block_m;
  static constexpr int kBlockN = kTile.block_n;
  static constexpr int kSplit = kTile.dim_split;
  static constexpr int kKeyGroups = kBwdWarps / kSplit;
  static_assert(kBlockN == 16 * kKeyGroups, "each key group owns 16 keys");
  static_assert(D % (16 * kSplit) == 0 && Dv % (16 * kSplit) == 0 && Dv <= D,
                "head dims split into whole 16-column mma tiles, Dv <= D");
  static constexpr int kDkCols = D / kSplit;   // dK columns of one warp
  static constexpr int kDvCols = Dv / kSplit;  // dV columns of one warp
  // dQ (BM x D): warp w owns rows (w % kRowGroups) * 16 and columns (w / kRowGroups) * kDqCols.
  static constexpr int kRowGroups = kBlockM / 16;
  static_assert(kBwdWarps % kRowGroups == 0, "warps tile the dQ product");
  static constexpr int kDqCols = D / (kBwdWarps / kRowGroups);
  static_assert(kDqCols % 16 == 0, "dQ columns per warp are whole 16-column mma tiles");
  static_assert(kBlockM / 2 <= 32, "one mask bit per score fits a 32-bit word");
  static_assert(kBwdRowPad % kBlockM == 0, "query tiles never straddle the padded rows");
  static constexpr int kStride = D + 8;         // sK, sQ rows
  static constexpr int kVStride = Dv + 8;       // sV, sdO rows
  static constexpr int kSStride = kBlockM + 8;  // sdS rows
  static constexpr int kSmemK = kBlockN * kStride;
  static constexpr int kSmemV = kBlockN * kVStride;
  static constexpr int kSmemQ = kBlockM * kStride;   // one stage
  static constexpr int kSmemO = kBlockM * kVStride;  // one stage
  static constexpr int kSmemS = kBlockN * kSStride;
  static constexpr int kSmemT = kSmemK + kSmemV + 2 * kSmemQ + 2 * kSmemO + kSmemS;
  static constexpr int kSmemBytes = kSmemT * int(sizeof(T)) + 4 * kBlockM * int(sizeof(float));
};

/// Copies lse_log2 and D_i of query rows m0 .. m0 + BM of (b, h) into sLse / sDsum, 4 floats
/// per cp.async by threads tid < BM / 2 (the rows are padded to whole tiles, so no bounds): plain
/// loads would stall their warps for a global round trip in the middle of the tile.
template <int BM>
__device__ __forceinline__ void load_lse_dsum_async(const BwdParams& params, int b, int h, int m0, int tid,
                                                    float* sLse, float* sDsum) {
  const std::int64_t row0 = (std::int64_t(b) * params.p.heads_q + h) * params.seqlen_q_pad + m0;
  if (tid < BM / 4) {
    cp_async_16(sLse + 4 * tid, params.lse_log2 + row0 + 4 * tid, true);
  } else if (tid < BM / 2) {
    cp_async_16(sDsum + 4 * (tid - BM / 4), params.dsum + row0 + 4 * (tid - BM / 4), true);
  }
}

template <class T, int D, int Dv>
__global__ void __launch_bounds__(kBwdThreads) flash_bwd_kernel(const __grid_constant__ BwdParams params) {
  using Tr = BwdTraits<T, D, Dv>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, S = Tr::kStride, SV = Tr::kVStride, SS = Tr::kSStride;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + Tr::kSmemK;
  T* sQ = sV + Tr::kSmemV;
  T* sdO = sQ + 2 * Tr::kSmemQ;
  T* sdS = sdO + 2 * Tr::kSmemO;
  float* sLse = reinterpret_cast<float*>(sK + Tr::kSmemT);
  float* sDsum = sLse + 2 * BM;

  const detail::BackwardProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  // This warp's 16 keys (key group kg) and its share of the dK / dV columns.
  const int kg = Tr::kSplit == 1 ? warp : warp % Tr::kKeyGroups;
  const int split = Tr::kSplit == 1 ? 0 : warp / Tr::kKeyGroups;
  const int dk_c0 = split * Tr::kDkCols, dv_c0 = split * Tr::kDvCols;
  const int nb = int(blockIdx.x), hk = int(blockIdx.y), b = int(blockIdx.z);
  const int Sq = p.seqlen_q_of(b), Sk = p.seqlen_k_of(b);
  const int n0 = nb * BN;
  if (n0 >= Sk) return;
  const int n1 = min(Sk, n0 + BN);
  const int Hq = p.heads_q;

  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  // Keys past Sk are zero-filled so every product stays finite; their P is masked to 0.
  load_rows_async<kBwdThreads, T, BN, D>(sK, S, k, [&](int r) -> const T* {
    return n0 + r < Sk ? k + row_offset(p.k_layout, b, n0 + r, hk) : nullptr;
  });
  load_rows_async<kBwdThreads, T, BN, Dv>(sV, SV, v, [&](int r) -> const T* {
    return n0 + r < Sk ? v + row_offset(p.v_layout, b, n0 + r, hk) : nullptr;
  });
  cp_async_commit();

  const BwdWalk<BM, BN> walk(p, Sq, Sk, hk, nb, n0, n1);
  const int total = walk.total;
  auto head_of = [&](int x) { return walk.head_of(x); };
  auto tile_of = [&](int x) { return walk.tile_of(x); };
  auto eval_of = [&](int h) { return walk.eval_of(h); };
  auto next_tile = [&](int x) { return walk.next(x); };
  auto load_tile = [&](int x, int stage) {
    const int h = head_of(x), m0 = tile_of(x) * BM;
    load_rows_async<kBwdThreads, T, BM, D>(sQ + stage * Tr::kSmemQ, S, q, [&](int r) -> const T* {
      return m0 + r < Sq ? q + row_offset(p.q_layout, b, m0 + r, h) : nullptr;
    });
    load_rows_async<kBwdThreads, T, BM, Dv>(sdO + stage * Tr::kSmemO, SV, dout, [&](int r) -> const T* {
      return m0 + r < Sq ? dout + row_offset(p.dout_layout, b, m0 + r, h) : nullptr;
    });
    static_assert(2 * BM / 4 <= kBwdThreads, "one cp.async per thread covers both");
    load_lse_dsum_async<BM>(params, b, h, m0, int(threadIdx.x), sLse + stage * BM, sDsum + stage * BM);
  };

  float dk[Tr::kDkCols / 8][4] = {};
  float dv[Tr::kDvCols / 8][4] = {};
  const bool softcap = p.softcap > 0.0f;
  const float cap_mul = p.scale / (softcap ? p.softcap : 1.0f);
  int x = next_tile(0);
  if (x < total) load_tile(x, 0);
  cp_async_commit();
  int stage = 0;
  while (x < total) {
    const int x_next = next_tile(x + 1);
    cp_async_wait<0>();
    // The tile has landed, and every warp is done with the previous one (its stage and sdS).
    __syncthreads();
    if (x_next < total) load_tile(x_next, stage ^ 1);
    cp_async_commit();

    const int h = head_of(x), m = tile_of(x), m0 = m * BM;
    const detail::MaskEval me = eval_of(h);
    const T* sQs = sQ + stage * Tr::kSmemQ;
    const T* sdOs = sdO + stage * Tr::kSmemO;
    const float* lse_s = sLse + stage * BM;
    const float* dsum_s = sDsum + stage * BM;

    // dP^T = V dO^T and S^T = K Q^T: A from this warp's 16 key rows, B from the query rows.
    float dp[BM / 8][4] = {};
    float s[BM / 8][4] = {};
    mma_rows_by_queries<T, BM, Dv, SV>(dp, sV + kg * 16 * SV, sdOs, lane);
    mma_rows_by_queries<T, BM, D, S>(s, sK + kg * 16 * S, sQs, lane);

    // Element idx of a thread is s[idx / 4][idx % 4]: key row lane / 4 (+ 8 for idx % 4 >= 2),
    // query column idx / 4 * 8 + lane % 4 * 2 + idx % 2.
    const int key_row = n0 + kg * 16 + lane / 4;
    std::uint32_t keep = ~0u;
    if (m0 + BM > Sq || n0 + BN > Sk ||
        (!p.mask.is_full() && me.classify(m0, min(Sq, m0 + BM), n0, n1) == detail::TileKind::partial)) {
      // One rolled copy of the predicate fills a bit per element (see the forward).
      keep = 0;
#pragma unroll 1
      for (int idx = 0; idx < BM / 2; ++idx) {
        const int j = key_row + (idx % 4 >= 2 ? 8 : 0);
        const int i = m0 + idx / 4 * 8 + lane % 4 * 2 + idx % 2;
        keep |= std::uint32_t(j < Sk && i < Sq && me.allows(i, j)) << idx;
      }
    }
#pragma unroll
    for (int nt = 0; nt < BM / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + lane % 4 * 2 + e % 2;
        float logit = s[nt][e] * params.scale_log2, dcap = 1.0f;
        if (softcap) {
          const float t = tanh_exp2(s[nt][e] * cap_mul);
          logit = params.softcap_log2 * t;
          dcap = 1.0f - t * t;  // d/ds of cap * tanh(s / cap)
        }
        // A select, not a product: a masked score may overflow exp2 to inf.
        const float pr = ((keep >> (nt * 4 + e)) & 1u) != 0 ? exp2f(logit - lse_s[col]) : 0.0f;
        s[nt][e] = pr;
        dp[nt][e] = pr * (dp[nt][e] - dsum_s[col]) * dcap;
      }

    // dS^T (key-major) to shared memory: dQ needs all keys of a query row, and they are spread
    // over the warps (the first warp of each key group writes). Every warp finished reading the
    // previous tile's sdS before the top barrier.
    if (split == 0) {
#pragma unroll
      for (int nt = 0; nt < BM / 8; ++nt) {
        const int r = kg * 16 + lane / 4, c = nt * 8 + lane % 4 * 2;
        *reinterpret_cast<std::uint32_t*>(sdS + r * SS + c) = pack2<T>(dp[nt][0], dp[nt][1]);
        *reinterpret_cast<std::uint32_t*>(sdS + (r + 8) * SS + c) = pack2<T>(dp[nt][2], dp[nt][3]);
      }
    }

    // dV += P^T dO and dK += dS^T Q. Two adjacent 8-query accumulator tiles are one 16-query
    // A operand; B (query-major in shared memory) goes through ldmatrix.trans.
    mma_keys_by_dims<T, BM, Tr::kDvCols, SV>(dv, s, sdOs + dv_c0, lane);
    mma_keys_by_dims<T, BM, Tr::kDkCols, S>(dk, dp, sQs + dk_c0, lane);

    __syncthreads();  // sdS complete

    // dQ rows qr .. qr + 15, columns qc .. qc + kDqCols of this warp = dS K: A = dS from the
    // key-major sdS (ldmatrix.trans), B = K (key-major, ldmatrix.trans).
    const int qr = warp % Tr::kRowGroups * 16, qc = warp / Tr::kRowGroups * Tr::kDqCols;
    float* dq_rows[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = m0 + qr + lane / 4 + 8 * half;
      dq_rows[half] =
          i < Sq ? params.dq_accum + ((std::int64_t(b) * p.seqlen_q + i) * Hq + h) * D + qc + lane % 4 * 2 : nullptr;
    }
    constexpr int C = Tr::kDqCols;
    float dq[C / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      std::uint32_t a[4];
      ldmatrix_x4_trans(a, sdS + (kk * 16 + lane % 8 + lane / 16 * 8) * SS + qr + (lane / 8) % 2 * 8);
#pragma unroll
      for (int dj = 0; dj < C / 16; ++dj) {
        std::uint32_t bt[4];
        ldmatrix_x4_trans(bt, sK + (kk * 16 + lane % 8 + (lane / 8) % 2 * 8) * S + qc + dj * 16 + lane / 16 * 8);
        mma_16816<T>(dq[2 * dj], a, bt[0], bt[1]);
        mma_16816<T>(dq[2 * dj + 1], a, bt[2], bt[3]);
      }
    }
    int* counter = nullptr;
    if (p.deterministic) {
      // Key blocks add into a query tile one at a time, in key-block order: wait (after the
      // product, so the wait overlaps it) until every lower block that visits this tile has added (blocks are dispatched in index order, so
      // those are running or done), add, then count ourselves in.
      counter = params.counters + (std::int64_t(b) * Hq + h) * params.m_tiles + m;
      if (threadIdx.x == 0) {
        int expected = 0;
        for (int n = 0; n < nb; ++n) expected += bwd_visits<BM, BN>(me, m, n) ? 1 : 0;
        while (ld_acquire(counter) < expected) __nanosleep(64);
      }
      __syncthreads();
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (dq_rows[half] == nullptr) continue;
#pragma unroll
      for (int dt = 0; dt < C / 8; ++dt) {
        float* ptr = dq_rows[half] + dt * 8;
        if (!p.deterministic) {
          atomicAdd(ptr, dq[dt][2 * half]);
          atomicAdd(ptr + 1, dq[dt][2 * half + 1]);
        } else {
          const float2 old = __ldcg(reinterpret_cast<const float2*>(ptr));  // L2: another SM wrote it
          __stcg(reinterpret_cast<float2*>(ptr), make_float2(old.x + dq[dt][2 * half], old.y + dq[dt][2 * half + 1]));
        }
      }
    }
    if (p.deterministic) {
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) atomicAdd(counter, 1);
    }
    stage ^= 1;
    x = x_next;
  }
  cp_async_wait<0>();  // with no tile visited, K and V may still be landing

  // dK (scaled here) and dV of this warp's keys and columns, straight from the accumulators.
  T* dk_out = static_cast<T*>(p.dk);
  T* dv_out = static_cast<T*>(p.dv);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = n0 + kg * 16 + lane / 4 + 8 * half;
    if (j >= Sk) continue;
    T* dk_row = dk_out + row_offset(p.dk_layout, b, j, hk) + dk_c0 + lane % 4 * 2;
    T* dv_row = dv_out + row_offset(p.dv_layout, b, j, hk) + dv_c0 + lane % 4 * 2;
#pragma unroll
    for (int dt = 0; dt < Tr::kDkCols / 8; ++dt)
      *reinterpret_cast<std::uint32_t*>(dk_row + dt * 8) =
          pack2<T>(dk[dt][2 * half] * p.scale, dk[dt][2 * half + 1] * p.scale);
#pragma unroll
    for (int dt = 0; dt < Tr::kDvCols / 8; ++dt)
      *reinterpret_cast<std::uint32_t*>(dv_row + dt * 8) = pack2<T>(dv[dt][2 * half], dv[dt][2 * half + 1]);
  }
}

template <class T, int D, int Dv>
void launch_bwd(const BwdParams& params, cudaStream_t stream) {
  using Tr = BwdTraits<T, D, Dv>;
  const auto kernel = flash_bwd_kernel<T, D, Dv>;
  constexpr int smem = Tr::kSmemBytes;
  // Above 48 KB a kernel must opt in to its dynamic shared memory.
  ATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(unsigned(params.n_blocks), unsigned(params.p.heads_kv), unsigned(params.p.batch));
  kernel<<<grid, kBwdThreads, smem, stream>>>(params);
  ATTN_CUDA_CHECK_LAUNCH("flash_bwd_kernel");
}

}  // namespace attn::cuda::sm80

/// One explicit instantiation of the backward, for a src/cuda/sm80/flash_bwd_*.cu file.
#define ATTN_INSTANTIATE_FLASH_BWD(DTYPE, CTYPE, D, DV)                                       \
  namespace attn::cuda {                                                                      \
  template <>                                                                                 \
  void launch_flash_bwd<DType::DTYPE, D, DV>(const BwdParams& params, cudaStream_t stream) { \
    sm80::launch_bwd<CTYPE, D, DV>(params, stream);                                           \
  }                                                                                           \
  }
