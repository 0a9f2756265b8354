// MLA absorbed decode for sm80+ (mma.sync): one CTA per (64 query rows, KV split, sequence),
// every query head of the block sharing each latent K tile, which is also the V tile.
//
// Letters: Sq/Sk this sequence's query/key lengths, Hq query heads, D = 576, Dv = 512, BM = BN
// = 64. Rows x = i * Hq + h. Per key tile, with 8 warps:
//   S  = Q K^T        score warps 0-3, each 32 rows x 32 keys (warp w: rows 32 (w % 2), keys 32 (w / 2))
//   m  = row max      the two key halves of a row meet in shared memory (sRow)
//   P  = exp2(S - m)  the score warps write P and each row's rescale factor to shared memory
//   O += P V          all 8 warps, each 64 rows x 64 value columns (warp w: columns 64 w)
// Shared-memory reads bound mma.sync here (an ldmatrix.x4 moves 512 bytes, 4 clocks of the
// SM's 128 B/clock, about what 2 to 3 mma take), so the warp tiles are chosen for reuse:
// 32 x 32 score tiles read 4 fragments per 8 mma, 64 x 64 output tiles 8 per 32 mma. (v1 had
// 8 warps of 16 x 32 scores and 16 x 256 outputs: 1408 ldmatrix per tile against 832 now.)
// Per head this costs 2 (576 + 512) flops per key against 1152 bytes of cache per key shared by
// all heads: at 128 heads the kernel is bound by the SM, not by memory.
//
// Shared memory (T elements, rows of 16-byte chunks whose index is XOR-ed with row % 8, so the 8
// rows that one ldmatrix reads fall in 8 different bank groups without padding: padding would
// not fit two K stages in 227 KB):
//   sQ (BM, D)          the query rows; reused for the output tile (BM, Dv) in the epilogue
//   sK (2, BN, D)       key tile t in stage (t - t_begin) % 2; V is its first 512 columns
//   sP (BM, BN)         probabilities in T, the A operand of P V
//   sRow (2, BM) f32    per key half: row maxima, at the end row sums
//   sScale (BM) f32     per row: the factor O is rescaled by, at the end 1 / (row sum)
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

/// Element offset of (row r, 16-byte chunk c) in a swizzled tile of COLS columns.
template <int COLS>
__device__ __forceinline__ int swz(int r, int c) {
  return r * COLS + ((c ^ (r & 7)) << 3);
}

/// Copies 64 rows of 576 T into a swizzled tile, 16 bytes per cp.async: 8 threads per row
/// (128 contiguous bytes per warp instruction and row), 32 rows per pass, two passes.
/// `row_src(r)` is the global row or nullptr (zero fill, nothing read); `any` names a valid
/// address for the zero-filling copies.
template <class T, class RowSrc>
__device__ __forceinline__ void load_rows(T* dst, const T* any, RowSrc row_src) {
  constexpr int kChunks = kHeadDim / 8;
  const int c0 = int(threadIdx.x) % 8;
#pragma unroll
  for (int pass = 0; pass < 2; ++pass) {
    const int r = int(threadIdx.x) / 8 + 32 * pass;
    const T* src = row_src(r);
#pragma unroll
    for (int c = c0; c < kChunks; c += 8) cp_async_16(dst + swz<kHeadDim>(r, c), src != nullptr ? src + c * 8 : any, src != nullptr);
  }
}
static_assert(kThreads == 256 && kBlockM == 64 && kBlockN == 64, "load_rows copies 64 rows with 256 threads");

