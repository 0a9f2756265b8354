// FlashAttention backward for Hopper (sm_90a): the sm80 backward's walk (one CTA per key block
// of 128 keys, kv head and batch, visiting the 64-query tiles of every query head of its group
// that the mask leaves reachable) with its products on wgmma. D = Dv = 128. Opt-in
// (ATTN_CUDA_BWD=sm90, src/cuda/backward.cpp): 1.2x the sm80 backward on the H100, but the whole
// backward suite has not yet run through with it (bench/gpu_notes_backward.md).
//
// Two warpgroups, each owning 64 of the block's keys. Per query tile:
//   S^T = K Q^T, dP^T = V dO^T     64 keys x 64 queries per warpgroup (wgmma m64n64, both from
//                                  shared memory, K-major)
//   P, dS in registers             as sm80 (the accumulator layout is mma.m16n8's, per warp)
//   dV += P^T dO, dK += dS^T Q     64 keys x 128 dims (wgmma m64n128, P / dS from registers,
//                                  dO / Q MN-major from shared memory)
//   dQ = dS K                      64 queries x 64 dims per warpgroup (the group's half of the
//                                  columns), dS MN-major from shared memory (written there by
//                                  both groups), K MN-major; f32 atomics into dq_accum, or the
//                                  ordered adds of the deterministic mode
// Loads: cp.async by every thread (whole rows per thread, sm80::copy_tile_rows), two Q / dO
// stages, one barrier per tile (as sm80); the copies are fenced for the async proxy
// (fence.proxy.async) before that barrier.
//
// Shared memory, 128-byte swizzled tiles (sm90/flash_fwd.cuh's `swizzled`), 1024-aligned:
//   sK, sV (128 x 128)   sQ, sdO (2 stages, 64 x 128)   sdS (128 keys x 64 queries)
//   then f32: lse * log2e (2, 64) and D_i (2, 64).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/bwd_params.hpp"
#include "cuda/check.hpp"
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
  static_assert(D == 128, "one 128-key block of D = 128: two column blocks of 64");
  static constexpr int kKBytes = kBlockN * D * 2;
  static constexpr int kQBytes = kBlockM * D * 2;  // one stage
  static constexpr int kSBytes = kBlockN * kBlockM * 2;
  static constexpr int kOffV = kKBytes;
  static constexpr int kOffQ = kOffV + kKBytes;
  static constexpr int kOffdO = kOffQ + 2 * kQBytes;
  static constexpr int kOffdS = kOffdO + 2 * kQBytes;
  static constexpr int kOffLse = kOffdS + kSBytes;
  static constexpr int kOffDsum = kOffLse + 2 * kBlockM * 4;
  static constexpr int kSmemBytes = kOffDsum + 2 * kBlockM * 4 + 1024;  // + rounding up to 1024
};

template <class T, int D>
__global__ void __launch_bounds__(Sm90BwdTraits<D>::kThreads, 1)
    flash_bwd_sm90_kernel(const __grid_constant__ BwdParams params) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  (void)params;  // wgmma exists only in the sm_90a pass; the planner never launches this elsewhere
