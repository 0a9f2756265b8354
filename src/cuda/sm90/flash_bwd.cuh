// FlashAttention backward for Hopper (sm_90a): the sm80 backward's walk (one CTA per key block
// of 128 keys, kv head and batch, visiting the 64-query tiles of every query head of its group
// that the mask leaves reachable) with its products on wgmma. D = Dv = 128 or 64; the default
// there on sm_90 (ATTN_CUDA_BWD=sm80 keeps the mma.sync kernel, src/cuda/backward.cpp): on the
// H100, 1.15x / 1.12x SDPA's flash backend at D 128 and 1.00x / 0.91x at D 64, full / causal
// (eleventh session, bench/gpu_notes_backward.md).
//
// Two warpgroups, each owning 64 of the block's keys. Per query tile:
//   S^T = K Q^T, dP^T = V dO^T     64 keys x 64 queries per warpgroup (wgmma m64n64, both from
//                                  shared memory, K-major)
//   P, dS in registers             as sm80 (the accumulator layout is mma.m16n8's, per warp)
//   dV += P^T dO, dK += dS^T Q     64 keys x D dims (wgmma m64nD, P / dS from registers,
//                                  dO / Q MN-major from shared memory)
//   dQ = dS K                      64 queries x 64 dims per warpgroup, dS MN-major from shared
//                                  memory (written there by both groups), K MN-major; added
//                                  into dq_accum as below. D 128: each group takes its half of
//                                  the columns over all 128 keys. D 64: each group takes every
//                                  column over its own 64 keys, and both add into the tile.
// Loads: K and V once by cp.async from every thread. Q, dO, lse and D_i in three stages (four
// at D 64), two tiles ahead: by TMA from thread 0 behind one mbarrier per stage where the rows
// are padded (BwdParams::tma), otherwise by cp.async from every thread (whole rows per thread,
// sm80::copy_tile_rows). Two CTA barriers per tile, as sm80: after the first, the stage of the
// tile before is free for the loads of the tile after next; the second says sdS is complete.
// At D 64 with TMA (not deterministic) the warpgroups run apart instead: each reads only its
// own rows of sdS, so both barriers become warpgroup barriers, and a per-stage `empty`
// mbarrier (every thread arrives once done with the stage) tells thread 0 when it may reload
// it. One group's elementwise work then overlaps the other's multiplies (+5-6% at D 64).
//
// dQ: each warpgroup stores its 64 x 64 partial dQ to shared memory in its register order
// (dq_tiled_offset) and one of its threads adds the 16 KB into the tiled dq_accum with one bulk
// reduce-add, in the background of the next tile. (Per-element f32 atomics held a quarter of the
// warp samples, bench/gpu_notes_backward.md.) The deterministic mode adds in key-block order
// with plain 16-byte loads and stores instead.
//
// Shared memory, 128-byte swizzled tiles (sm90/flash_fwd.cuh's `swizzled`), 1024-aligned:
//   sK, sV (128 x D)   sQ, sdO (kStages, 64 x D)   sdS (128 keys x 64 queries)
//   sdQ (f32, one 64 x 64 part per group; two at D 64)   lse * log2e and D_i (f32, kStages of 64)
//   mbarriers: full and empty per stage.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/bwd_params.hpp"
#include "cuda/check.hpp"
#include "cuda/key_tiles.cuh"  // is_interval_mask
#include "cuda/sm80/flash_bwd.cuh"  // query_range, bwd_visits, ld_acquire, tanh_exp2, row_offset
#include "cuda/sm80/ptx.cuh"
#include "cuda/sm90/flash_fwd.cuh"  // swizzled
#include "cuda/sm90/wgmma.cuh"
#include "mask_eval.hpp"

