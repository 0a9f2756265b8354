// FlashAttention-2 forward for sm80+ (mma.sync): one CTA per (query-row tile, slot, batch),
// 4 warps each owning 16 rows (64-row tiles) or 32 rows (128-row tiles, long queries), K/V
// tiles pipelined through cp.async, online softmax in registers in the log2 domain.
//
// Versions and H100 numbers are in bench/gpu_notes.md.
//
// Letters: B batch, Sq/Sk this sequence's query/key lengths, D/Dv head dims, BM/BN tile rows
// and keys (fwd_tile), G group size. Shared memory (T elements, each row padded by 16 bytes so
// the 8 rows that one ldmatrix reads fall in 8 different bank groups):
//   sQ (BM, D + 8)               reused for the output tile (BM, Dv + 8) in the epilogue
//   sK (kStages, BN, D + 8)      the i-th visited key tile sits in stage i % kStages
//   sV (kStages, BN, Dv + 8)
//
// Pipeline: kStages (fwd_tile) K+V stages; while the CTA computes tile t, the loads of the next
// kStages - 1 tiles it visits are in flight, so each load has at least a whole tile of math
// to land. One barrier per tile.
//
// One kernel serves padded, packed and paged K/V (TokenLayout gathers rows one token at a
// time), GQA (slot -> kv head), decode (GQA packing + KV splits, see FwdParams) and every mask
// (MaskEval: empty key tiles are never loaded, full ones skip the per-element test).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/check.hpp"
#include "cuda/fwd_params.hpp"
#include "cuda/key_tiles.cuh"
#include "cuda/sm80/ptx.cuh"
#include "cuda/sm80/tile_copy.cuh"
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