template <class T>
__global__ void __launch_bounds__(kThreads, 1) mla_decode_kernel(const __grid_constant__ DecodeParams params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // Two K stages need 230 KB of shared memory, which only sm_90 offers (plan_decode refuses
  // smaller devices), so the sm_80 build compiles no body: half the compile time.
  (void)params;
#else
  constexpr int D = kHeadDim, Dv = kHeadDimV, BM = kBlockM, BN = kBlockN;
  constexpr int kScoreWarps = 4;
  constexpr int kCols = Dv / kWarps;  // value columns per warp
  constexpr float kNegInf = -INFINITY;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;
  T* sP = sK + 2 * BN * D;
  float* sRow = reinterpret_cast<float*>(sP + BM * BN);
  float* sScale = sRow + 2 * BM;

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
  const int t_begin = min(tiles, split * per_split), t_end = min(tiles, t_begin + per_split);

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  load_rows<T>(sQ, q, [&](int r) -> const T* {
    const int x = m0 + r;
    return x < rows ? q + sm80::row_offset(p.q_layout, b, x / Hq, x % Hq) : nullptr;
  });
  sm80::cp_async_commit();
  // Keys past k_end are zero-filled and never read: past Sk the block table must not be touched.
  auto load_k = [&](int t, int stage) {
    const int n0 = t * BN;
    load_rows<T>(sK + stage * BN * D, k, [&](int r) -> const T* {
      return n0 + r < k_end ? k + sm80::row_offset(p.k_layout, b, n0 + r, 0) : nullptr;
    });
  };
  if (t_begin < t_end) load_k(t_begin, 0);
  sm80::cp_async_commit();

  // Score warps: rows srow + 16 mi + lane / 4 + 8 h of the C fragments, keys skey + [0, 32).
  const int srow = 32 * (warp % 2), khalf = warp / 2 % 2, skey = 32 * khalf;
  const bool scoring = warp < kScoreWarps && m0 + srow < rows;  // 32-row groups of padding skip the math
  int pos[2][2];  // key position of each held row's query: it may attend keys j <= pos
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) pos[mi][h] = (m0 + srow + 16 * mi + lane / 4 + 8 * h) / Hq + offset;
  float m_run[2][2], l_run[2][2];  // running row max (log2 units); row sum of exp2(x - m_run) over this key half
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m_run[mi][h] = kNegInf;
      l_run[mi][h] = 0.0f;
    }
  // Every warp: columns [kCols warp, kCols warp + 64) of all 64 rows; m-tile mi holds rows
  // 16 mi + lane / 4 + 8 h. m-tiles of padding only (few heads) are skipped.
  float o[4][kCols / 8][4] = {};
  const int m_tiles = min(4, (rows - m0 + 15) / 16);
  const float mul = params.scale_log2;

  int stage = 0;
  for (int t = t_begin; t < t_end; ++t, stage ^= 1) {
    sm80::cp_async_wait<0>();  // K[t] (and Q) landed
    __syncthreads();           // ... for every thread; and every warp is done with stage ^ 1
    if (t + 1 < t_end) load_k(t + 1, stage ^ 1);
    sm80::cp_async_commit();
    const T* sKs = sK + stage * BN * D;
    const int n0 = t * BN;

    // S = Q K^T: 32 rows x 32 keys per score warp, over 576 dims.
    float s[2][4][4] = {};
    if (scoring) {
      // Unrolled by 4 only: the swizzle repeats every 4 steps (8 chunks), so 4 bodies share
      // their addresses up to a constant, where a full unroll runs out of registers.
#pragma unroll 4
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
          ldmatrix_x4(a[mi], sQ + swz<D>(srow + 16 * mi + lane % 8 + (lane / 8) % 2 * 8, 2 * kk + lane / 16));
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          std::uint32_t kb[4];
          ldmatrix_x4(kb, sKs + swz<D>(skey + 16 * nj + lane % 8 + lane / 16 * 8, 2 * kk + (lane / 8) % 2));
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma_16816<T>(s[mi][2 * nj], a[mi], kb[0], kb[1]);
            mma_16816<T>(s[mi][2 * nj + 1], a[mi], kb[2], kb[3]);
          }
        }
      }
      // Only the tiles that reach past k_end or, under causal, past the first row's position need a mask.
      const bool partial = n0 + BN > k_end || (causal && n0 + BN - 1 > i_first + offset);
      if (partial) {
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int j = n0 + skey + 8 * nt + lane % 4 * 2 + e % 2;
              if (j >= k_end || (causal && j > pos[mi][e / 2])) s[mi][nt][e] = kNegInf;
            }
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = kNegInf;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * h], s[mi][nt][2 * h + 1]));
          mx = sm80::quad_max(mx);
          if (lane % 4 == 0) sRow[khalf * BM + srow + 16 * mi + lane / 4 + 8 * h] = mx;
        }
    }
    __syncthreads();  // both key halves' row maxima are in sRow

    if (scoring) {
      // Online softmax over the tile's 64 keys: both score warps of a row derive the same max,
      // so their l halves stay on one scale; the one of key half 0 publishes the rescale factor.
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = srow + 16 * mi + lane / 4 + 8 * h;
          const float mx = fmaxf(m_run[mi][h], fmaxf(sRow[r], sRow[BM + r]) * mul);  // mul > 0 keeps -inf
          // A row with nothing allowed so far keeps max -inf; subtracting 0 keeps NaN out.
          const float base = mx == kNegInf ? 0.0f : mx;
          const float scale_old = exp2f(m_run[mi][h] - base);
          m_run[mi][h] = mx;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            const float p0 = exp2f(fmaf(s[mi][nt][2 * h], mul, -base));
            const float p1 = exp2f(fmaf(s[mi][nt][2 * h + 1], mul, -base));
            sum += p0 + p1;
            *reinterpret_cast<std::uint32_t*>(sP + swz<BN>(r, 4 * khalf + nt) + lane % 4 * 2) = pack2<T>(p0, p1);
          }
          l_run[mi][h] = l_run[mi][h] * scale_old + sum;
          if (khalf == 0 && lane % 4 == 0) sScale[r] = scale_old;
        }
    }
    __syncthreads();  // P and the rescale factors are in shared memory

    // O = O * scale + P V for this warp's 64 value columns of all 64 rows; V rows are the K tile's rows.
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
      if (mi >= m_tiles) break;
      const float sc0 = sScale[16 * mi + lane / 4], sc1 = sScale[16 * mi + lane / 4 + 8];
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
        if (mi < m_tiles) ldmatrix_x4(a[mi], sP + swz<BN>(16 * mi + lane % 8 + (lane / 8) % 2 * 8, 2 * kk + lane / 16));