namespace attn::cuda::sm90 {

template <int D>
struct Sm90BwdTraits {
  static constexpr int kBlockM = 64;   // queries per step
  static constexpr int kBlockN = 128;  // keys per CTA, 64 per warpgroup
  static constexpr int kThreads = 256;
  // Stages of Q, dO, lse and D_i; the loads run two tiles ahead. At D 64 one more, so that
  // thread 0 seldom waits for the other warpgroup (running apart, up to a tile behind) to free
  // the stage it loads next.
  static constexpr int kStages = D == 64 ? 4 : 3;
  static_assert(D == 128 || D == 64, "a 128-key block of D 128 (two column blocks of 64) or 64 (one)");
  static constexpr int kKBytes = kBlockN * D * 2;
  static constexpr int kQBytes = kBlockM * D * 2;  // one stage
  static constexpr int kSBytes = kBlockN * kBlockM * 2;
  // Each group's 64 x 64 part of dQ, in kDqBuffers buffers: at D 64 two, so that a tile's
  // bulk reduce-add may read its source while the next tile is computed (D 128 has no room).
  static constexpr int kDqBuffers = D == 64 ? 2 : 1;
  static constexpr int kDqPartBytes = kBlockM * 64 * 4;
  static constexpr int kDqBytes = 2 * kDqBuffers * kDqPartBytes;
  static constexpr int kRowBytes = kBlockM * 4;  // lse or D_i of one stage
  static constexpr int kOffV = kKBytes;
  static constexpr int kOffQ = kOffV + kKBytes;
  static constexpr int kOffdO = kOffQ + kStages * kQBytes;
  static constexpr int kOffdS = kOffdO + kStages * kQBytes;
  static constexpr int kOffdQ = kOffdS + kSBytes;
  static constexpr int kOffLse = kOffdQ + kDqBytes;
  static constexpr int kOffDsum = kOffLse + kStages * kRowBytes;
  static constexpr int kOffBar = kOffDsum + kStages * kRowBytes;  // full, then empty, per stage
  static constexpr int kSmemBytes = kOffBar + 16 * kStages + 1024;  // + rounding up to 1024
  static_assert(kSmemBytes <= 227 * 1024, "the H100's shared memory per block");
};

template <class T, int D>
__global__ void __launch_bounds__(Sm90BwdTraits<D>::kThreads, 1)
    flash_bwd_sm90_kernel(const __grid_constant__ BwdParams params) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  (void)params;  // wgmma exists only in the sm_90a pass; the planner never launches this elsewhere
#else
  using Tr = Sm90BwdTraits<D>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, kStages = Tr::kStages;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_u32(smem_raw) % 1024) % 1024);
  const std::uint32_t sK = smem_u32(smem), sV = sK + Tr::kOffV, sQ = sK + Tr::kOffQ, sdO = sK + Tr::kOffdO,
                      sdS = sK + Tr::kOffdS, sdQ = sK + Tr::kOffdQ, bar_full = sK + Tr::kOffBar,
                      bar_empty = bar_full + 8 * kStages;
  float* sLse = reinterpret_cast<float*>(smem + Tr::kOffLse);
  float* sDsum = reinterpret_cast<float*>(smem + Tr::kOffDsum);

  const detail::BackwardProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wg = warp / 4, wg_warp = warp % 4, wg_tid = int(threadIdx.x) % 128;
  // Block order (launch_bwd): chunks of params.head_chunk (kv head, batch) pairs, and within a
  // chunk key block by key block, so that the blocks a causal mask loads most (the first) start
  // before the light ones, while the blocks running together share a few heads' Q, dO and
  // dq_accum in the L2 (src/cuda/backward.cpp picks the chunk, about four waves of blocks).
  int nb, hk, b;
  {
    const int pairs = p.heads_kv * p.batch, per_chunk = params.head_chunk * params.n_blocks;
    const int chunk = int(blockIdx.x) / per_chunk, r = int(blockIdx.x) % per_chunk;
    const int width = min(params.head_chunk, pairs - chunk * params.head_chunk);
    const int pair = chunk * params.head_chunk + r % width;
    nb = r / width;
    hk = pair % p.heads_kv;
    b = pair / p.heads_kv;
  }
  const int Sq = p.seqlen_q_of(b), Sk = p.seqlen_k_of(b);
  const int n0 = nb * BN;
  if (n0 >= Sk) return;
  const int n1 = min(Sk, n0 + BN);
  const int Hq = p.heads_q;
  const bool tma = params.tma;
  const bool interval_mask = is_interval_mask(p.mask);
  // D 64 with TMA: the warpgroups run apart. Each reads only its own rows of sdS and of K for
  // dQ there, so the only thing they share per tile is its stage, which an `empty` barrier
  // (every thread's arrival) guards instead of a CTA barrier: one warpgroup's elementwise work
  // then overlaps the other's multiplies instead of both idling the tensor cores at once.
  // Elsewhere (D 128's dQ reads both groups' sdS; cp.async loads come from every thread; the
  // deterministic mode adds dQ in turns) they meet at two CTA barriers per tile.
  const bool apart = D == 64 && tma && !p.deterministic;

  const int tid = int(threadIdx.x);
  if (tma && tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(bar_full + 8 * st, 1);
      mbar_init(bar_empty + 8 * st, Tr::kThreads);
    }
  }

  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  // Keys past Sk are zero-filled so every product stays finite; their P is masked to 0.
  load_swizzled_rows_async<Tr::kThreads, BN, D>(tid, sK, k, [&](int r) -> const T* {
    return n0 + r < Sk ? k + sm80::row_offset(p.k_layout, b, n0 + r, hk) : nullptr;
  });
  load_swizzled_rows_async<Tr::kThreads, BN, D>(tid, sV, v, [&](int r) -> const T* {
    return n0 + r < Sk ? v + sm80::row_offset(p.v_layout, b, n0 + r, hk) : nullptr;
  });
  sm80::cp_async_commit();
  __syncthreads();  // the barriers are initialised before thread 0's first TMA names them

  // The walk of the sm80 backward (sm80::BwdWalk).
  const sm80::BwdWalk<BM, BN> walk(p, Sq, Sk, hk, nb, n0, n1);
  const int total = walk.total;
  auto head_of = [&](int x) { return walk.head_of(x); };
  auto tile_of = [&](int x) { return walk.tile_of(x); };
  auto eval_of = [&](int h) { return walk.eval_of(h); };
  auto next_tile = [&](int x) { return x < total ? walk.next(x) : total; };
  // Issues the loads of visited tile x into `stage`. TMA: rows past seqlen_q arrive as zeros,
  // and lse_log2 / dsum rows are padded to whole tiles (kBwdRowPad), so every load is a full box.
  // `j`: the tile's index in the visit order (tile j sits in stage j % kStages).
  auto load_tile = [&](int x, int j) {
    const int stage = j % kStages;
    const int h = head_of(x), m0 = tile_of(x) * BM;
    const std::int64_t row0 = (std::int64_t(b) * Hq + h) * params.seqlen_q_pad + m0;
    if (tma) {
      if (tid == 0) {
        // Apart, the stage's previous tile (j - kStages) may still be read by the other group.
        if (apart) mbar_wait(bar_empty + 8 * stage, ((j / kStages) & 1) ^ 1);
        const std::uint32_t full = bar_full + 8 * stage;
        mbar_arrive_expect_tx(full, 2 * Tr::kQBytes + 2 * Tr::kRowBytes);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) {
          tma_load_4d(sQ + stage * Tr::kQBytes + cb * BM * 128, &params.tma_q, 64 * cb, m0, h, b, full);
          tma_load_4d(sdO + stage * Tr::kQBytes + cb * BM * 128, &params.tma_do, 64 * cb, m0, h, b, full);
        }
        bulk_load(smem_u32(sLse + stage * BM), params.lse_log2 + row0, Tr::kRowBytes, full);
        bulk_load(smem_u32(sDsum + stage * BM), params.dsum + row0, Tr::kRowBytes, full);
      }
      return;
    }
    load_swizzled_rows_async<Tr::kThreads, BM, D>(tid, sQ + stage * Tr::kQBytes, q, [&](int r) -> const T* {
      return m0 + r < Sq ? q + sm80::row_offset(p.q_layout, b, m0 + r, h) : nullptr;
    });
    load_swizzled_rows_async<Tr::kThreads, BM, D>(tid, sdO + stage * Tr::kQBytes, dout, [&](int r) -> const T* {
      return m0 + r < Sq ? dout + sm80::row_offset(p.dout_layout, b, m0 + r, h) : nullptr;
    });
    sm80::load_lse_dsum_async<BM>(params, b, h, m0, tid, sLse + stage * BM, sDsum + stage * BM);
  };

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int e = 0; e < D / 2; ++e) dk[e] = dv[e] = 0.0f;
  const bool softcap = p.softcap > 0.0f;
  const float cap_mul = p.scale / (softcap ? p.softcap : 1.0f);
  // This thread's key rows (within the block) of every score element: s[4 nt + e] is key
  // key_row + 8 (e / 2), query column 8 nt + 2 (lane % 4) + e % 2.
  const int key_row = 64 * wg + 16 * wg_warp + lane / 4;
  // Visits x (stage i % kStages), x1 and x2 follow; the loads run two visits ahead. The
  // cp.async path commits one group per visit, empty or not, so that "all but the newest
  // group" is always the current tile.
  int x = next_tile(0), x1 = next_tile(x + 1);
  if (x < total) load_tile(x, 0);
  sm80::cp_async_commit();
  if (x1 < total) load_tile(x1, 1);
  sm80::cp_async_commit();
  if (apart) {
    // K and V come by cp.async from every thread: landed and visible to all before the loop,
    // which has no CTA barrier after this one.
    sm80::cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
  }
  const bool dq_issuer = wg_tid == 0;  // one thread per warpgroup adds its part of dQ
  for (int i = 0; x < total; ++i) {
    const int stage = i % kStages;
    if (tma) {
      if (!apart) sm80::cp_async_wait<0>();  // K and V (the only cp.async of this path; apart: waited for above)
      mbar_wait(bar_full + 8 * stage, (i / kStages) & 1);
    } else {
      sm80::cp_async_wait<1>();
    }
    fence_proxy_async();  // landed cp.async copies are read by wgmma (the async proxy)
    // The tile has landed, and every warpgroup (apart: this one) is done with the previous
    // tile (its stage, sdS).
    if (apart) {
      named_barrier_sync(3 + wg, 128);
    } else {
      __syncthreads();
    }
    const int x2 = next_tile(x1 + 1);
    if (x2 < total) load_tile(x2, i + 2);
    if (!tma) sm80::cp_async_commit();

    const int h = head_of(x), m = tile_of(x), m0 = m * BM;
    const detail::MaskEval me = eval_of(h);
    const std::uint32_t sQs = sQ + stage * Tr::kQBytes, sdOs = sdO + stage * Tr::kQBytes;
    const float* lse_s = sLse + stage * BM;
    const float* dsum_s = sDsum + stage * BM;

    // S^T = K Q^T and dP^T = V dO^T: this group's 64 key rows against the tile's 64 queries,
    // two groups, so that P is computed while dP^T is still in the tensor cores.
    float s[32], dp[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) s[e] = dp[e] = 0.0f;
    wgmma_fence();
    // acc = (this group's 64 rows of sKV) (the tile's 64 rows of sQO)^T, both K-major.
    auto issue_keys_by_queries = [&](float (&acc)[32], std::uint32_t sKV, std::uint32_t sQO) {
      // Descriptors built once, then advanced per k-step (one add each, sw128_desc_advance).
      const std::uint64_t da0 = sw128_desc(sKV + 64 * wg * 128, 16, 1024), db0 = sw128_desc(sQO, 16, 1024);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const std::uint32_t col = (kk % 4) * 32;
        const std::uint64_t da = sw128_desc_advance(da0, (kk / 4) * BN * 128 + col);
        const std::uint64_t db = sw128_desc_advance(db0, (kk / 4) * BM * 128 + col);
        wgmma_m64n64k16_ss<T, 0, 0>(acc, da, db, kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    issue_keys_by_queries(s, sK, sQs);
    issue_keys_by_queries(dp, sV, sdOs);

    std::uint32_t keep = ~0u;
    if (m0 + BM > Sq || n0 + BN > Sk ||
        (!p.mask.is_full() && me.classify(m0, min(Sq, m0 + BM), n0, n1) == detail::TileKind::partial)) {
      keep = 0;
      const int j0 = n0 + key_row;  // and j0 + 8
      if (interval_mask) {
        // Causal and windows: each query column's key interval, against this thread's 2 keys.
#pragma unroll
        for (int c = 0; c < 16; ++c) {
          const int i_q = m0 + c / 2 * 8 + lane % 4 * 2 + c % 2;
          int lo = 0, hi = -1;
          if (i_q < Sq) {
            me.interval(i_q + me.offset(), lo, hi);
            hi = min(hi, Sk - 1);
          }
          const int idx = c / 2 * 4 + c % 2;  // s[idx] is key j0, s[idx + 2] key j0 + 8
          keep |= std::uint32_t(j0 >= lo && j0 <= hi) << idx;
          keep |= std::uint32_t(j0 + 8 >= lo && j0 + 8 <= hi) << (idx + 2);
        }
      } else {
#pragma unroll 1
        for (int idx = 0; idx < 32; ++idx) {
          const int j = j0 + (idx % 4 >= 2 ? 8 : 0);
          const int i_q = m0 + idx / 4 * 8 + lane % 4 * 2 + idx % 2;
          keep |= std::uint32_t(j < Sk && i_q < Sq && me.allows(i_q, j)) << idx;
        }
      }
    }
    // lse and D_i of this thread's two query columns in 8-query group nt (s[4 nt + e] is column
    // 8 nt + 2 (lane % 4) + e % 2), one 8-byte load each.
    auto column_pair = [&](const float* row_values, int nt) {
      return *reinterpret_cast<const float2*>(row_values + nt * 8 + lane % 4 * 2);
    };
    auto probability = [&](int idx, float logit, float2 lse2) {
      return ((keep >> idx) & 1u) != 0 ? exp2f(logit - (idx % 2 == 0 ? lse2.x : lse2.y)) : 0.0f;
    };
    auto score_grad = [&](int idx, float dcap, float2 dsum2) {  // dS = P (dP - D_i) dcap
      dp[idx] = s[idx] * (dp[idx] - (idx % 2 == 0 ? dsum2.x : dsum2.y)) * dcap;
    };
    if (!softcap) {
      wgmma_wait<1>();  // S^T; dP^T may still be running
      fence_registers(s);
#pragma unroll
      for (int nt = 0; nt < BM / 8; ++nt) {
        const float2 lse2 = column_pair(lse_s, nt);
#pragma unroll
        for (int e = 0; e < 4; ++e) s[4 * nt + e] = probability(4 * nt + e, s[4 * nt + e] * params.scale_log2, lse2);
      }
      wgmma_wait<0>();
      fence_registers(dp);
#pragma unroll
      for (int nt = 0; nt < BM / 8; ++nt) {
        const float2 dsum2 = column_pair(dsum_s, nt);
#pragma unroll
        for (int e = 0; e < 4; ++e) score_grad(4 * nt + e, 1.0f, dsum2);
      }
    } else {
      // The soft-cap's derivative 1 - tanh^2 is needed beside dP: both first.
      wgmma_wait<0>();
      fence_registers(s);
      fence_registers(dp);
#pragma unroll
      for (int nt = 0; nt < BM / 8; ++nt) {
        const float2 lse2 = column_pair(lse_s, nt), dsum2 = column_pair(dsum_s, nt);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int idx = 4 * nt + e;
          const float t = sm80::tanh_exp2(s[idx] * cap_mul);
          s[idx] = probability(idx, params.softcap_log2 * t, lse2);
          score_grad(idx, 1.0f - t * t, dsum2);
        }
      }
    }

    // dS^T (keys x queries) into sdS for dQ; every group finished reading the previous tile's
    // sdS before the top barrier.
#pragma unroll
    for (int nt = 0; nt < BM / 8; ++nt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = key_row + 8 * half, c = nt * 8 + lane % 4 * 2;
        *reinterpret_cast<std::uint32_t*>(smem + Tr::kOffdS + swizzled(r, c / 8, BN) + (c % 8) * 2) =
            sm80::pack2<T>(dp[4 * nt + 2 * half], dp[4 * nt + 2 * half + 1]);
      }

    // dV += P^T dO and dK += dS^T Q: A from the registers (the m64 accumulator layout is the
    // A layout), B = dO / Q with the dims contiguous (MN-major, column blocks BM rows apart).
    std::uint32_t pa[BM / 16][4], sa[BM / 16][4];
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        pa[kk][r] = sm80::pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
        sa[kk][r] = sm80::pack2<T>(dp[8 * kk + 2 * r], dp[8 * kk + 2 * r + 1]);
      }
    }
    auto accumulate = [&](float (&acc)[D / 2], const std::uint32_t (&a)[4], std::uint64_t desc_b) {
      if constexpr (D == 128) {
        wgmma_m64n128k16_rs<T>(acc, a, desc_b, 1);
      } else {
        wgmma_m64n64k16_rs<T>(acc, a, desc_b, 1);
      }
    };
    // The base descriptors are written inside the loops (ptxas computes each once): naming them
    // before the loops changed its schedule, ~1% slower at D 128 in a same-process A/B.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
      accumulate(dv, pa[kk], sw128_desc_advance(sw128_desc(sdOs, BM * 128, 1024), kk * 16 * 128));
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
      accumulate(dk, sa[kk], sw128_desc_advance(sw128_desc(sQs, BM * 128, 1024), kk * 16 * 128));
    wgmma_commit();

    fence_proxy_async();  // this thread's sdS stores, for the wgmma below
    // The dQ reduction that last used this tile's sdQ buffer (the previous tile's, or at D 64
    // the one before) has read it before anyone writes this tile's dQ there (after the barrier).
    if (dq_issuer && !p.deterministic) bulk_wait_read<Tr::kDqBuffers - 1>();
    // sdS complete (apart: this group's rows, the only ones its dQ reads)
    if (apart) {
      named_barrier_sync(3 + wg, 128);
    } else {
      __syncthreads();
    }

    // dQ = dS K: A = dS with the queries contiguous (MN-major), B = K with the dims contiguous
    // (MN-major). D 128: this group's 64 columns (K's column block wg) over the 128 keys. D 64:
    // the 64 columns over this group's 64 keys (rows 64 wg.. of sdS and of K), a partial sum.
    // (Issuing it before dV and dK, so that the adds below overlap them, measured 14% slower at
    // D 128: more spills.)
    float dq[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) dq[e] = 0.0f;
    wgmma_fence();
    constexpr int kDqKeys = D == 128 ? BN : BN / 2;
    const int key0 = D == 128 ? 0 : 64 * wg;
    const std::uint32_t k_cols = D == 128 ? sK + wg * BN * 128 : sK;
