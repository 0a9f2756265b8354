// MLA absorbed decode for sm80+ (mma.sync): one CTA per (64 query rows, KV split, sequence),
// every query head of the block sharing each latent K tile, which is also the V tile.
//
// Letters: Sq/Sk this sequence's query/key lengths, Hq query heads, D = 576, Dv = 512, BM = BN
// = 64. Rows x = i * Hq + h. Per key tile, with 8 warps (pair w, w + 4 owns rows 16 (w % 4)):
//   S  = Q K^T      warp half w / 4 computes keys [32 half, 32 half + 32) of its 16 rows
//   m  = row max    the pair's halves meet in shared memory (sRow)
//   P  = exp2(S - m)  each half writes its keys of P to shared memory (sP)
//   O += P V        warp half computes value columns [256 half, 256 half + 256) over all 64 keys
// Per head this costs 2 (576 + 512) flops per key against 1152 bytes of cache per key shared by
// all heads: at 128 heads the kernel is bound by the tensor cores, not by memory.
//
// Shared memory (T elements, rows of 16-byte chunks whose index is XOR-ed with row % 8, so the 8
// rows that one ldmatrix reads fall in 8 different bank groups without padding: padding would
// not fit two K stages in 227 KB):
//   sQ (BM, D)          the query rows; reused for the output tile (BM, Dv) in the epilogue
//   sK (2, BN, D)       key tile t in stage (t - t_begin) % 2; V is its first 512 columns
//   sP (BM, BN)         probabilities in T, the A operand of P V
//   sRow (2, BM) f32    per key half: row maxima, at the end row sums
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
  constexpr int D = kHeadDim, Dv = kHeadDimV, BM = kBlockM, BN = kBlockN;
  constexpr int kDvHalf = Dv / 2;  // value columns per warp
  constexpr float kNegInf = -INFINITY;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;
  T* sP = sK + 2 * BN * D;
  float* sRow = reinterpret_cast<float*>(sP + BM * BN);

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

  // This thread holds rows mrow + lane / 4 + 8 h (h = 0, 1) of the C fragments.
  const int half = warp / 4;
  const int mrow = (warp % 4) * 16;
  const bool warp_active = m0 + mrow < rows;  // warps of padding rows only synchronise
  int pos[2];  // key position of each held row's query: it may attend keys j <= pos
#pragma unroll
  for (int h = 0; h < 2; ++h) pos[h] = (m0 + mrow + lane / 4 + 8 * h) / Hq + offset;

  float o[kDvHalf / 8][4] = {};
  float m_run[2] = {kNegInf, kNegInf};  // running row max, log2 units
  float l_run[2] = {0.0f, 0.0f};        // running row sum of exp2(x - m_run) over this half's keys
  const float mul = params.scale_log2;

  int stage = 0;
  for (int t = t_begin; t < t_end; ++t, stage ^= 1) {
    sm80::cp_async_wait<0>();  // K[t] (and Q) landed
    __syncthreads();           // ... for every thread; and every warp is done with stage ^ 1
    if (t + 1 < t_end) load_k(t + 1, stage ^ 1);
    sm80::cp_async_commit();
    const T* sKs = sK + stage * BN * D;
    const int n0 = t * BN;

    // S = Q K^T: 16 rows x 32 keys per warp, over 576 dims.
    float s[4][4] = {};
    if (warp_active) {
      // Unrolled by 4 only: the swizzle repeats every 4 steps (8 chunks), so 4 bodies share
      // their addresses up to a constant, where a full unroll runs out of registers.
#pragma unroll 4
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[4];
        ldmatrix_x4(a, sQ + swz<D>(mrow + lane % 8 + (lane / 8) % 2 * 8, 2 * kk + lane / 16));
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          std::uint32_t kb[4];
          ldmatrix_x4(kb, sKs + swz<D>(32 * half + 16 * nj + lane % 8 + lane / 16 * 8, 2 * kk + (lane / 8) % 2));
          mma_16816<T>(s[2 * nj], a, kb[0], kb[1]);
          mma_16816<T>(s[2 * nj + 1], a, kb[2], kb[3]);
        }
      }
      // Only the tiles that reach past k_end or, under causal, past the first row's position need a mask.
      const bool partial = n0 + BN > k_end || (causal && n0 + BN - 1 > i_first + offset);
      if (partial) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = n0 + 32 * half + 8 * nt + lane % 4 * 2 + e % 2;
            if (j >= k_end || (causal && j > pos[e / 2])) s[nt][e] = kNegInf;
          }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = kNegInf;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        mx = sm80::quad_max(mx);
        if (lane % 4 == 0) sRow[half * BM + mrow + lane / 4 + 8 * h] = mx;
      }
    }
    __syncthreads();  // both halves' row maxima are in sRow

    if (warp_active) {
      // Online softmax over the pair's 64 keys: both warps of a pair derive the same max, so
      // their O halves and l halves stay on one scale.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = mrow + lane / 4 + 8 * h;
        const float mx = fmaxf(m_run[h], fmaxf(sRow[r], sRow[BM + r]) * mul);  // mul > 0 keeps -inf
        // A row with nothing allowed so far keeps max -inf; subtracting 0 keeps NaN out.
        const float base = mx == kNegInf ? 0.0f : mx;
        const float scale_old = exp2f(m_run[h] - base);
        m_run[h] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const float p0 = exp2f(fmaf(s[nt][2 * h], mul, -base));
          const float p1 = exp2f(fmaf(s[nt][2 * h + 1], mul, -base));
          sum += p0 + p1;
          *reinterpret_cast<std::uint32_t*>(sP + swz<BN>(r, 4 * half + nt) + lane % 4 * 2) = pack2<T>(p0, p1);
        }
        l_run[h] = l_run[h] * scale_old + sum;
