// FlashAttention-2 forward for sm80+ (mma.sync): one CTA per (query-row tile, slot, batch),
// 4 warps each owning 16 rows, K/V tiles double-buffered through cp.async, online softmax in
// registers in the log2 domain.
//
// Letters: B batch, Sq/Sk this sequence's query/key lengths, D/Dv head dims, BM/BN tile rows
// and keys (fwd_tile), G group size. Shared memory (T elements, each row padded by 16 bytes so
// the 8 rows that one ldmatrix reads fall in 8 different bank groups):
//   sQ (BM, D + 8)               reused for the output tile (BM, Dv + 8) in the epilogue
//   sK (2, BN, D + 8)            stage s holds key tile t when t is the s-th visited, mod 2
//   sV (2, BN, Dv + 8)
//
// One kernel serves padded, packed and paged K/V (TokenLayout gathers rows one token at a
// time), GQA (slot -> kv head), decode (GQA packing + KV splits, see FwdParams) and every mask
// (MaskEval: empty key tiles are never loaded, full ones skip the per-element test).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/check.hpp"
#include "cuda/fwd_params.hpp"
#include "cuda/sm80/ptx.cuh"
#include "mask_eval.hpp"

namespace attn::cuda::sm80 {

using detail::MaskEval;
using detail::TileKind;

inline constexpr float kLn2 = 0.693147180559945309f;
inline constexpr float kLog2e = 1.44269504088896341f;

/// tanh through exp2. Fast math turns tanhf into tanh.approx (about 2^-11 relative error),
/// which a soft-cap of 30 would scale into 1e-2 errors in the logits; this stays near 1e-7.
__device__ __forceinline__ float tanh_exp2(float y) {
  const float t = 1.0f - 2.0f / (exp2f(2.0f * kLog2e * fabsf(y)) + 1.0f);
  return copysignf(t, y);
}

template <class T, int D, int Dv>
struct FwdTraits {
  static constexpr FwdTile kTile = fwd_tile(D);
  static constexpr int kBlockM = kTile.block_m;
  static constexpr int kBlockN = kTile.block_n;
  static_assert(kBlockM == 16 * kFwdWarps, "each warp owns 16 query rows");
  static_assert(D % 16 == 0 && Dv % 16 == 0 && Dv <= D, "head dims are multiples of 16, Dv <= D");
  static constexpr int kPad = 8;  // 16 bytes
  static constexpr int kQStride = D + kPad;
  static constexpr int kKStride = D + kPad;
  static constexpr int kVStride = Dv + kPad;
  static constexpr int kOStride = Dv + kPad;
  static constexpr int kSmemQ = kBlockM * kQStride;
  static constexpr int kSmemK = 2 * kBlockN * kKStride;
  static constexpr int kSmemV = 2 * kBlockN * kVStride;
  static constexpr int kSmemBytes = (kSmemQ + kSmemK + kSmemV) * int(sizeof(T));
  // Q fragments in registers cost D / 4 registers; beyond 128 they would crowd out the
  // accumulators, so larger heads re-read Q from shared memory for every key tile.
  static constexpr bool kQInRegs = D <= 128;
};

/// TokenLayout::offset with 32-bit token arithmetic: its 64-bit `t / page_size` compiles to a
/// division subroutine of about 70 instructions, and paged tiles divide once per row.
__device__ __forceinline__ std::int64_t row_offset(const detail::TokenLayout& l, int b, int t, int h) {
  if (l.block_table != nullptr) {
    const int page_index = t / l.page_size;
    const std::int64_t page = l.block_table[b * l.block_table_stride + page_index];
    return page * l.page_stride + std::int64_t(t - page_index * l.page_size) * l.token_stride +
           std::int64_t(h) * l.head_stride;
  }
  return l.offset(b, t, h);
}

/// Copies `ROWS` x `COLS` elements of T, 16 bytes per cp.async, from the global rows that
/// `row_ptr(r)` returns (nullptr: zero fill) into shared memory rows of `stride` elements.
/// `base` is any valid global address, named by the zero-filling copies that read nothing.
template <class T, int ROWS, int COLS, class RowPtr>
__device__ __forceinline__ void load_tile_async(T* smem, int stride, const T* base, RowPtr row_ptr) {
  constexpr int kChunks = COLS / 8;
#pragma unroll
  for (int id = int(threadIdx.x); id < ROWS * kChunks; id += kFwdThreads) {
    const int r = id / kChunks, c = id % kChunks;
    const T* src = row_ptr(r);
    cp_async_16(smem + r * stride + c * 8, src != nullptr ? src + c * 8 : base, src != nullptr);
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <class T, int D, int Dv>
__global__ void __launch_bounds__(kFwdThreads) flash_fwd_kernel(const __grid_constant__ FwdParams params) {
  using Tr = FwdTraits<T, D, Dv>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr float kNegInf = -INFINITY;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kSmemQ;
  T* sV = sK + Tr::kSmemK;

  const detail::AttentionProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int split = int(blockIdx.x) % params.n_splits;
  // Reversed so that under a causal mask the CTAs with the most key tiles start first.
  const int m_tile = params.m_tiles - 1 - int(blockIdx.x) / params.n_splits;
  const int slot = int(blockIdx.y), b = int(blockIdx.z);
  const int pack = params.pack;
  const int Sq = p.seqlen_q_of(b), Sk = p.seqlen_k_of(b);
  const int rows = Sq * pack;  // valid tile rows of this (slot, batch)
  const int m0 = m_tile * BM;
  if (m0 >= rows) return;
  const int hk = pack > 1 ? slot : slot / p.group_size();
  const int i_lo = m0 / pack, i_hi = (min(rows, m0 + BM) - 1) / pack + 1;  // query rows of the tile
  // Packing is only planned when the block layout (the one per-head mask part) is shared.
  const MaskEval me{&p.mask, Sq, Sk, pack > 1 ? 0 : slot};

  // This CTA's share of the key tiles that the mask leaves reachable.
  int k_lo, k_hi;
  me.key_range(i_lo, i_hi, k_lo, k_hi);
  const int t_first = k_lo / BN, t_last = k_hi > k_lo ? (k_hi + BN - 1) / BN : t_first;
  const int per_split = (t_last - t_first + params.n_splits - 1) / params.n_splits;
  const int t_begin = min(t_last, t_first + split * per_split), t_end = min(t_last, t_begin + per_split);
  auto tile_kind = [&](int t) { return me.classify(i_lo, i_hi, t * BN, min(Sk, (t + 1) * BN)); };
  auto next_tile = [&](int t) {
    while (t < t_end && tile_kind(t) == TileKind::empty) ++t;
    return t;
  };

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  load_tile_async<T, BM, D>(sQ, Tr::kQStride, q, [&](int r) -> const T* {
    const int x = m0 + r;
    if (x >= rows) return nullptr;
    return q + row_offset(p.q_layout, b, x / pack, pack > 1 ? slot * pack + x % pack : slot);
  });
  cp_async_commit();
  // Rows past Sk are zero-filled: the block table must not be read there, and V must hold
  // finite values where P is 0.
  auto load_k = [&](int t, int stage) {
    const int n0 = t * BN;
    load_tile_async<T, BN, D>(sK + stage * BN * Tr::kKStride, Tr::kKStride, k, [&](int r) -> const T* {
      return n0 + r < Sk ? k + row_offset(p.k_layout, b, n0 + r, hk) : nullptr;
    });
  };
  auto load_v = [&](int t, int stage) {
    const int n0 = t * BN;
    load_tile_async<T, BN, Dv>(sV + stage * BN * Tr::kVStride, Tr::kVStride, v, [&](int r) -> const T* {
      return n0 + r < Sk ? v + row_offset(p.v_layout, b, n0 + r, hk) : nullptr;
    });
  };

  // This thread's two rows within the tile (the c0/c1 and c2/c3 halves of each fragment).
  const int row0 = warp * 16 + lane / 4;
  int tok[2];
  bool row_ok[2];
  for (int h = 0; h < 2; ++h) {
    const int x = m0 + row0 + 8 * h;
    row_ok[h] = x < rows;
    tok[h] = x / pack;
  }
  // Warps whose 16 rows are all padding (decode tiles) still load and synchronise, but skip the math.
  const bool warp_active = m0 + warp * 16 < rows;

  float o[Dv / 8][4] = {};
  float m_run[2] = {kNegInf, kNegInf};  // running row max, log2 units
  float l_run[2] = {0.0f, 0.0f};        // running row sum of exp2(x - m_run), this thread's columns
  std::uint32_t qf[Tr::kQInRegs ? D / 16 : 1][4];

  // K and V travel in separate cp.async groups (committed in the order Q, K0, V0, K1, V1, ...)
  // so that Q K^T starts while V is still landing, and each prefetch overlaps the math of the
  // tile before it. Every iteration commits exactly two groups, empty or not, so the counts
  // in cp_async_wait hold at the last tile too.
  int t = next_tile(t_begin);
  if (t < t_end) load_k(t, 0);
  cp_async_commit();
  if (t < t_end) load_v(t, 0);
  cp_async_commit();
  int stage = 0;
  bool first = true;
  // Scores in log2 units are s * mul: scores stay raw until the exp2, where the scale folds
  // into one FFMA. Soft-capped scores are already in log2 units.
  const float mul = p.softcap > 0.0f ? 1.0f : params.scale_log2;
  while (t < t_end) {
    const TileKind kind = tile_kind(t);
    const int t_next = next_tile(t + 1);
    cp_async_wait<1>();  // Q and K[t] have landed; V[t] may be in flight
    __syncthreads();

    float s[BN / 8][4] = {};
    if (warp_active) {
      auto q_frag = [&](std::uint32_t (&a)[4], int kk) {
        ldmatrix_x4(a, sQ + (warp * 16 + lane % 8 + (lane / 8) % 2 * 8) * Tr::kQStride + kk * 16 + lane / 16 * 8);
      };
      if constexpr (Tr::kQInRegs) {
        if (first) {
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk) q_frag(qf[kk], kk);
        }
      }
      // S = Q K^T for this warp's 16 rows x BN keys.
      const T* sKs = sK + stage * BN * Tr::kKStride;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[4];
        if constexpr (Tr::kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = qf[kk][e];
        } else {
          q_frag(a, kk);
        }
#pragma unroll
        for (int nj = 0; nj < BN / 16; ++nj) {
          std::uint32_t kb[4];
          ldmatrix_x4(kb, sKs + (nj * 16 + lane % 8 + lane / 16 * 8) * Tr::kKStride + kk * 16 + (lane / 8) % 2 * 8);
          mma_16816<T>(s[2 * nj], a, kb[0], kb[1]);
          mma_16816<T>(s[2 * nj + 1], a, kb[2], kb[3]);
        }
      }
    }
    // The other K stage held K[t-1], which every warp finished reading before the barrier above.
    if (t_next < t_end) load_k(t_next, stage ^ 1);
    cp_async_commit();

    float scale_old[2] = {1.0f, 1.0f};
    if (warp_active) {
      const int n0 = t * BN;
      if (p.softcap > 0.0f) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[nt][e] = params.softcap_log2 * tanh_exp2(s[nt][e] * (p.scale / p.softcap));
      }
      if (kind == TileKind::partial || n0 + BN > Sk) {
        // One rolled copy of the mask predicate fills a bit per score, instead of BN / 2
        // unrolled copies of it bloating the kernel; element idx is s[idx / 4][idx % 4].
        std::uint32_t keep = 0;
#pragma unroll 1
        for (int idx = 0; idx < BN / 2; ++idx) {
          const int j = n0 + idx / 4 * 8 + lane % 4 * 2 + idx % 2;
          const bool upper = idx % 4 >= 2;  // rows row0 + 8
          // Padding rows (past Sq) keep finite scores; their results are never stored.
          const bool ok = j < Sk && (!(upper ? row_ok[1] : row_ok[0]) || me.allows(upper ? tok[1] : tok[0], j));
          keep |= std::uint32_t(ok) << idx;
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (((keep >> (nt * 4 + e)) & 1u) == 0) s[nt][e] = kNegInf;
      }

      // Online softmax: new row max, rescale what was accumulated, exponentiate.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = kNegInf;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        mx = fmaxf(m_run[h], quad_max(mx) * mul);  // mul > 0 keeps the order and -inf
        // A row with nothing allowed so far keeps max -inf; subtracting 0 instead keeps
        // exp2(-inf - -inf) = NaN out and leaves its probabilities at exactly 0.
        const float base = mx == kNegInf ? 0.0f : mx;
        scale_old[h] = exp2f(m_run[h] - base);
        m_run[h] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
          s[nt][2 * h] = exp2f(fmaf(s[nt][2 * h], mul, -base));
          s[nt][2 * h + 1] = exp2f(fmaf(s[nt][2 * h + 1], mul, -base));
          sum += s[nt][2 * h] + s[nt][2 * h + 1];
        }
        l_run[h] = l_run[h] * scale_old[h] + sum;
      }
#pragma unroll
      for (int dt = 0; dt < Dv / 8; ++dt) {
        o[dt][0] *= scale_old[0];
        o[dt][1] *= scale_old[0];
        o[dt][2] *= scale_old[1];
        o[dt][3] *= scale_old[1];
      }
    }
    cp_async_wait<1>();  // V[t] has landed; only K[t_next] may be in flight
    __syncthreads();