/// MI: 16-row m-tiles per warp (fwd_tile). Two let each K/V fragment read from shared memory
/// feed two mma instead of one, halving shared-memory traffic per flop for long queries.
template <class T, int D, int Dv, int MI>
struct FwdTraits {
  static constexpr FwdTile kTile = fwd_tile(D, MI == 2);
  static constexpr int kBlockM = kTile.block_m;
  static constexpr int kBlockN = kTile.block_n;
  static constexpr int kStages = kTile.stages;
  static_assert(kStages >= 2, "at least one tile in flight while another is computed");
  static_assert(kBlockM == 16 * MI * kFwdWarps, "each warp owns MI m-tiles of 16 query rows");
  static_assert(D % 16 == 0 && Dv % 16 == 0 && Dv <= D, "head dims are multiples of 16, Dv <= D");
  static_assert(kBlockN / 2 <= 32, "one mask bit per score of an m-tile in a 32-bit word");
  static constexpr int kPad = 8;  // 16 bytes
  static constexpr int kQStride = D + kPad;
  static constexpr int kKStride = D + kPad;
  static constexpr int kVStride = Dv + kPad;
  static constexpr int kOStride = Dv + kPad;
  static constexpr int kSmemQ = kBlockM * kQStride;
  static constexpr int kSmemK = kStages * kBlockN * kKStride;
  static constexpr int kSmemV = kStages * kBlockN * kVStride;
  static constexpr int kSmemBytes = (kSmemQ + kSmemK + kSmemV) * int(sizeof(T));
  // Q fragments in registers cost D / 4 registers per m-tile; beyond one m-tile of D <= 128
  // they would crowd out the accumulators, so Q is re-read from shared memory per key tile.
  static constexpr bool kQInRegs = MI == 1 && D <= 128;
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

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Launch bounds (128, 2): shared memory allows about two CTAs per SM; without the 2, ptxas
// capped some variants at 128 or 168 registers (an occupancy the shared memory rules out) and
// spilled.
template <class T, int D, int Dv, int MI>
__global__ void __launch_bounds__(kFwdThreads, 2) flash_fwd_kernel(const __grid_constant__ FwdParams params) {
  using Tr = FwdTraits<T, D, Dv, MI>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
  constexpr float kNegInf = -INFINITY;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kSmemQ;
  T* sV = sK + Tr::kSmemK;

  const detail::AttentionProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const CtaWork work = cta_work(params, int(blockIdx.x));
  const int m_tile = work.m_tile, split = work.split, slot = work.slot, b = work.batch;
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
  const KeyTiles<BN> tiles(me, i_lo, i_hi, split, params.n_splits);
  const int t_begin = tiles.t_begin, t_end = tiles.t_end;
  const bool interval_mask = is_interval_mask(p.mask);
  auto tile_kind = [&](int t) { return tiles.kind(t); };
  auto next_tile = [&](int t) { return tiles.next(t); };

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  load_rows_async<kFwdThreads, T, BM, D>(sQ, Tr::kQStride, q, [&](int r) -> const T* {
    const int x = m0 + r;
    if (x >= rows) return nullptr;
    return q + row_offset(p.q_layout, b, x / pack, pack > 1 ? slot * pack + x % pack : slot);
  });
  cp_async_commit();
  // Rows past Sk are zero-filled: the block table must not be read there, and V must hold
  // finite values where P is 0. Padded and packed rows of one (sequence, kv head) are evenly
  // strided from row 0; only paged rows need the block table.
  auto load_kv = [&](int t, int stage) {
    const int n0 = t * BN;
    const T* k_row0 = p.k_layout.block_table == nullptr ? k + p.k_layout.offset(b, 0, hk) : k;
    const T* v_row0 = p.v_layout.block_table == nullptr ? v + p.v_layout.offset(b, 0, hk) : v;
    load_rows_async<kFwdThreads, T, BN, D>(sK + stage * BN * Tr::kKStride, Tr::kKStride, k, [&](int r) -> const T* {
      if (n0 + r >= Sk) return nullptr;
      return p.k_layout.block_table != nullptr ? k + row_offset(p.k_layout, b, n0 + r, hk)
                                               : k_row0 + std::int64_t(n0 + r) * p.k_layout.token_stride;
    });
    load_rows_async<kFwdThreads, T, BN, Dv>(sV + stage * BN * Tr::kVStride, Tr::kVStride, v, [&](int r) -> const T* {
      if (n0 + r >= Sk) return nullptr;
      return p.v_layout.block_table != nullptr ? v + row_offset(p.v_layout, b, n0 + r, hk)
                                               : v_row0 + std::int64_t(n0 + r) * p.v_layout.token_stride;
    });
  };

  // This warp owns tile rows [warp_row, warp_row + 16 MI): m-tile mi is rows warp_row + 16 mi
  // + [0, 16), and this thread holds rows lane / 4 and lane / 4 + 8 of each (the c0/c1 and
  // c2/c3 halves of every fragment). Index [mi][h] below is row warp_row + 16 mi + lane / 4 + 8 h.
  const int warp_row = warp * 16 * MI;
  // Tile row of (mi, h); its query is row / pack. Recomputed where needed rather than held
  // in registers across the main loop, which the tall tile's accumulators fill.
  auto tile_row = [&](int mi, int h) { return warp_row + 16 * mi + lane / 4 + 8 * h; };
  // Warps whose rows are all padding (decode tiles) still load and synchronise, but skip the math.
  const bool warp_active = warp < min(kFwdWarps, (rows - m0 + 16 * MI - 1) / (16 * MI));

  float o[MI][Dv / 8][4] = {};
  float m_run[MI][2];  // running row max, log2 units
  float l_run[MI][2];  // running row sum of exp2(x - m_run), this thread's columns
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m_run[mi][h] = kNegInf;
      l_run[mi][h] = 0.0f;
    }
  std::uint32_t qf[Tr::kQInRegs ? D / 16 : 1][4];
  auto q_frag = [&](std::uint32_t (&a)[4], int mi, int kk) {
    ldmatrix_x4(a, sQ + (warp_row + 16 * mi + lane % 8 + (lane / 8) % 2 * 8) * Tr::kQStride + kk * 16 + lane / 16 * 8);
  };