#else
  using Tr = Sm90BwdTraits<D>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_u32(smem_raw) % 1024) % 1024);
  const std::uint32_t sK = smem_u32(smem), sV = sK + Tr::kOffV, sQ = sK + Tr::kOffQ, sdO = sK + Tr::kOffdO,
                      sdS = sK + Tr::kOffdS;
  float* sLse = reinterpret_cast<float*>(smem + Tr::kOffLse);
  float* sDsum = reinterpret_cast<float*>(smem + Tr::kOffDsum);

  const detail::BackwardProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wg = warp / 4, wg_warp = warp % 4;
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
  const int tid = int(threadIdx.x);
  load_swizzled_rows_async<Tr::kThreads, BN, D>(tid, sK, k, [&](int r) -> const T* {
    return n0 + r < Sk ? k + sm80::row_offset(p.k_layout, b, n0 + r, hk) : nullptr;
  });
  load_swizzled_rows_async<Tr::kThreads, BN, D>(tid, sV, v, [&](int r) -> const T* {
    return n0 + r < Sk ? v + sm80::row_offset(p.v_layout, b, n0 + r, hk) : nullptr;
  });
  sm80::cp_async_commit();

  // The walk of the sm80 backward (sm80::BwdWalk).
  const sm80::BwdWalk<BM, BN> walk(p, Sq, Sk, hk, nb, n0, n1);
  const int total = walk.total;
  auto head_of = [&](int x) { return walk.head_of(x); };
  auto tile_of = [&](int x) { return walk.tile_of(x); };
  auto eval_of = [&](int h) { return walk.eval_of(h); };
  auto next_tile = [&](int x) { return walk.next(x); };
  auto load_tile = [&](int x, int stage) {
    const int h = head_of(x), m0 = tile_of(x) * BM;
    load_swizzled_rows_async<Tr::kThreads, BM, D>(tid, sQ + stage * Tr::kQBytes, q, [&](int r) -> const T* {
      return m0 + r < Sq ? q + sm80::row_offset(p.q_layout, b, m0 + r, h) : nullptr;
    });
    load_swizzled_rows_async<Tr::kThreads, BM, D>(tid, sdO + stage * Tr::kQBytes, dout, [&](int r) -> const T* {
      return m0 + r < Sq ? dout + sm80::row_offset(p.dout_layout, b, m0 + r, h) : nullptr;
    });
    sm80::load_lse_dsum_async<BM>(params, b, h, m0, tid, sLse + stage * BM, sDsum + stage * BM);
  };

  float dk[64], dv[64];
#pragma unroll
  for (int e = 0; e < 64; ++e) dk[e] = dv[e] = 0.0f;
  const bool softcap = p.softcap > 0.0f;
  const float cap_mul = p.scale / (softcap ? p.softcap : 1.0f);
  // This thread's key rows (within the block) of every score element: s[4 nt + e] is key
  // key_row + 8 (e / 2), query column 8 nt + 2 (lane % 4) + e % 2.
  const int key_row = 64 * wg + 16 * wg_warp + lane / 4;
  int x = next_tile(0);
  if (x < total) load_tile(x, 0);
  sm80::cp_async_commit();
  int stage = 0;
  while (x < total) {
    const int x_next = next_tile(x + 1);
    sm80::cp_async_wait<0>();
    fence_proxy_async();  // the landed copies are read by wgmma (the async proxy)
    // The tile has landed, and every warpgroup is done with the previous one (its stage, sdS).
    __syncthreads();
    if (x_next < total) load_tile(x_next, stage ^ 1);
    sm80::cp_async_commit();

    const int h = head_of(x), m = tile_of(x), m0 = m * BM;
    const detail::MaskEval me = eval_of(h);
    const std::uint32_t sQs = sQ + stage * Tr::kQBytes, sdOs = sdO + stage * Tr::kQBytes;
    const float* lse_s = sLse + stage * BM;
    const float* dsum_s = sDsum + stage * BM;

    // S^T = K Q^T and dP^T = V dO^T: this group's 64 key rows against the tile's 64 queries.
    float s[32], dp[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) s[e] = dp[e] = 0.0f;
    wgmma_fence();
    // acc = (this group's 64 rows of sKV) (the tile's 64 rows of sQO)^T, both K-major.
    auto issue_keys_by_queries = [&](float (&acc)[32], std::uint32_t sKV, std::uint32_t sQO) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const std::uint32_t col = (kk % 4) * 32;
        const std::uint64_t da = sw128_desc(sKV + (kk / 4) * BN * 128 + 64 * wg * 128 + col, 16, 1024);
        const std::uint64_t db = sw128_desc(sQO + (kk / 4) * BM * 128 + col, 16, 1024);
        wgmma_m64n64k16_ss<T, 0, 0>(acc, da, db, kk > 0 ? 1 : 0);
      }
    };
    issue_keys_by_queries(s, sK, sQs);
    issue_keys_by_queries(dp, sV, sdOs);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(s);
    fence_registers(dp);

    std::uint32_t keep = ~0u;
    if (m0 + BM > Sq || n0 + BN > Sk ||
        (!p.mask.is_full() && me.classify(m0, min(Sq, m0 + BM), n0, n1) == detail::TileKind::partial)) {
      keep = 0;
#pragma unroll 1
      for (int idx = 0; idx < 32; ++idx) {
        const int j = n0 + key_row + (idx % 4 >= 2 ? 8 : 0);
        const int i = m0 + idx / 4 * 8 + lane % 4 * 2 + idx % 2;
        keep |= std::uint32_t(j < Sk && i < Sq && me.allows(i, j)) << idx;
      }
    }