#pragma unroll
        for (int dt = 0; dt < kDvHalf / 8; ++dt) {
          o[dt][2 * h] *= scale_old;
          o[dt][2 * h + 1] *= scale_old;
        }
      }
    }
    __syncthreads();  // P of both halves is in sP

    if (warp_active) {
      // O += P V for this warp's 256 value columns; V rows are the K tile's rows.
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        std::uint32_t a[4];
        ldmatrix_x4(a, sP + swz<BN>(mrow + lane % 8 + (lane / 8) % 2 * 8, 2 * kk + lane / 16));
#pragma unroll
        for (int dj = 0; dj < kDvHalf / 16; ++dj) {
          std::uint32_t vb[4];
          ldmatrix_x4_trans(vb, sKs + swz<D>(16 * kk + lane % 8 + (lane / 8) % 2 * 8,
                                             (kDvHalf * half) / 8 + 2 * dj + lane / 16));
          mma_16816<T>(o[2 * dj], a, vb[0], vb[1]);
          mma_16816<T>(o[2 * dj + 1], a, vb[2], vb[3]);
        }
      }
    }
  }

  // Epilogue. Row sums: add the two halves' (same scale) through sRow. A row that allowed
  // nothing has l = 0: output 0 and lse -inf, never NaN.
  sm80::cp_async_wait<0>();  // with no key tile visited the Q copy may still be landing in sQ
  __syncthreads();           // every warp is done with sRow's maxima and with sQ
  float l_half[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) l_half[h] = sm80::quad_sum(l_run[h]);
  if (warp_active && lane % 4 == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) sRow[half * BM + mrow + lane / 4 + 8 * h] = l_half[h];
  }
  __syncthreads();
  float inv_l[2], lse[2];
  int x_of[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = mrow + lane / 4 + 8 * h;
    const float l = sRow[r] + sRow[BM + r];
    inv_l[h] = l > 0.0f ? 1.0f / l : 0.0f;
    lse[h] = l > 0.0f ? (m_run[h] + __log2f(l)) * sm80::kLn2 : kNegInf;
    x_of[h] = m0 + r;
  }

  if (params.n_splits > 1) {
    // f32 partials straight from registers: each quad writes 32 contiguous bytes of a row.
    if (!warp_active) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int x = x_of[h];
      if (x >= rows) continue;
      const std::int64_t row = ((std::int64_t(split) * p.batch + b) * p.seqlen_q + x / Hq) * Hq + x % Hq;
      float* dst = params.o_part + row * Dv + kDvHalf * half + lane % 4 * 2;
#pragma unroll
      for (int dt = 0; dt < kDvHalf / 8; ++dt)
        *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(o[dt][2 * h] * inv_l[h], o[dt][2 * h + 1] * inv_l[h]);
      if (half == 0 && lane % 4 == 0) params.lse_part[row] = lse[h];
    }
    return;
  }

  // Stage the output tile in sQ so that the global stores are 16-byte and row-contiguous.
  T* sO = sQ;
  if (warp_active) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = mrow + lane / 4 + 8 * h;
#pragma unroll
      for (int dt = 0; dt < kDvHalf / 8; ++dt)
        *reinterpret_cast<std::uint32_t*>(sO + swz<Dv>(r, kDvHalf * half / 8 + dt) + lane % 4 * 2) =
            pack2<T>(o[dt][2 * h] * inv_l[h], o[dt][2 * h + 1] * inv_l[h]);
      if (p.lse != nullptr && half == 0 && lane % 4 == 0 && x_of[h] < rows)
        p.lse[sm80::row_offset(p.lse_layout, b, x_of[h] / Hq, x_of[h] % Hq)] = lse[h];
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
