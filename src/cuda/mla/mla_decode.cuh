// MLA absorbed decode for sm_90 (mma.sync): one CTA per (64 query rows, KV split, sequence),
// every query head of the block sharing each latent K tile, which is also the V tile.
//
// Letters: Sq/Sk this sequence's query/key lengths, Hq query heads, D = 576, Dv = 512, BM = 64
// rows, BN = 32 keys per tile. Rows x = i * Hq + h. Two warp roles, one barrier per tile:
//   score warps 0-3    S = Q K^T for key tile t (warp w: rows 16 w, all 32 keys), online
//                      softmax in registers, P and each row's rescale factor to shared memory;
//                      they also issue the cp.async loads of tile t + 1
//   output warps 4-11  O = O * scale + P V for key tile t - 1 (warp w: all 64 rows, value
//                      columns 64 (w - 4)), from the P the score warps wrote one step earlier
// so the tensor cores see scores of one tile and outputs of the previous at once, where a
// single role set (v2) left 4 of 8 warps waiting during the scores. Three K stages: the one
// scored, the one multiplied by P, and the one landing.
//
//   version  what                                                        b128 ctx8192 (H100)
//   v2       8 warps: 4 score 32 x 32, all 8 output 64 x 64, 64-key       233 TFLOP/s
//            tiles, 3 barriers per tile (scores, then outputs)
//   v3       12 warps in two roles overlapping, 32-key tiles, 1 barrier    pending
//
// Per head this costs 2 (576 + 512) flops per key against 1152 bytes of cache per key shared by
// all heads: at 128 heads the kernel is bound by the SM (mma.sync), not by memory.
//
// Shared memory (T elements; rows of 16-byte chunks whose index is XOR-ed with a function of
// the row, so the 8 rows that one ldmatrix reads fall in 8 different bank groups):
//   sQ (BM, D)               the query rows; reused for the output tile (BM, Dv) at the end
//   sK (3, BN, D)            key tile t_begin + s in stage s % 3; V is its first 512 columns
//   sP (2, BM, BN)           probabilities of tile t_begin + s in buffer s % 2
//   sScale (2, BM) f32       per row, with sP: the factor the output is rescaled by first
//   sInv (BM) f32            per row at the end: 1 / (row sum)
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/check.hpp"
#include "cuda/mla/mla_decode.hpp"
#include "cuda/sm80/flash_fwd.cuh"
#include "cuda/sm80/ptx.cuh"

namespace attn::cuda::mla {

using sm80::cp_async_16;
using sm80::ldmatrix_x4;
using sm80::ldmatrix_x4_trans;
using sm80::mma_16816;
using sm80::pack2;

/// Element offset of (row r, 16-byte chunk c) in a swizzled tile of COLS >= 64 columns: rows of
/// 128 bytes or more, so 8 consecutive rows take 8 XOR patterns.
template <int COLS>
__device__ __forceinline__ int swz(int r, int c) {
  return r * COLS + ((c ^ (r & 7)) << 3);
}
/// The same for the 32-column P tile: rows of 64 bytes, two per 128, so row pairs share a pattern.
__device__ __forceinline__ int swz_p(int r, int c) { return r * kBlockN + ((c ^ ((r >> 1) & 3)) << 3); }

/// Copies ROWS rows of 576 T into a swizzled tile, 16 bytes per cp.async, by THREADS threads
/// (thread index `tid`): THREADS / 32 threads per row, 32 rows per pass. `row_src(r)` is the
/// global row or nullptr (zero fill, nothing read); `any` names a valid address for the
/// zero-filling copies.
template <int ROWS, int THREADS, class T, class RowSrc>
__device__ __forceinline__ void load_rows(T* dst, const T* any, RowSrc row_src, int tid) {
  constexpr int kChunks = kHeadDim / 8, kPerRow = THREADS / 32;
  static_assert(THREADS % 32 == 0 && kChunks % kPerRow == 0 && ROWS % 32 == 0, "32 rows per pass");
  const int c0 = tid % kPerRow;
#pragma unroll
  for (int pass = 0; pass < ROWS / 32; ++pass) {
    const int r = tid / kPerRow + 32 * pass;
    const T* src = row_src(r);
#pragma unroll
    for (int c = c0; c < kChunks; c += kPerRow)
      cp_async_16(dst + swz<kHeadDim>(r, c), src != nullptr ? src + c * 8 : any, src != nullptr);
  }
}

/// Barrier 1 over all threads of the CTA, named so that the two warp roles may reach it from
/// their own branches.
__device__ __forceinline__ void sync_all() { asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory"); }

/// Moves registers between the warp roles (sm_90a; a no-op elsewhere): the entry cap of 168
/// per thread (384 threads) does not hold the output warps' 128 accumulators, their P and V
/// fragments and addresses without spilling, while the score warps need far fewer. The pool
/// that setmaxnreg redistributes is the CTA's own allocation at entry, 168 x 384 = 64,512:
/// 4 x 32 x 120 + 8 x 32 x 192 fills it exactly; asking for more would block forever.
inline constexpr int kEntryRegs = 65536 / kThreads / 8 * 8;
inline constexpr int kScoreRegs = 120;
inline constexpr int kOutputRegs = 192;
static_assert(kScoreWarps * kScoreRegs + kOutputWarps * kOutputRegs <= (kScoreWarps + kOutputWarps) * kEntryRegs,
              "setmaxnreg.inc waits for registers the CTA released; more than it holds never come");
template <bool kInc, int N>
__device__ __forceinline__ void set_max_regs() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kInc) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
  }