#pragma unroll
    for (int idx = 0; idx < 32; ++idx) {
      const int col = idx / 4 * 8 + lane % 4 * 2 + idx % 2;
      float logit = s[idx] * params.scale_log2, dcap = 1.0f;
      if (softcap) {
        const float t = sm80::tanh_exp2(s[idx] * cap_mul);
        logit = params.softcap_log2 * t;
        dcap = 1.0f - t * t;
      }
      const float pr = ((keep >> idx) & 1u) != 0 ? exp2f(logit - lse_s[col]) : 0.0f;
      s[idx] = pr;
      dp[idx] = pr * (dp[idx] - dsum_s[col]) * dcap;
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
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
      wgmma_m64n128k16_rs<T>(dv, pa[kk], sw128_desc(sdOs + kk * 16 * 128, BM * 128, 1024), 1);
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
      wgmma_m64n128k16_rs<T>(dk, sa[kk], sw128_desc(sQs + kk * 16 * 128, BM * 128, 1024), 1);
    wgmma_commit();

    fence_proxy_async();  // this thread's sdS stores, for the wgmma below
    __syncthreads();      // sdS complete

    // dQ (64 queries x this group's 64 columns) = dS K: A = dS with the queries contiguous
    // (MN-major), B = K's column block wg with the dims contiguous (MN-major).
    float dq[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) dq[e] = 0.0f;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const std::uint64_t da = sw128_desc(sdS + kk * 16 * 128, BN * 128, 1024);
      const std::uint64_t db = sw128_desc(sK + wg * BN * 128 + kk * 16 * 128, BN * 128, 1024);
      wgmma_m64n64k16_ss<T, 1, 1>(dq, da, db, kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait<0>();  // dV, dK and dQ
    fence_registers(dq);
    fence_registers(dv);
    fence_registers(dk);

    // dq[4 dt + e]: query m0 + 16 wg_warp + lane / 4 + 8 (e / 2), column 64 wg + 8 dt + 2 (lane % 4) + e % 2.
    float* dq_rows[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = m0 + 16 * wg_warp + lane / 4 + 8 * half;
      dq_rows[half] = i < Sq ? params.dq_accum + ((std::int64_t(b) * p.seqlen_q + i) * Hq + h) * D + 64 * wg +
                                   lane % 4 * 2
                             : nullptr;
    }
    int* counter = nullptr;
    if (p.deterministic) {
      // As sm80: key blocks add into a query tile in key-block order.
      counter = params.counters + (std::int64_t(b) * Hq + h) * params.m_tiles + m;
      if (threadIdx.x == 0) {
        int expected = 0;
        for (int n = 0; n < nb; ++n) expected += sm80::bwd_visits<BM, BN>(me, m, n) ? 1 : 0;
        while (sm80::ld_acquire(counter) < expected) __nanosleep(64);
      }
      __syncthreads();
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (dq_rows[half] == nullptr) continue;
#pragma unroll
      for (int dt = 0; dt < 8; ++dt) {
        float* ptr = dq_rows[half] + dt * 8;
        const float x0 = dq[4 * dt + 2 * half], x1 = dq[4 * dt + 2 * half + 1];
        if (!p.deterministic) {
          atomicAdd(ptr, x0);
          atomicAdd(ptr + 1, x1);
        } else {
          const float2 old = __ldcg(reinterpret_cast<const float2*>(ptr));
          __stcg(reinterpret_cast<float2*>(ptr), make_float2(old.x + x0, old.y + x1));
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
  sm80::cp_async_wait<0>();  // with no tile visited, K and V may still be landing

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
  const dim3 grid(unsigned(params.n_blocks), unsigned(params.p.heads_kv), unsigned(params.p.batch));
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