    if (warp_active) {
      // O += P V. The C layout of two adjacent 8-key score tiles is the A layout of one
      // 16-key step, so P goes from accumulators to operands without shared memory.
      const T* sVs = sV + stage * BN * Tr::kVStride;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const std::uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dj = 0; dj < Dv / 16; ++dj) {
          std::uint32_t vb[4];
          ldmatrix_x4_trans(vb, sVs + (kk * 16 + lane % 8 + (lane / 8) % 2 * 8) * Tr::kVStride + dj * 16 + lane / 16 * 8);
          mma_16816<T>(o[2 * dj], a, vb[0], vb[1]);
          mma_16816<T>(o[2 * dj + 1], a, vb[2], vb[3]);
        }
      }
    }
    // The other V stage held V[t-1], which every warp finished reading before the barrier above.
    if (t_next < t_end) load_v(t_next, stage ^ 1);
    cp_async_commit();
    first = false;
    stage ^= 1;
    t = t_next;
  }

  // Epilogue. A row that allowed nothing has l = 0: output 0 and lse -inf, never NaN.
  float inv_l[2], lse[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = quad_sum(l_run[h]);
    inv_l[h] = l > 0.0f ? 1.0f / l : 0.0f;
    lse[h] = l > 0.0f ? (m_run[h] + __log2f(l)) * kLn2 : kNegInf;
  }
  const int Hq = p.heads_q;
  auto head_of = [&](int x) { return pack > 1 ? slot * pack + x % pack : slot; };

  if (params.n_splits > 1) {
    // Partials in f32, straight from registers (the combine kernel reads them once).
    for (int h = 0; h < 2; ++h) {
      if (!row_ok[h] || !warp_active) continue;
      const int x = m0 + row0 + 8 * h;
      const std::int64_t row = ((std::int64_t(split) * p.batch + b) * p.seqlen_q + tok[h]) * Hq + head_of(x);
      float* dst = params.o_part + row * Dv;
#pragma unroll
      for (int dt = 0; dt < Dv / 8; ++dt)
        *reinterpret_cast<float2*>(dst + dt * 8 + lane % 4 * 2) =
            make_float2(o[dt][2 * h] * inv_l[h], o[dt][2 * h + 1] * inv_l[h]);
      if (lane % 4 == 0) params.lse_part[row] = lse[h];
    }
    cp_async_wait<0>();  // a split that visited no key tile must not exit with its Q copy in flight
    return;
  }

  // Stage the tile in shared memory (over sQ) so the global stores are 16-byte and row-contiguous.
  cp_async_wait<0>();  // with no key tile visited, the Q copy may still be landing in sQ
  __syncthreads();
  T* sO = sQ;
  if (warp_active) {
#pragma unroll
    for (int dt = 0; dt < Dv / 8; ++dt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<std::uint32_t*>(sO + (row0 + 8 * h) * Tr::kOStride + dt * 8 + lane % 4 * 2) =
            pack2<T>(o[dt][2 * h] * inv_l[h], o[dt][2 * h + 1] * inv_l[h]);
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out);
  constexpr int kChunks = Dv / 8;
  for (int id = int(threadIdx.x); id < BM * kChunks; id += kFwdThreads) {
    const int r = id / kChunks, c = id % kChunks;
    const int x = m0 + r;
    if (x >= rows) continue;
    *reinterpret_cast<uint4*>(out + row_offset(p.out_layout, b, x / pack, head_of(x)) + c * 8) =
        *reinterpret_cast<const uint4*>(sO + r * Tr::kOStride + c * 8);
  }
  if (p.lse != nullptr && lane % 4 == 0 && warp_active) {
    for (int h = 0; h < 2; ++h) {
      const int x = m0 + row0 + 8 * h;
      if (x < rows) p.lse[row_offset(p.lse_layout, b, tok[h], head_of(x))] = lse[h];
    }
  }
}

template <class T, int D, int Dv>
void launch_fwd(const FwdParams& params, cudaStream_t stream) {
  using Tr = FwdTraits<T, D, Dv>;
  const auto kernel = flash_fwd_kernel<T, D, Dv>;
  constexpr int smem = Tr::kSmemBytes;
  // Above 48 KB a kernel must opt in to its dynamic shared memory.
  ATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(unsigned(params.m_tiles * params.n_splits), unsigned(params.slots), unsigned(params.p.batch));
  kernel<<<grid, kFwdThreads, smem, stream>>>(params);
  ATTN_CUDA_CHECK_LAUNCH("flash_fwd_kernel");
}

}  // namespace attn::cuda::sm80

/// One explicit instantiation of the forward, for a src/cuda/sm80/flash_fwd_*.cu file.
#define ATTN_INSTANTIATE_FLASH_FWD(DTYPE, CTYPE, D, DV)                                       \
  namespace attn::cuda {                                                                      \
  template <>                                                                                 \
  void launch_flash_fwd<DType::DTYPE, D, DV>(const FwdParams& params, cudaStream_t stream) { \
    sm80::launch_fwd<CTYPE, D, DV>(params, stream);                                           \
  }                                                                                           \
  }