#endif
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1) mla_decode_kernel(const __grid_constant__ DecodeParams params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // The kernel is planned for sm_90 only (plan_decode checks the device), so the sm_80 build
  // compiles no body: half the compile time.
  (void)params;
#else
  constexpr int D = kHeadDim, Dv = kHeadDimV, BM = kBlockM, BN = kBlockN;
  constexpr int kCols = Dv / kOutputWarps;  // value columns per output warp
  constexpr float kNegInf = -INFINITY;
  static_assert(BM == 16 * kScoreWarps && kCols == 64, "score warps own 16 rows, output warps 64 columns");
  static_assert(kScoreWarps % 4 == 0, "setmaxnreg acts on whole warpgroups");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;
  T* sP = sK + kStages * BN * D;
  float* sScale = reinterpret_cast<float*>(sP + 2 * BM * BN);
  float* sInv = sScale + 2 * BM;

  const detail::AttentionProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int m_block = int(blockIdx.x), split = int(blockIdx.y), b = int(blockIdx.z);
  const int Hq = p.heads_q, Sq = p.seqlen_q_of(b), Sk = p.seqlen_k_of(b);
  const int rows = Sq * Hq;
  const int m0 = m_block * BM;
  if (m0 >= rows) return;  // packed queries: this sequence has fewer rows (the combine skips them too)
  const bool causal = p.mask.causal;
  const int offset = Sk - Sq;  // query i sits at key position i + offset

  // Keys the block's rows may reach: causal stops at the last row's position.
  const int i_first = m0 / Hq, i_last = (min(rows, m0 + BM) - 1) / Hq;
  const int k_end = causal ? max(0, min(Sk, i_last + offset + 1)) : Sk;
  const int tiles = (k_end + BN - 1) / BN;
  const int per_split = (tiles + params.n_splits - 1) / params.n_splits;
  const int t_begin = min(tiles, split * per_split), n = min(tiles, t_begin + per_split) - t_begin;

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  load_rows<BM, kThreads>(sQ, q, [&](int r) -> const T* {
    const int x = m0 + r;
    return x < rows ? q + sm80::row_offset(p.q_layout, b, x / Hq, x % Hq) : nullptr;
  }, int(threadIdx.x));
  sm80::cp_async_commit();
  // K tiles are loaded by the score warps alone: the output warps' registers are all taken by
  // their accumulators and fragments, and the loads' addresses would push them to spill.
  // Keys past k_end are zero-filled and never read: past Sk the block table must not be touched.
  auto load_k = [&](int s) {
    const int n0 = (t_begin + s) * BN;
    load_rows<BN, 32 * kScoreWarps>(sK + s % kStages * BN * D, k, [&](int r) -> const T* {
      return n0 + r < k_end ? k + sm80::row_offset(p.k_layout, b, n0 + r, 0) : nullptr;
    }, int(threadIdx.x));
    sm80::cp_async_commit();
  };
  if (warp < kScoreWarps && n > 0) load_k(0);

  // The output tile: written by the output warps to sO (over sQ, which the scores no longer
  // need), stored by every thread with 16-byte row-contiguous stores.
  T* sO = sQ;
  auto store_out = [&] {
    T* out = static_cast<T*>(p.out);
    constexpr int kChunks = Dv / 8;
    for (int id = int(threadIdx.x); id < BM * kChunks; id += kThreads) {
      const int r = id / kChunks, c = id % kChunks;
      const int x = m0 + r;
      if (x >= rows) continue;
      *reinterpret_cast<uint4*>(out + sm80::row_offset(p.out_layout, b, x / Hq, x % Hq) + c * 8) =
          *reinterpret_cast<const uint4*>(sO + swz<Dv>(r, c));
    }
  };

  // Step s scores tile t_begin + s and multiplies the P of tile t_begin + s - 1.
  if (warp < kScoreWarps) {
    set_max_regs<false, kScoreRegs>();
    // This warp's rows srow + lane / 4 + 8 h of the C fragments; padding-only warps skip the math.
    const int srow = 16 * warp;
    const bool scoring = m0 + srow < rows;
    int pos[2];  // key position of each held row's query: it may attend keys j <= pos
#pragma unroll
    for (int h = 0; h < 2; ++h) pos[h] = (m0 + srow + lane / 4 + 8 * h) / Hq + offset;
    float m_run[2] = {kNegInf, kNegInf};  // running row max, log2 units
    float l_run[2] = {0.0f, 0.0f};        // running row sum of exp2(x - m_run), this thread's columns
    const float mul = params.scale_log2;
    for (int s = 0; s <= n && n > 0; ++s) {
      // K of step s (and Q) has landed, for every thread after the barrier, which also frees
      // the P buffer, rescale factors and K stage that step s - 1 read: the stage of tile
      // s + 1 held tile s - 2, which step s - 1 multiplied.
      sm80::cp_async_wait<0>();
      sync_all();
      if (s + 1 < n) load_k(s + 1);
      if (s == n || !scoring) continue;
      const T* sKs = sK + s % kStages * BN * D;
      const int n0 = (t_begin + s) * BN;
      // S = Q K^T: 16 rows x 32 keys over 576 dims.
      float sc[4][4] = {};
#pragma unroll 4
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[4];
        ldmatrix_x4(a, sQ + swz<D>(srow + lane % 8 + (lane / 8) % 2 * 8, 2 * kk + lane / 16));
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          std::uint32_t kb[4];
          ldmatrix_x4(kb, sKs + swz<D>(16 * nj + lane % 8 + lane / 16 * 8, 2 * kk + (lane / 8) % 2));
          mma_16816<T>(sc[2 * nj], a, kb[0], kb[1]);
          mma_16816<T>(sc[2 * nj + 1], a, kb[2], kb[3]);
        }
      }
      // Only the tiles that reach past k_end or, under causal, past the first row's position need a mask.
      if (n0 + BN > k_end || (causal && n0 + BN - 1 > i_first + offset)) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = n0 + 8 * nt + lane % 4 * 2 + e % 2;
            if (j >= k_end || (causal && j > pos[e / 2])) sc[nt][e] = kNegInf;
          }
      }
      // Online softmax; the warp owns whole rows, so the max needs only the quad.
      T* sPs = sP + s % 2 * BM * BN;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = srow + lane / 4 + 8 * h;
        float mx = kNegInf;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(sc[nt][2 * h], sc[nt][2 * h + 1]));
        mx = fmaxf(m_run[h], sm80::quad_max(mx) * mul);  // mul > 0 keeps -inf
        // A row with nothing allowed so far keeps max -inf; subtracting 0 keeps NaN out.
        const float base = mx == kNegInf ? 0.0f : mx;
        const float scale_old = exp2f(m_run[h] - base);
        m_run[h] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const float p0 = exp2f(fmaf(sc[nt][2 * h], mul, -base));
          const float p1 = exp2f(fmaf(sc[nt][2 * h + 1], mul, -base));
          sum += p0 + p1;
          *reinterpret_cast<std::uint32_t*>(sPs + swz_p(r, nt) + lane % 4 * 2) = pack2<T>(p0, p1);
        }
        l_run[h] = l_run[h] * scale_old + sum;
        if (lane % 4 == 0) sScale[s % 2 * BM + r] = scale_old;
      }
    }

    // Row sums to 1 / l for the output warps, and lse. A row that allowed nothing has l = 0:
    // output 0 and lse -inf, never NaN.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sm80::quad_sum(l_run[h]);
      const int r = srow + lane / 4 + 8 * h, x = m0 + r;
      if (!scoring || lane % 4 != 0) continue;
      sInv[r] = l > 0.0f ? 1.0f / l : 0.0f;
      const float lse = l > 0.0f ? (m_run[h] + __log2f(l)) * sm80::kLn2 : kNegInf;
      if (x >= rows) continue;
      if (params.n_splits > 1) {
        params.lse_part[((std::int64_t(split) * p.batch + b) * p.seqlen_q + x / Hq) * Hq + x % Hq] = lse;
      } else if (p.lse != nullptr) {
        p.lse[sm80::row_offset(p.lse_layout, b, x / Hq, x % Hq)] = lse;
      }
    }
    sm80::cp_async_wait<0>();  // with no key tile visited the Q copy may still be landing in sQ
    sync_all();                // sInv is written; the scores are done with sQ
    if (params.n_splits > 1) return;
    sync_all();  // the output warps staged the tile in sO
    store_out();
  } else {
    set_max_regs<true, kOutputRegs>();
    // Columns [col0, col0 + 64) of all 64 rows; m-tile mi holds rows 16 mi + lane / 4 + 8 h.
    // m-tiles of padding only (few heads) are skipped.
    const int col0 = kCols * (warp - kScoreWarps);
    const int m_tiles = min(4, (rows - m0 + 15) / 16);
    float o[4][kCols / 8][4] = {};
    for (int s = 0; s <= n && n > 0; ++s) {
      sm80::cp_async_wait<0>();  // the Q copy (step 0)
      sync_all();
      if (s == 0) continue;
      // O = O * scale + P V for tile s - 1; V rows are its K rows.
      const T* sKs = sK + (s - 1) % kStages * BN * D;
      const T* sPs = sP + (s - 1) % 2 * BM * BN;
      const float* scale = sScale + (s - 1) % 2 * BM;
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        if (mi >= m_tiles) break;
        const float sc0 = scale[16 * mi + lane / 4], sc1 = scale[16 * mi + lane / 4 + 8];
#pragma unroll
        for (int nt = 0; nt < kCols / 8; ++nt) {
          o[mi][nt][0] *= sc0;
          o[mi][nt][1] *= sc0;
          o[mi][nt][2] *= sc1;
          o[mi][nt][3] *= sc1;
        }
      }
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        std::uint32_t a[4][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
          if (mi < m_tiles) ldmatrix_x4(a[mi], sPs + swz_p(16 * mi + lane % 8 + (lane / 8) % 2 * 8, 2 * kk + lane / 16));
#pragma unroll
        for (int dj = 0; dj < kCols / 16; ++dj) {
          std::uint32_t vb[4];
          ldmatrix_x4_trans(vb, sKs + swz<D>(16 * kk + lane % 8 + (lane / 8) % 2 * 8, col0 / 8 + 2 * dj + lane / 16));
#pragma unroll
          for (int mi = 0; mi < 4; ++mi) {
            if (mi < m_tiles) {
              mma_16816<T>(o[mi][2 * dj], a[mi], vb[0], vb[1]);
              mma_16816<T>(o[mi][2 * dj + 1], a[mi], vb[2], vb[3]);
            }
          }
        }
      }
    }
    sm80::cp_async_wait<0>();
    sync_all();  // 1 / l of every row is in sInv

    if (params.n_splits > 1) {
      // f32 partials straight from registers: each quad writes 32 contiguous bytes of a row.
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        if (mi >= m_tiles) break;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = 16 * mi + lane / 4 + 8 * h, x = m0 + r;
          if (x >= rows) continue;
          const float inv_l = sInv[r];
          const std::int64_t row = ((std::int64_t(split) * p.batch + b) * p.seqlen_q + x / Hq) * Hq + x % Hq;
          float* dst = params.o_part + row * Dv + col0 + lane % 4 * 2;
#pragma unroll
          for (int nt = 0; nt < kCols / 8; ++nt)
            *reinterpret_cast<float2*>(dst + nt * 8) =
                make_float2(o[mi][nt][2 * h] * inv_l, o[mi][nt][2 * h + 1] * inv_l);
        }
      }
      return;
    }
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
      if (mi >= m_tiles) break;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 16 * mi + lane / 4 + 8 * h;
        const float inv_l = sInv[r];