#pragma unroll
      for (int dj = 0; dj < kCols / 16; ++dj) {
        std::uint32_t vb[4];
        ldmatrix_x4_trans(vb, sKs + swz<D>(16 * kk + lane % 8 + (lane / 8) % 2 * 8, kCols * warp / 8 + 2 * dj + lane / 16));
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

  // Epilogue. Row sums: add the two key halves' (same scale) through sRow; the score warp of
  // key half 0 turns them into 1 / l in sScale and writes lse. A row that allowed nothing has
  // l = 0: output 0 and lse -inf, never NaN.
  sm80::cp_async_wait<0>();  // with no key tile visited the Q copy may still be landing in sQ
  __syncthreads();           // every warp is done with sRow's maxima, sScale and sQ
  if (scoring) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float l = sm80::quad_sum(l_run[mi][h]);
        if (lane % 4 == 0) sRow[khalf * BM + srow + 16 * mi + lane / 4 + 8 * h] = l;
      }
  }
  __syncthreads();
  if (scoring && khalf == 0 && lane % 4 == 0) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = srow + 16 * mi + lane / 4 + 8 * h, x = m0 + r;
        const float l = sRow[r] + sRow[BM + r];
        sScale[r] = l > 0.0f ? 1.0f / l : 0.0f;
        const float lse = l > 0.0f ? (m_run[mi][h] + __log2f(l)) * sm80::kLn2 : kNegInf;
        if (x >= rows) continue;
        if (params.n_splits > 1) {
          params.lse_part[((std::int64_t(split) * p.batch + b) * p.seqlen_q + x / Hq) * Hq + x % Hq] = lse;
        } else if (p.lse != nullptr) {
          p.lse[sm80::row_offset(p.lse_layout, b, x / Hq, x % Hq)] = lse;
        }
      }
  }
  __syncthreads();  // 1 / l of every row is in sScale

  if (params.n_splits > 1) {
    // f32 partials straight from registers: each quad writes 32 contiguous bytes of a row.
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
      if (mi >= m_tiles) break;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 16 * mi + lane / 4 + 8 * h, x = m0 + r;
        if (x >= rows) continue;
        const float inv_l = sScale[r];
        const std::int64_t row = ((std::int64_t(split) * p.batch + b) * p.seqlen_q + x / Hq) * Hq + x % Hq;
        float* dst = params.o_part + row * Dv + kCols * warp + lane % 4 * 2;
#pragma unroll
        for (int nt = 0; nt < kCols / 8; ++nt)
          *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[mi][nt][2 * h] * inv_l, o[mi][nt][2 * h + 1] * inv_l);
      }
    }
    return;
  }

  // Stage the output tile in sQ so that the global stores are 16-byte and row-contiguous.
  T* sO = sQ;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
    if (mi >= m_tiles) break;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = 16 * mi + lane / 4 + 8 * h;
      const float inv_l = sScale[r];
#pragma unroll
      for (int nt = 0; nt < kCols / 8; ++nt)
        *reinterpret_cast<std::uint32_t*>(sO + swz<Dv>(r, kCols * warp / 8 + nt) + lane % 4 * 2) =
            pack2<T>(o[mi][nt][2 * h] * inv_l, o[mi][nt][2 * h + 1] * inv_l);
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out);
  constexpr int kChunks = Dv / 8;
  for (int id = int(threadIdx.x); id < BM * kChunks; id += kThreads) {
    const int r = id / kChunks, c = id % kChunks;
    const int x = m0 + r;
    if (x >= rows) continue;
    *reinterpret_cast<uint4*>(out + sm80::row_offset(p.out_layout, b, x / Hq, x % Hq) + c * 8) =
        *reinterpret_cast<const uint4*>(sO + swz<Dv>(r, c));
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