#pragma unroll
    for (int kk = 0; kk < kDqKeys / 16; ++kk) {  // base descriptors inside the loop: as dV / dK above
      const std::uint64_t da = sw128_desc_advance(sw128_desc(sdS, BN * 128, 1024), (key0 + kk * 16) * 128);
      const std::uint64_t db = sw128_desc_advance(sw128_desc(k_cols, BN * 128, 1024), (key0 + kk * 16) * 128);
      wgmma_m64n64k16_ss<T, 1, 1>(dq, da, db, kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait<0>();  // dV, dK and dQ
    fence_registers(dq);
    fence_registers(dv);
    fence_registers(dk);
    if (apart) mbar_arrive(bar_empty + 8 * stage);  // this thread is done with the stage

    // This group's part of the tile in dq_accum's tiled order: float4 j of thread wg_tid at
    // 4 (128 j + wg_tid) (dq_tiled_offset): its half of the columns at D 128, the whole tile
    // (which both groups add into) at D 64.
    float* dq_part = params.dq_accum + ((std::int64_t(b) * Hq + h) * params.m_tiles + m) * (BM * D) +
                     (D == 128 ? wg * (BM * 64) : 0);
    if (!p.deterministic) {
      const int dq_buffer = Tr::kDqBuffers == 1 ? wg : 2 * wg + i % 2;  // in sdQ
      float* sdq_part = reinterpret_cast<float*>(smem + Tr::kOffdQ) + dq_buffer * (BM * 64);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<float4*>(sdq_part + (128 * j + wg_tid) * 4) =
            make_float4(dq[4 * j], dq[4 * j + 1], dq[4 * j + 2], dq[4 * j + 3]);
      fence_proxy_async();  // for the bulk reduction's reads
      named_barrier_sync(1 + wg, 128);
      if (dq_issuer) {
        bulk_reduce_add_f32(dq_part, sdQ + dq_buffer * Tr::kDqPartBytes, Tr::kDqPartBytes);
        bulk_commit();
      }
    } else {
      // As sm80: key blocks add into a query tile in key-block order.
      int* counter = params.counters + (std::int64_t(b) * Hq + h) * params.m_tiles + m;
      if (threadIdx.x == 0) {
        int expected = 0;
        for (int n = 0; n < nb; ++n) expected += sm80::bwd_visits<BM, BN>(me, m, n) ? 1 : 0;
        while (sm80::ld_acquire(counter) < expected) __nanosleep(64);
      }
      __syncthreads();
      // D 64: the groups' partial sums go into the same tile, group 0's first.
      for (int turn = 0; turn < (D == 128 ? 1 : 2); ++turn) {
        if (D == 128 || wg == turn) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            float4* ptr = reinterpret_cast<float4*>(dq_part + (128 * j + wg_tid) * 4);
            const float4 old = __ldcg(ptr);
            __stcg(ptr,
                   make_float4(old.x + dq[4 * j], old.y + dq[4 * j + 1], old.z + dq[4 * j + 2], old.w + dq[4 * j + 3]));
          }
        }
        __threadfence();
        __syncthreads();
      }
      if (threadIdx.x == 0) atomicAdd(counter, 1);
    }
    x = x1;
    x1 = x2;
  }
  sm80::cp_async_wait<0>();  // with no tile visited, K and V may still be landing
  if (dq_issuer) bulk_wait<0>();  // the reductions have read shared memory and written dq_accum

  // dK (scaled here) and dV: dk[4 dt + e] is key key_row + 8 (e / 2), column 8 dt + 2 (lane % 4) + e % 2.
  T* dk_out = static_cast<T*>(p.dk);
  T* dv_out = static_cast<T*>(p.dv);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = n0 + key_row + 8 * half;
    if (j >= Sk) continue;
    T* dk_row = dk_out + sm80::row_offset(p.dk_layout, b, j, hk) + lane % 4 * 2;
    T* dv_row = dv_out + sm80::row_offset(p.dv_layout, b, j, hk) + lane % 4 * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<std::uint32_t*>(dk_row + dt * 8) =
          sm80::pack2<T>(dk[4 * dt + 2 * half] * p.scale, dk[4 * dt + 2 * half + 1] * p.scale);
      *reinterpret_cast<std::uint32_t*>(dv_row + dt * 8) =
          sm80::pack2<T>(dv[4 * dt + 2 * half], dv[4 * dt + 2 * half + 1]);
    }
  }
#endif
}

template <class T, int D>
void launch_bwd(const BwdParams& params, cudaStream_t stream) {
  using Tr = Sm90BwdTraits<D>;
  const auto kernel = flash_bwd_sm90_kernel<T, D>;
  ATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  // One block per (key block, kv head, batch), in the kernel's chunked order.
  const dim3 grid(unsigned(std::int64_t(params.p.heads_kv) * params.p.batch * params.n_blocks));
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
  ATTN_CUDA_CHECK_LAUNCH("flash_bwd_sm90_kernel");
}

}  // namespace attn::cuda::sm90

/// One explicit instantiation of the Hopper backward, for a src/cuda/sm90/flash_bwd_*.cu file.
#define ATTN_INSTANTIATE_FLASH_BWD_SM90(DTYPE, CTYPE, D)                                   \
  namespace attn::cuda {                                                                   \
  template <>                                                                              \
  void launch_flash_bwd_sm90<DType::DTYPE, D>(const BwdParams& params, cudaStream_t stream) { \
    sm90::launch_bwd<CTYPE, D>(params, stream);                                            \
  }                                                                                        \
  }