#pragma unroll
        for (int nt = 0; nt < kCols / 8; ++nt)
          *reinterpret_cast<std::uint32_t*>(sO + swz<Dv>(r, col0 / 8 + nt) + lane % 4 * 2) =
              pack2<T>(o[mi][nt][2 * h] * inv_l, o[mi][nt][2 * h + 1] * inv_l);
      }
    }
    sync_all();  // the tile is in sO
    store_out();
  }
#endif
}

template <class T>
void launch(const DecodeParams& params, cudaStream_t stream) {
  const auto kernel = mla_decode_kernel<T>;
  // Above 48 KB a kernel must opt in to its dynamic shared memory.
  ATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const dim3 grid(unsigned(params.m_blocks), unsigned(params.n_splits), unsigned(params.p.batch));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(params);
  ATTN_CUDA_CHECK_LAUNCH("mla_decode_kernel");
}

}  // namespace attn::cuda::mla

/// The explicit instantiation for one dtype, for a src/cuda/mla/mla_decode_*.cu file.
#define ATTN_INSTANTIATE_MLA_DECODE(DTYPE, CTYPE)                                    \
  namespace attn::cuda::mla {                                                        \
  template <>                                                                        \
  void launch_decode<DType::DTYPE>(const DecodeParams& params, cudaStream_t stream) { \
    launch<CTYPE>(params, stream);                                                   \
  }                                                                                  \
  }