  // One cp.async group per visited tile, committed in visiting order after Q's (empty groups
  // past the last tile keep the count): the prologue puts kStages - 1 tiles in flight.
  constexpr int kStages = Tr::kStages;
  int t = t_begin;
  int t_issue = t;  // next tile to load
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (t_issue < t_end) {
      load_kv(t_issue, st);
      t_issue = next_tile(t_issue + 1);
    }
    cp_async_commit();
  }
  int stage = 0, issue_stage = kStages - 1;
  bool first = true;
  // Scores in log2 units are s * mul: scores stay raw until the exp2, where the scale folds
  // into one FFMA. Soft-capped scores are already in log2 units.
  const float mul = p.softcap > 0.0f ? 1.0f : params.scale_log2;
  while (t < t_end) {
    const TileKind kind = tile_kind(t);
    cp_async_wait<kStages - 2>();  // tile t has landed (later ones may be in flight)
    // Tile t is visible to every thread, and every warp is done with the previous tile, whose
    // stage the next load reuses.
    __syncthreads();
    if (t_issue < t_end) {
      load_kv(t_issue, issue_stage);
      t_issue = next_tile(t_issue + 1);
    }
    cp_async_commit();
    issue_stage = issue_stage + 1 == kStages ? 0 : issue_stage + 1;

    float s[MI][BN / 8][4] = {};
    if (warp_active) {
      if constexpr (Tr::kQInRegs) {
        if (first) {
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk) q_frag(qf[kk], 0, kk);
        }
      }
      // S = Q K^T for this warp's 16 MI rows x BN keys; each K fragment serves all MI m-tiles.
      const T* sKs = sK + stage * BN * Tr::kKStride;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t a[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          if constexpr (Tr::kQInRegs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[mi][e] = qf[kk][e];
          } else {
            q_frag(a[mi], mi, kk);
          }
        }
#pragma unroll
        for (int nj = 0; nj < BN / 16; ++nj) {
          std::uint32_t kb[4];
          ldmatrix_x4(kb, sKs + (nj * 16 + lane % 8 + lane / 16 * 8) * Tr::kKStride + kk * 16 + (lane / 8) % 2 * 8);
#pragma unroll
          for (int mi = 0; mi < MI; ++mi) {
            mma_16816<T>(s[mi][2 * nj], a[mi], kb[0], kb[1]);
            mma_16816<T>(s[mi][2 * nj + 1], a[mi], kb[2], kb[3]);
          }
        }
      }
    }

    if (warp_active) {
      const int n0 = t * BN;
      if (p.softcap > 0.0f) {
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              s[mi][nt][e] = params.softcap_log2 * tanh_exp2(s[mi][nt][e] * (p.scale / p.softcap));
      }
      if ((kind == TileKind::partial || n0 + BN > Sk) && interval_mask) {
        // Causal / window masks: one key interval per row, compared unrolled.
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int x = m0 + tile_row(mi, h);
            int lo = 0, hi = Sk - 1;  // padding rows (past Sq) keep finite scores; never stored
            if (x < rows) me.interval(x / pack + me.offset(), lo, hi);
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int j = n0 + nt * 8 + lane % 4 * 2 + e;
                if (j < lo || j > hi) s[mi][nt][2 * h + e] = kNegInf;
              }
          }
      } else if (kind == TileKind::partial || n0 + BN > Sk) {
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          // One rolled copy of the mask predicate per m-tile fills a bit per score, instead of
          // BN / 2 unrolled copies bloating the kernel; bit idx is s[mi][idx / 4][idx % 4].
          std::uint32_t keep = 0;
#pragma unroll 1
          for (int idx = 0; idx < BN / 2; ++idx) {
            const int j = n0 + idx / 4 * 8 + lane % 4 * 2 + idx % 2;
            const int x = m0 + tile_row(mi, idx % 4 >= 2 ? 1 : 0);
            // Padding rows (past Sq) keep finite scores; their results are never stored.
            const bool ok = j < Sk && (x >= rows || me.allows(x / pack, j));
            keep |= std::uint32_t(ok) << idx;
          }
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (((keep >> (nt * 4 + e)) & 1u) == 0) s[mi][nt][e] = kNegInf;
        }
      }

      // Online softmax: new row max, rescale what was accumulated, exponentiate.
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        float scale_old[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = kNegInf;
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * h], s[mi][nt][2 * h + 1]));
          mx = fmaxf(m_run[mi][h], quad_max(mx) * mul);  // mul > 0 keeps the order and -inf
          // A row with nothing allowed so far keeps max -inf; subtracting 0 instead keeps
          // exp2(-inf - -inf) = NaN out and leaves its probabilities at exactly 0.
          const float base = mx == kNegInf ? 0.0f : mx;
          scale_old[h] = exp2f(m_run[mi][h] - base);
          m_run[mi][h] = mx;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt) {
            s[mi][nt][2 * h] = exp2f(fmaf(s[mi][nt][2 * h], mul, -base));
            s[mi][nt][2 * h + 1] = exp2f(fmaf(s[mi][nt][2 * h + 1], mul, -base));
            sum += s[mi][nt][2 * h] + s[mi][nt][2 * h + 1];
          }
          l_run[mi][h] = l_run[mi][h] * scale_old[h] + sum;
        }
        // Once the row maxima settle, whole warps skip the Dv / 2 multiplications by 1.
        if (__any_sync(0xffffffffu, scale_old[0] != 1.0f || scale_old[1] != 1.0f)) {
#pragma unroll
          for (int dt = 0; dt < Dv / 8; ++dt) {
            o[mi][dt][0] *= scale_old[0];
            o[mi][dt][1] *= scale_old[0];
            o[mi][dt][2] *= scale_old[1];
            o[mi][dt][3] *= scale_old[1];
          }
        }
      }
    }
    if (warp_active) {
      // O += P V. The C layout of two adjacent 8-key score tiles is the A layout of one
      // 16-key step, so P goes from accumulators to operands without shared memory; each V
      // fragment serves all MI m-tiles.
      const T* sVs = sV + stage * BN * Tr::kVStride;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        std::uint32_t a[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          a[mi][0] = pack2<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
          a[mi][1] = pack2<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
          a[mi][2] = pack2<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
          a[mi][3] = pack2<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dj = 0; dj < Dv / 16; ++dj) {
          std::uint32_t vb[4];
          ldmatrix_x4_trans(vb, sVs + (kk * 16 + lane % 8 + (lane / 8) % 2 * 8) * Tr::kVStride + dj * 16 + lane / 16 * 8);
#pragma unroll
          for (int mi = 0; mi < MI; ++mi) {
            mma_16816<T>(o[mi][2 * dj], a[mi], vb[0], vb[1]);
            mma_16816<T>(o[mi][2 * dj + 1], a[mi], vb[2], vb[3]);
          }
        }
      }
    }
    first = false;
    stage = stage + 1 == kStages ? 0 : stage + 1;
    t = next_tile(t + 1);
  }

  // Epilogue. A row that allowed nothing has l = 0: output 0 and lse -inf, never NaN.
  float inv_l[MI][2], lse[MI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(l_run[mi][h]);
      inv_l[mi][h] = l > 0.0f ? 1.0f / l : 0.0f;
      lse[mi][h] = l > 0.0f ? (m_run[mi][h] + __log2f(l)) * kLn2 : kNegInf;
    }
  const int Hq = p.heads_q;
  auto head_of = [&](int x) { return pack > 1 ? slot * pack + x % pack : slot; };

  if (params.n_splits > 1) {
    // Partials in f32, straight from registers (the combine kernel reads them once).
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int x = m0 + tile_row(mi, h);
        if (x >= rows || !warp_active) continue;
        const std::int64_t row = ((std::int64_t(split) * p.batch + b) * p.seqlen_q + x / pack) * Hq + head_of(x);
        float* dst = params.o_part + row * Dv;
#pragma unroll
        for (int dt = 0; dt < Dv / 8; ++dt)
          *reinterpret_cast<float2*>(dst + dt * 8 + lane % 4 * 2) =
              make_float2(o[mi][dt][2 * h] * inv_l[mi][h], o[mi][dt][2 * h + 1] * inv_l[mi][h]);
        if (lane % 4 == 0) params.lse_part[row] = lse[mi][h];
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
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int dt = 0; dt < Dv / 8; ++dt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<std::uint32_t*>(sO + (warp_row + 16 * mi + lane / 4 + 8 * h) * Tr::kOStride + dt * 8 +
                                            lane % 4 * 2) =
              pack2<T>(o[mi][dt][2 * h] * inv_l[mi][h], o[mi][dt][2 * h + 1] * inv_l[mi][h]);
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
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int x = m0 + warp_row + 16 * mi + lane / 4 + 8 * h;
        if (x < rows) p.lse[row_offset(p.lse_layout, b, x / pack, head_of(x))] = lse[mi][h];
      }
  }
}

template <class T, int D, int Dv, int MI>
void launch_fwd_tile(const FwdParams& params, cudaStream_t stream) {
  const auto kernel = flash_fwd_kernel<T, D, Dv, MI>;
  const int smem = FwdTraits<T, D, Dv, MI>::kSmemBytes;
  // Above 48 KB a kernel must opt in to its dynamic shared memory.
  ATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const unsigned ctas = unsigned(params.m_tiles * params.n_splits * params.slots * params.p.batch);
  kernel<<<ctas, kFwdThreads, smem, stream>>>(params);
  ATTN_CUDA_CHECK_LAUNCH("flash_fwd_kernel");
}

/// The planner picked the tile height (FwdParams::block_m); only heads with a tall tile in
/// fwd_tile compile one.
template <class T, int D, int Dv>
void launch_fwd(const FwdParams& params, cudaStream_t stream) {
  if constexpr (fwd_has_tall_tile(D)) {
    if (params.block_m == fwd_tile(D, true).block_m) return launch_fwd_tile<T, D, Dv, 2>(params, stream);
  }
  launch_fwd_tile<T, D, Dv, 1>(params, stream);
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
