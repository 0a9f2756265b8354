// FlashAttention forward for Hopper (sm_90a): wgmma tensor-core matrix multiplies issued by
// warpgroups, fed by a producer warp through an mbarrier pipeline.
//
// Persistent: about one CTA per SM, each taking work items (a 128-row query tile of one KV
// split, query head and batch) from a global counter in cta_work's order until none are left.
// 3 roles:
//   warpgroups 0 and 1 (consumers): 64 query rows each. Per key tile: S = Q K^T (wgmma, Q and
//     K from shared memory), mask and online softmax in registers (log2 domain, as sm80), then
//     O += P V (wgmma with P from registers, V from shared memory, transposed form). The
//     output goes into the K half of the item's last stage (stmatrix) and leaves by a TMA
//     store where the rows are padded (FwdParams::tma_out), otherwise from registers.
//   warpgroup 2 (producer): takes the items, and loads each one's Q and K/V tiles (the K/V
//     into kStages shared-memory stages) by TMA from one thread where the rows are padded
//     (FwdParams::tma), otherwise with cp.async from all 128. It runs ahead across items, and
//     publishes each one decoded, with its key-tile range, beside its Q.
// Registers: ptxas sizes a 288-thread CTA like a 384-thread one (168 registers, spills), so
// the producer is a whole warpgroup that gives its registers to the consumers (setmaxnreg:
// 40 for the producer, 232 for each consumer thread: 128 x (40 + 2 x 232) = 168 x 384, all the
// CTA holds, so setmaxnreg.inc cannot ask for more (it would wait forever). Both spill a
// little: the producer ~100 bytes, the consumers a few loop-invariant values, ~7 reloads per
// tile, which ncu showed waiting on L2 at times: the next thing to remove).
// By default the two consumers never wait for each other: while one runs its softmax, the
// tensor cores may serve the other one's matrix multiplies (see kPingpong for turn-taking).
//
// Handshakes, each an mbarrier pair:
//   per stage, `full` (TMA: one arrival that expects the tile's bytes, complete when they
//   have landed; cp.async: 128 arrivals, the producer threads, each once its copies landed and
//   it fenced them for the async proxy that wgmma reads through) and `empty` (256 arrivals:
//   every consumer thread, once its P V multiply stopped reading the stage);
//   for Q, `q_full` (as `full`; it also publishes the item in shared-memory slots: its index,
//   -1 when no items are left, its decoded Sm90Work and its key tiles) and `q_empty` (256
//   arrivals, once each consumer's last S = Q K^T of the item has completed, so the next
//   item's Q loads during the last P V and the epilogue; the consumers wait on it too before
//   they write the output over the last stage's K).
//   With the staged output, the last stage's `empty` gets its arrivals once the output has
//   been read out of it (one thread per warpgroup waits for its TMA store's read).
//
// Shared memory, every tile 128-byte swizzled (see sw128_desc): rows of 64 elements, the
// columns split into D / 64 blocks of (rows x 128 bytes):
//   sQ (128 x D)
//   sK (kStages, 128 x D)      (an item's last one also takes its output, 128 x Dv, Dv = D)
//   sV (kStages, 128 x Dv)
//   full[kStages], empty[kStages], q_full, q_empty (8-byte mbarriers); item slots
//
// Covers what the sm80 forward covers for its shapes (every mask, GQA, varlen, paged, soft-cap,
// LSE, KV splits), except GQA packing: the planner (backend.cpp) sends a problem here when
// the device is sm_90, D = Dv = 64, 128 or 256 and the queries fill more than a 64-row tile.
// At D 256 the key tiles are 64 wide (kBlockN) and 2 stages deep, O += P V runs as two
// m64n128 halves, and the output leaves from registers.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>

#include "cuda/check.hpp"
#include "cuda/fwd_params.hpp"
#include "cuda/key_tiles.cuh"
#include "cuda/sm80/flash_fwd.cuh"  // row_offset, tanh_exp2, quad_max / quad_sum
#include "cuda/sm80/ptx.cuh"        // cp.async, pack2
#include "cuda/sm90/wgmma.cuh"
#include "mask_eval.hpp"

namespace attn::cuda::sm90 {

#if defined(ATTN_SM90_FWD_TRACE)
// Development builds only (-DATTN_SM90_FWD_TRACE, see docs/cuda.md "Tracing the Hopper
// forward"): clock64 stamps of where each of the first CTAs' first items spends its time, into
// the buffer whose device address the environment variable ATTN_CUDA_TRACE_PTR holds.
// Per item, kTraceSlots 64-bit slots: see the ATTN_FWD_TRACE calls for what each one is.
constexpr int kTraceCtas = 8, kTraceItems = 64, kTraceSlots = 32;
static __device__ unsigned long long* g_fwd_trace;
#define ATTN_FWD_TRACE(item, slot, value)                                                     \
  do {                                                                                        \
    if (g_fwd_trace != nullptr && blockIdx.x < kTraceCtas && (item) < kTraceItems)            \
      g_fwd_trace[(blockIdx.x * kTraceItems + (item)) * kTraceSlots + (slot)] = (value);       \
  } while (0)
#define ATTN_FWD_TRACE_CLOCK() clock64()
#else
#define ATTN_FWD_TRACE(item, slot, value) \
  do {                                    \
  } while (0)
#define ATTN_FWD_TRACE_CLOCK() 0ll
#endif

using detail::MaskEval;
using detail::TileKind;

template <int D>
struct Sm90FwdTraits {
  static constexpr int kBlockM = kSm90BlockM;  // query rows per tile: 64 per consumer warpgroup
  static constexpr int kBlockN = sm90_block_n(D);  // keys per stage: 128, or 64 at D 256
  // D 128: 224 KB with Q, one CTA per SM. D 64: a tile's multiplies take half as long, so one
  // more stage in flight (144 KB; still one CTA per SM, by registers). D 256: 64 KB of Q and
  // 64 KB per stage (64 keys), so 2 stages (192 KB).
  static constexpr int kStages = D == 64 ? 4 : D == 256 ? 2 : 3;
  static constexpr int kScores = kBlockN / 2;  // this thread's share of a warpgroup's 64 x kBlockN scores
  static constexpr int kConsumers = 2;  // warpgroups
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;
  static_assert(128 * (kProducerRegs + kConsumers * kConsumerRegs) <= 65536, "register file");
  static_assert(D == 64 || D == 128 || D == 256,
                "head dims with an O += P V wgmma (m64n64, m64n128, two m64n128) and registers for it");
  static constexpr int kTileBytesQ = kBlockM * D * 2;
  static constexpr int kTileBytesK = kBlockN * D * 2;
  static constexpr int kTileBytesV = kBlockN * D * 2;
  static constexpr int kOffK = kTileBytesQ;
  static constexpr int kOffV = kOffK + kStages * kTileBytesK;
  static constexpr int kOffBars = kOffV + kStages * kTileBytesV;  // full, empty per stage; Q full, Q empty
  // Work item slots (ints): the current item, decoded, with its key tiles (kItemSlots), then
  // the cp.async producer's two.
  static constexpr int kItemSlots = 12;
  static constexpr int kOffSlots = kOffBars + (2 * kStages + 2) * 8;
  // +1024: the dynamic shared memory base is rounded up to the 1024-byte swizzle atom.
  static constexpr int kSmemBytes = kOffSlots + 4 * (kItemSlots + 4) + 1024;
};

/// Byte offset of 16-byte chunk `c` (8 elements) of row `r` in a swizzled tile of `rows` rows.
__device__ __forceinline__ std::uint32_t swizzled(int r, int c, int rows) {
  return std::uint32_t((c / 8) * rows * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4));
}

/// ROWS rows of D 16-bit elements into a 128-byte swizzled tile at shared address `dst`, with
/// cp.async by the kThreads threads that `tid` numbers (sm80::copy_tile_rows splits the rows);
/// nullptr rows are zero-filled, naming `base`.
template <int kThreads, int ROWS, int D, class T, class RowPtr>
__device__ __forceinline__ void load_swizzled_rows_async(int tid, std::uint32_t dst, const T* base, RowPtr row_ptr) {
  sm80::copy_tile_rows<kThreads, ROWS, D / 8>(tid, row_ptr, [&](int r, int c, const T* row) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst + swizzled(r, c, ROWS)),
                 "l"(row != nullptr ? row + c * 8 : base), "r"(row != nullptr ? 16 : 0)
                 : "memory");
  });
}

/// One work item of the persistent grid: a 128-row query tile of one (KV split, query head,
/// sequence), as cta_work numbers them.
struct Sm90Work {
  int batch, slot, hk, split, Sq, Sk, m0;
};
__device__ __forceinline__ Sm90Work sm90_work(const FwdParams& params, const CtaWork& cw) {
  const detail::AttentionProblem& p = params.p;
  return {cw.batch, cw.slot, cw.slot / p.group_size(), cw.split, p.seqlen_q_of(cw.batch), p.seqlen_k_of(cw.batch),
          cw.m_tile * kSm90BlockM};
}
__device__ __forceinline__ Sm90Work sm90_work(const FwdParams& params, int w) {
  return sm90_work(params, cta_work(params, w));
}

/// kOverlap: the software-pipelined consumer loop (S of tile i beside P V of tile i - 1);
/// false: the plain one-tile-at-a-time loop. kPingpong: the two consumer warpgroups take turns
/// issuing their matrix multiplies (hardware barriers 3 and 4), so that one's softmax runs
/// while the other's multiplies hold the tensor cores.
///
/// The default is the pipelined loop with turns, the fastest measured on the H100 with the TMA
/// producer (bf16 B4 S4096 H16: 557 TFLOP/s full, 448 causal, against 524 / 429 for the plain
/// loop; bench/gpu_notes.md). The others stay selectable for comparison (FwdParams::sm90_variant).
///
/// Persistent: the grid has about one CTA per SM, and each CTA takes work items (query tiles)
/// from a global counter until none are left, in cta_work's order (heaviest causal tiles first
/// within groups of heads). The producer runs ahead across items: the next item's first K/V
/// tile loads as soon as a stage frees, its Q as soon as the consumers have issued their last
/// S = Q K^T of the current one, so that short items (sliding windows: a few key tiles each)
/// do not pay a cold pipeline and an unhidden Q load each.
template <class T, int D, bool kOverlap, bool kPingpong>
__global__ void __launch_bounds__(Sm90FwdTraits<D>::kThreads, 1)
    flash_fwd_sm90_kernel(const __grid_constant__ FwdParams params) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // wgmma exists only in the sm_90a pass; the planner never launches this kernel elsewhere.
  (void)params;
#else
  using Tr = Sm90FwdTraits<D>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, kStages = Tr::kStages, kScores = Tr::kScores;
  constexpr float kNegInf = -INFINITY;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // The swizzle pattern follows absolute address bits: tiles start on 1024-byte boundaries.
  const std::uint32_t raw_addr = smem_u32(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - raw_addr % 1024) % 1024);
  const std::uint32_t sbase = smem_u32(smem);
  const std::uint32_t sQ = sbase, sK = sbase + Tr::kOffK, sV = sbase + Tr::kOffV;
  const std::uint32_t bar_full = sbase + Tr::kOffBars, bar_empty = bar_full + 8 * kStages;
  const std::uint32_t bar_q_full = bar_empty + 8 * kStages, bar_q_empty = bar_q_full + 8;
  // The current item, written by the producer before it announces that item's Q and read by
  // the consumers once that Q has landed: its index (-1: no more items), then its Sm90Work,
  // which the producer has decoded already (cta_work's divisions stay off the consumers' path).
  volatile int* work_slot = reinterpret_cast<int*>(smem + Tr::kOffSlots);
  // The cp.async producer's 128 threads learn each item from thread 0 (two slots, by parity).
  volatile int* producer_slot = work_slot + Tr::kItemSlots;
  // Its key tiles too: the first that is not empty, the end, and the full range (KeyTiles).
  auto publish_item = [&](int w, const Sm90Work& wk, const KeyTiles<Tr::kBlockN>& tiles) {
    work_slot[0] = w;
    work_slot[1] = wk.batch;
    work_slot[2] = wk.slot;
    work_slot[3] = wk.hk;
    work_slot[4] = wk.split;
    work_slot[5] = wk.Sq;
    work_slot[6] = wk.Sk;
    work_slot[7] = wk.m0;
    work_slot[8] = tiles.t_begin;
    work_slot[9] = tiles.t_end;
    work_slot[10] = tiles.full_from;
    work_slot[11] = tiles.full_to;
  };

  const detail::AttentionProblem& p = params.p;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const bool interval_mask = is_interval_mask(p.mask);

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar_full + 8 * s, params.tma ? 1 : 128);
      mbar_init(bar_empty + 8 * s, 128 * Tr::kConsumers);
    }
    mbar_init(bar_q_full, params.tma ? 1 : 128);
    mbar_init(bar_q_empty, 128 * Tr::kConsumers);
  }
  __syncthreads();

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);

  if (warp >= 4 * Tr::kConsumers) {
    // ---- producer ----------------------------------------------------------------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Tr::kProducerRegs));
    const int ptid = int(threadIdx.x) - 128 * Tr::kConsumers;
    // The next item with query rows (packed batches have fewer tiles in short sequences), or -1;
    // `cw` becomes its CtaWork.
    auto grab = [&](CtaWork& cw) -> int {
      for (;;) {
        const int w = atomicAdd(params.work_counter, 1);
        if (w >= params.total_works) return -1;
        cw = cta_work(params, w);
        if (cw.m_tile * BM < p.seqlen_q_of(cw.batch)) return w;
      }
    };
    if (params.tma) {
      // One thread does it all: per item, its first K/V tile, then (once the consumers have
      // released Q) the work slot and Q, then the remaining tiles. Each full barrier gets one
      // arrival that announces the bytes its TMA loads will land.
      if (ptid != 0) return;
      int i = 0;  // K/V tiles issued, across items: tile i sits in stage i % kStages
      for (int n = 0;; ++n) {
        CtaWork cw;
        const int w = grab(cw);
        ATTN_FWD_TRACE(n, 0, ATTN_FWD_TRACE_CLOCK());
        const Sm90Work wk = w < 0 ? sm90_work(params, 0) : sm90_work(params, cw);
        // Q is loaded only once the consumers release the previous one, a few thousand clocks
        // before they need it: from DRAM that is not enough (the trace measured ~6700 clocks
        // from the load's issue to the consumers' start on window 256), from L2 it is closer.
        if (w >= 0)
          for (int cb = 0; cb < D / 64; ++cb) tma_prefetch_l2_4d(&params.tma_q, 64 * cb, wk.m0, wk.slot, wk.batch);
        const MaskEval me{&p.mask, wk.Sq, wk.Sk, wk.slot};
        const KeyTiles<BN> tiles(me, wk.m0, min(wk.Sq, wk.m0 + BM), wk.split, params.n_splits);
        const auto issue_q = [&] {
          mbar_wait(bar_q_empty, (n & 1) ^ 1);
          ATTN_FWD_TRACE(n, 1, ATTN_FWD_TRACE_CLOCK());
          if (w < 0) {
            work_slot[0] = w;
            mbar_arrive(bar_q_full);
            return;
          }
          publish_item(w, wk, tiles);
          mbar_arrive_expect_tx(bar_q_full, Tr::kTileBytesQ);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb)
            tma_load_4d(sQ + cb * BM * 128, &params.tma_q, 64 * cb, wk.m0, wk.slot, wk.batch, bar_q_full);
        };
        if (w < 0) {
          issue_q();
          return;
        }
        bool q_issued = false;
        for (int t = tiles.t_begin; t < tiles.t_end; t = tiles.next(t + 1), ++i) {
          const int stage = i % kStages;
          mbar_wait(bar_empty + 8 * stage, ((i / kStages) & 1) ^ 1);
          const std::uint32_t full = bar_full + 8 * stage;
          mbar_arrive_expect_tx(full, Tr::kTileBytesK + Tr::kTileBytesV);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb) {
            tma_load_4d(sK + stage * Tr::kTileBytesK + cb * BN * 128, &params.tma_k, 64 * cb, t * BN, wk.hk, wk.batch,
                        full);
            tma_load_4d(sV + stage * Tr::kTileBytesV + cb * BN * 128, &params.tma_v, 64 * cb, t * BN, wk.hk, wk.batch,
                        full);
          }
          if (!q_issued) issue_q();
          q_issued = true;
        }
        if (!q_issued) issue_q();
        ATTN_FWD_TRACE(n, 2, ATTN_FWD_TRACE_CLOCK());
      }
    }

    // cp.async: all 128 producer threads copy. A load is announced (its full barrier arrived
    // on) once the next one is issued, so that one load stays in flight while the previous one
    // lands; when the slot for the next load is not free yet, the pending one is announced
    // first: the consumers may need it before they free that slot.
    std::uint32_t pending = 0;  // full barrier of the issued, not yet announced load
    auto announce = [&](bool keep_one_in_flight) {
      if (keep_one_in_flight) {
        sm80::cp_async_wait<1>();
      } else {
        sm80::cp_async_wait<0>();
      }
      fence_proxy_async();
      mbar_arrive(pending);
      pending = 0;
    };
    auto acquire = [&](std::uint32_t empty, int parity) {
      if (pending != 0 && !mbar_test(empty, parity)) announce(false);
      mbar_wait(empty, parity);
    };
    auto issued = [&](std::uint32_t full) {
      sm80::cp_async_commit();
      if (pending != 0) announce(true);
      pending = full;
    };
    int i = 0;
    for (int n = 0;; ++n) {
      if (ptid == 0) {
        CtaWork cw;
        producer_slot[n & 1] = grab(cw);  // the other threads decode the item themselves
      }
      named_barrier_sync(5, 128);
      const int w = producer_slot[n & 1];
      const Sm90Work wk = sm90_work(params, w < 0 ? 0 : w);
      const MaskEval me{&p.mask, wk.Sq, wk.Sk, wk.slot};
      const KeyTiles<BN> tiles(me, wk.m0, min(wk.Sq, wk.m0 + BM), wk.split, params.n_splits);
      const auto issue_q = [&] {
        acquire(bar_q_empty, (n & 1) ^ 1);
        if (ptid == 0) {
          if (w < 0) {
            work_slot[0] = w;
          } else {
            publish_item(w, wk, tiles);
          }
        }
        if (w < 0) return;
        // Rows past the sequence are zero-filled (finite scores, never stored).
        load_swizzled_rows_async<128, BM, D>(ptid, sQ, q, [&](int r) -> const T* {
          return wk.m0 + r < wk.Sq ? q + sm80::row_offset(p.q_layout, wk.batch, wk.m0 + r, wk.slot) : nullptr;
        });
        issued(bar_q_full);
      };
      if (w < 0) {
        issue_q();
        if (pending != 0) announce(false);
        mbar_arrive(bar_q_full);
        return;
      }
      const T* k_row0 = p.k_layout.block_table == nullptr ? k + p.k_layout.offset(wk.batch, 0, wk.hk) : k;
      const T* v_row0 = p.v_layout.block_table == nullptr ? v + p.v_layout.offset(wk.batch, 0, wk.hk) : v;
      bool q_issued = false;
      for (int t = tiles.t_begin; t < tiles.t_end; t = tiles.next(t + 1), ++i) {
        const int stage = i % kStages;
        acquire(bar_empty + 8 * stage, ((i / kStages) & 1) ^ 1);
        // Rows past Sk are zero-filled: V must be finite where P is 0.
        const int n0 = t * BN;
        load_swizzled_rows_async<128, BN, D>(ptid, sK + stage * Tr::kTileBytesK, k, [&](int r) -> const T* {
          if (n0 + r >= wk.Sk) return nullptr;
          return p.k_layout.block_table != nullptr ? k + sm80::row_offset(p.k_layout, wk.batch, n0 + r, wk.hk)
                                                   : k_row0 + std::int64_t(n0 + r) * p.k_layout.token_stride;
        });
        load_swizzled_rows_async<128, BN, D>(ptid, sV + stage * Tr::kTileBytesV, v, [&](int r) -> const T* {
          if (n0 + r >= wk.Sk) return nullptr;
          return p.v_layout.block_table != nullptr ? v + sm80::row_offset(p.v_layout, wk.batch, n0 + r, wk.hk)
                                                   : v_row0 + std::int64_t(n0 + r) * p.v_layout.token_stride;
        });
        issued(bar_full + 8 * stage);
        if (!q_issued) issue_q();
        q_issued = true;
      }
      if (!q_issued) issue_q();
    }
  }

  // ---- consumers -----------------------------------------------------------------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Tr::kConsumerRegs));
  const int wg = warp / 4;                   // consumer warpgroup: tile rows [64 wg, 64 wg + 64)
  const int warp_row = 64 * wg + 16 * (warp % 4);  // this warp's 16 rows
  auto tile_row = [&](int h) { return warp_row + lane / 4 + 8 * h; };
  const float mul = p.softcap > 0.0f ? 1.0f : params.scale_log2;
  // Q rows of this warpgroup start 64 rows into each 128-row column block.
  const std::uint32_t q_base = sQ + 64 * wg * 128;

  // S = Q K^T (64 x BN, D / 16 steps of k16; step k reads 32 bytes into each row of column
  // block k / 4), issued and committed as one wgmma group.
  auto issue_qk = [&](float (&s)[kScores], int stage) {
    const std::uint32_t k_base = sK + stage * Tr::kTileBytesK;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const std::uint32_t col = (kk % 4) * 32;
      const std::uint64_t da = sw128_desc(q_base + (kk / 4) * BM * 128 + col, 16, 1024);
      const std::uint64_t db = sw128_desc(k_base + (kk / 4) * BN * 128 + col, 16, 1024);
      if constexpr (BN == 128) {
        wgmma_m64n128k16_ss<T>(s, da, db, kk > 0 ? 1 : 0);
      } else {
        wgmma_m64n64k16_ss<T, 0, 0>(s, da, db, kk > 0 ? 1 : 0);
      }
    }
    wgmma_commit();
  };
  float o[D / 2];  // this thread's share of the warpgroup's 64 x D output
  // O += P V (BN / 16 steps of k16 over the keys; keys 16 kk.. are rows 16 kk.. of each
  // column block, and column blocks are BN rows apart), one wgmma group. At D 256 as two
  // m64n128 halves: output columns 0-127 (o[0, 64)) from V's column blocks 0-1, columns
  // 128-255 (o[64, 128)) from blocks 2-3; the accumulator layouts line up, as o[4 nt ..] holds
  // columns 8 nt.. in both.
  auto issue_pv = [&](const std::uint32_t (&pa)[BN / 16][4], int stage) {
    const std::uint32_t v_base = sV + stage * Tr::kTileBytesV;
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const std::uint64_t db = sw128_desc(v_base + kk * 16 * 128, BN * 128, 1024);
      if constexpr (D == 256) {
        const std::uint64_t db_hi = sw128_desc(v_base + 2 * BN * 128 + kk * 16 * 128, BN * 128, 1024);
        wgmma_m64n128k16_rs<T>(*reinterpret_cast<float(*)[64]>(o), pa[kk], db, 1);
        wgmma_m64n128k16_rs<T>(*reinterpret_cast<float(*)[64]>(o + 64), pa[kk], db_hi, 1);
      } else if constexpr (D == 128) {
        wgmma_m64n128k16_rs<T>(o, pa[kk], db, 1);
      } else {
        wgmma_m64n64k16_rs<T>(o, pa[kk], db, 1);
      }
    }
    wgmma_commit();
  };
  auto rescale_o = [&](const float (&scale_old)[2]) {
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      o[4 * nt + 0] *= scale_old[0];
      o[4 * nt + 1] *= scale_old[0];
      o[4 * nt + 2] *= scale_old[1];
      o[4 * nt + 3] *= scale_old[1];
    }
  };
  // P as the A operand of the next P V: the C layout of 8-key pairs is mma's A layout.
  auto pack_p = [&](const float (&s)[kScores], std::uint32_t (&pa)[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pa[kk][0] = sm80::pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = sm80::pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = sm80::pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = sm80::pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  [[maybe_unused]] long long trace_wait = 0;  // clocks spent waiting for K/V in this item (traced builds)
  auto wait_full = [&](int i) {
    [[maybe_unused]] const long long t0 = ATTN_FWD_TRACE_CLOCK();
    mbar_wait(bar_full + 8 * (i % kStages), (i / kStages) & 1);
#if defined(ATTN_SM90_FWD_TRACE)
    trace_wait += clock64() - t0;
#endif
  };
  [[maybe_unused]] const bool tracer = threadIdx.x % 128 == 0;  // one thread per consumer warpgroup stamps
  [[maybe_unused]] const int trace_base = 3 + 10 * wg;
  // Turn-taking: warpgroup w waits on barrier 3 + w (its 128 threads plus the other group's
  // 128 arrivals), issues, then lets the other group go. Group 1 opens group 0's first turn.
  // Both groups issue the same sequence, so the turns carry over from one item to the next.
  auto turn_begin = [&] {
    if constexpr (kPingpong) named_barrier_sync(3 + wg, 256);
  };
  auto turn_end = [&] {
    if constexpr (kPingpong) named_barrier_arrive(3 + (1 - wg), 256);
  };
  if constexpr (kPingpong) {
    if (wg == 1) named_barrier_arrive(3, 256);
  }

  // The output leaves through shared memory by TMA (see the epilogue); the plain loop frees
  // each stage inside its loop, so it keeps the register stores.
  // At D 256 a stage's K half (64 keys x 256) cannot hold the tile's 128 output rows.
  const bool stage_out = kOverlap && D <= 128 && params.tma_out && params.n_splits == 1;

  int i = 0;  // K/V tiles consumed, across items, as the producer counts them
  for (int n = 0;; ++n) {
    mbar_wait(bar_q_full, n & 1);
    if (tracer) ATTN_FWD_TRACE(n, trace_base, ATTN_FWD_TRACE_CLOCK());
    trace_wait = 0;
    if (work_slot[0] < 0) break;
    const Sm90Work wk{work_slot[1], work_slot[2], work_slot[3], work_slot[4], work_slot[5], work_slot[6], work_slot[7]};
    const int b = wk.batch, slot = wk.slot, Sq = wk.Sq, Sk = wk.Sk, m0 = wk.m0;
    const MaskEval me{&p.mask, Sq, Sk, slot};
    const KeyTiles<BN> tiles(me, m0, min(Sq, m0 + BM), work_slot[8], work_slot[9], work_slot[10], work_slot[11]);
    const int t_end = tiles.t_end;
    bool q_released = false;
    // Q is free for the next item once this warpgroup's last S = Q K^T has completed.
    auto release_q = [&] {
      if (!q_released) mbar_arrive(bar_q_empty);
      q_released = true;
    };

#pragma unroll
    for (int e = 0; e < D / 2; ++e) o[e] = 0.0f;
    float m_run[2] = {kNegInf, kNegInf};
    float l_run[2] = {0.0f, 0.0f};

    // Soft-cap, mask and online softmax of tile t's scores (sm80's, on one 16-row m-tile of
    // BN keys per warp): s becomes P (f32), l_run and m_run move on, and the factor by which
    // the output accumulated so far must be rescaled is returned in scale_old.
    auto softmax = [&](float (&s)[kScores], int t, TileKind kind, float (&scale_old)[2]) {
      const int n0 = t * BN;
      if (p.softcap > 0.0f) {
#pragma unroll
        for (int e = 0; e < kScores; ++e) s[e] = params.softcap_log2 * sm80::tanh_exp2(s[e] * (p.scale / p.softcap));
      }
      if ((kind == TileKind::partial || n0 + BN > Sk) && interval_mask) {
        // This thread's k-th score of a row (k = 2 nt + e) is key c0 + 8 (k / 2) + k % 2: the
        // keys grow with k, so the allowed ones are a run of k, [k_lo, k_hi], found with a few
        // integer operations per row instead of two compares per score.
        const int c0 = n0 + lane % 4 * 2;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int x = m0 + tile_row(h);
          int lo = 0, hi = Sk - 1;  // padding rows (past Sq) keep finite scores; never stored
          if (x < Sq) me.interval(x + me.offset(), lo, hi);
          const int d_lo = lo - c0, d_hi = hi - c0;
          const int k_lo = d_lo <= 0 ? 0 : 2 * (d_lo >> 3) + min(d_lo & 7, 2);  // first k with key >= lo
          const int k_hi = d_hi < 0 ? -1 : 2 * (d_hi >> 3) + min(d_hi & 7, 1);  // last k with key <= hi
          constexpr int kRowScores = kScores / 2;  // k < kRowScores (32, or 16 at D 256)
          const std::uint32_t below_hi = k_hi >= kRowScores - 1 ? ~0u : k_hi < 0 ? 0u : (2u << k_hi) - 1u;
          const std::uint32_t below_lo = k_lo >= kRowScores ? ~0u : (1u << k_lo) - 1u;
          const std::uint32_t keep = below_hi & ~below_lo;
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              if (((keep >> (2 * nt + e)) & 1u) == 0) s[4 * nt + 2 * h + e] = kNegInf;
        }
      } else if (kind == TileKind::partial || n0 + BN > Sk) {
        // One rolled copy of the predicate fills a bit per score (bit idx is s[idx]).
        std::uint64_t keep = 0;
#pragma unroll 1
        for (int idx = 0; idx < kScores; ++idx) {
          const int j = n0 + idx / 4 * 8 + lane % 4 * 2 + idx % 2;
          const int x = m0 + tile_row(idx % 4 >= 2 ? 1 : 0);
          const bool ok = j < Sk && (x >= Sq || me.allows(x, j));
          keep |= std::uint64_t(ok) << idx;
        }
#pragma unroll
        for (int e = 0; e < kScores; ++e)
          if (((keep >> e) & 1u) == 0) s[e] = kNegInf;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = kNegInf;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * h], s[4 * nt + 2 * h + 1]));
        mx = fmaxf(m_run[h], sm80::quad_max(mx) * mul);
        const float base = mx == kNegInf ? 0.0f : mx;  // a row with nothing allowed yet stays at 0
        scale_old[h] = exp2f(m_run[h] - base);
        m_run[h] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
          s[4 * nt + 2 * h] = exp2f(fmaf(s[4 * nt + 2 * h], mul, -base));
          s[4 * nt + 2 * h + 1] = exp2f(fmaf(s[4 * nt + 2 * h + 1], mul, -base));
          sum += s[4 * nt + 2 * h] + s[4 * nt + 2 * h + 1];
        }
        l_run[h] = l_run[h] * scale_old[h] + sum;
      }
    };

    float s[kScores];
    std::uint32_t pa[BN / 16][4];
    float scale_old[2];
    bool first = true;  // no key tile consumed yet in this item
    if (tracer) ATTN_FWD_TRACE(n, trace_base + 5, ATTN_FWD_TRACE_CLOCK());
    if constexpr (!kOverlap) {
      // One tile at a time: S, softmax, P V.
      for (int t = tiles.t_begin; t < t_end; ++i) {
        const int t_next = tiles.next(t + 1);
        wait_full(i);
        turn_begin();
        wgmma_fence();
        issue_qk(s, i % kStages);
        turn_end();
        wgmma_wait<0>();
        fence_registers(s);
        if (t_next >= t_end) release_q();
        softmax(s, t, tiles.kind(t), scale_old);
        rescale_o(scale_old);
        pack_p(s, pa);
        wgmma_fence();
        issue_pv(pa, i % kStages);
        wgmma_wait<0>();
        fence_registers(o);
        mbar_arrive(bar_empty + 8 * (i % kStages));
        t = t_next;
      }
    } else {
      // Software-pipelined by one tile: S of tile i is computed on the tensor cores while they
      // also run P V of tile i - 1, and tile i's softmax overlaps that P V. The output is
      // rescaled to tile i's row maxima only once P V of tile i - 1 (at the old maxima) is done.
      // The item's first tile runs the same code with no P V beside it: one copy of the loop
      // body, whose instructions stay cached from one item to the next (a separate first-tile
      // copy ran cold once per item; the trace measured it among the per-item costs).
      for (int t = tiles.t_begin; t < t_end; ++i) {
        wait_full(i);
        if (tracer && first) ATTN_FWD_TRACE(n, trace_base + 6, ATTN_FWD_TRACE_CLOCK());
        turn_begin();
        if (tracer && first) ATTN_FWD_TRACE(n, trace_base + 7, ATTN_FWD_TRACE_CLOCK());
        // The tile bookkeeping runs while the multiplies do. Each branch issues and waits for
        // its own groups (ptxas serializes the multiplies when one wait covers both paths).
        int t_next;
        TileKind kind;
        if (first) {
          wgmma_fence();
          issue_qk(s, i % kStages);
          turn_end();
          t_next = tiles.next(t + 1);
          kind = tiles.kind(t);
          wgmma_wait<0>();
        } else {
          wgmma_fence();
          issue_qk(s, i % kStages);
          issue_pv(pa, (i - 1) % kStages);
          turn_end();
          t_next = tiles.next(t + 1);
          kind = tiles.kind(t);
          wgmma_wait<1>();  // groups retire in order: S is ready, P V may still run
        }
        fence_registers(s);
        if (tracer && first) ATTN_FWD_TRACE(n, trace_base + 1, ATTN_FWD_TRACE_CLOCK());
        if (t_next >= t_end) release_q();
        softmax(s, t, kind, scale_old);
        if (!first) {
          wgmma_wait<0>();
          fence_registers(o);
          mbar_arrive(bar_empty + 8 * ((i - 1) % kStages));
          // The first tile's o is 0: nothing to rescale. Later tiles skip it (64 multiplies a
          // thread) when no row maximum of the warp moved: the factors are then exactly 1.
          if (__any_sync(0xffffffffu, scale_old[0] != 1.0f || scale_old[1] != 1.0f)) rescale_o(scale_old);
        }
        pack_p(s, pa);
        first = false;
        t = t_next;
      }
      if (!first) {
        wgmma_fence();
        issue_pv(pa, (i - 1) % kStages);
        wgmma_wait<0>();
        fence_registers(o);
        // With the staged epilogue the last stage stays held: its K half takes the output.
        if (!stage_out) mbar_arrive(bar_empty + 8 * ((i - 1) % kStages));
      }
      // Nothing is in flight here, but ptxas cannot follow `first` across the loop and would
      // insert this wait itself (with a warning).
      wgmma_wait<0>();
    }
    release_q();  // an item without key tiles (every key masked, or an empty split)
    if (tracer) {
      ATTN_FWD_TRACE(n, trace_base + 2, ATTN_FWD_TRACE_CLOCK());
      ATTN_FWD_TRACE(n, trace_base + 4, trace_wait);
      ATTN_FWD_TRACE(n, 23, tiles.t_end - tiles.t_begin);
    }

    // ---- epilogue ----------------------------------------------------------------------
    // Staged in shared memory and stored by TMA where the map exists (below); otherwise straight
    // from registers (sQ may already hold the next item's Q), each quad of lanes writing 16
    // contiguous bytes of a row per store.
    float inv_l[2], lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sm80::quad_sum(l_run[h]);
      inv_l[h] = l > 0.0f ? 1.0f / l : 0.0f;
      lse[h] = l > 0.0f ? (m_run[h] + __log2f(l)) * sm80::kLn2 : kNegInf;
    }
    if (tracer) ATTN_FWD_TRACE(n, trace_base + 8, ATTN_FWD_TRACE_CLOCK());
    const int Hq = p.heads_q;
    if (params.n_splits > 1) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int x = m0 + tile_row(h);
        if (x >= Sq) continue;
        const std::int64_t row = ((std::int64_t(wk.split) * p.batch + b) * p.seqlen_q + x) * Hq + slot;
        float* dst = params.o_part + row * D;
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
          *reinterpret_cast<float2*>(dst + nt * 8 + lane % 4 * 2) =
              make_float2(o[4 * nt + 2 * h] * inv_l[h], o[4 * nt + 2 * h + 1] * inv_l[h]);
        if (lane % 4 == 0) params.lse_part[row] = lse[h];
      }
      if (tracer) ATTN_FWD_TRACE(n, trace_base + 3, ATTN_FWD_TRACE_CLOCK());
      continue;
    }
    if (stage_out && !first) {
      // Through shared memory and a TMA store, so the consumers do not wait for 16 KB of
      // scattered 4-byte stores per warpgroup (the trace measured ~2100 clocks an item). The
      // K half of the item's last stage is free once both warpgroups' last S = Q K^T have
      // completed, which Q's release barrier says; the stage's empty barrier is arrived on
      // only once the store has read it. Rows past the sequence fall outside the map (TMA
      // requires the padded layout, where Sq is the tensor's extent) and are not written.
      const int stage = (i - 1) % kStages;
      mbar_wait(bar_q_empty, n & 1);
      if (tracer) ATTN_FWD_TRACE(n, 24 + wg, ATTN_FWD_TRACE_CLOCK());
      const std::uint32_t so = sK + stage * Tr::kTileBytesK + 64 * wg * 128;
      const int r = 16 * (warp % 4) + 8 * (lane / 8 % 2) + lane % 8;  // row of matrix lane / 8 this lane addresses
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        const int c = 2 * np + lane / 16;  // its 16-byte column chunk
        stmatrix_x4(so + (c / 8) * BN * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4),
                    sm80::pack2<T>(o[8 * np + 0] * inv_l[0], o[8 * np + 1] * inv_l[0]),
                    sm80::pack2<T>(o[8 * np + 2] * inv_l[1], o[8 * np + 3] * inv_l[1]),
                    sm80::pack2<T>(o[8 * np + 4] * inv_l[0], o[8 * np + 5] * inv_l[0]),
                    sm80::pack2<T>(o[8 * np + 6] * inv_l[1], o[8 * np + 7] * inv_l[1]));
      }
      fence_proxy_async();
      if (tracer) ATTN_FWD_TRACE(n, 26 + wg, ATTN_FWD_TRACE_CLOCK());
      named_barrier_sync(6 + wg, 128);
      if (threadIdx.x % 128 == 0) {
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) tma_store_4d(&params.tma_o, so + cb * BN * 128, 64 * cb, m0 + 64 * wg, slot, b);
        bulk_commit();
        bulk_wait_read<0>();
      }
      mbar_arrive(bar_empty + 8 * stage);
    } else {
      T* out = static_cast<T*>(p.out);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int x = m0 + tile_row(h);
        if (x >= Sq) continue;
        T* dst = out + sm80::row_offset(p.out_layout, b, x, slot) + lane % 4 * 2;
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
          *reinterpret_cast<std::uint32_t*>(dst + nt * 8) =
              sm80::pack2<T>(o[4 * nt + 2 * h] * inv_l[h], o[4 * nt + 2 * h + 1] * inv_l[h]);
      }
    }
    if (p.lse != nullptr && lane % 4 == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int x = m0 + tile_row(h);
        if (x < Sq) p.lse[sm80::row_offset(p.lse_layout, b, x, slot)] = lse[h];
      }
    }
    if (tracer) ATTN_FWD_TRACE(n, trace_base + 3, ATTN_FWD_TRACE_CLOCK());
  }
  if (stage_out && threadIdx.x % 128 == 0) bulk_wait<0>();  // the output stores are complete
#endif
}

template <class T, int D>
void launch_fwd(const FwdParams& params, cudaStream_t stream) {
  using Tr = Sm90FwdTraits<D>;
  // sm90_variant: 0 pipelined + ping-pong (default), 1 pipelined, 2 plain + ping-pong, 3 plain.
  // D 256 has one loop only (one instantiation per file keeps the build short): pipelined
  // without turns, as its softmax (64 keys) is short beside its multiplies (same-process A/B on
  // the H100: full and causal 0.5-1% faster than with turns, windows 3-7%).
  auto kernel = flash_fwd_sm90_kernel<T, D, true, D != 256>;
  if constexpr (D != 256) {
    kernel = params.sm90_variant == 1   ? flash_fwd_sm90_kernel<T, D, true, false>
             : params.sm90_variant == 2 ? flash_fwd_sm90_kernel<T, D, false, true>
             : params.sm90_variant == 3 ? flash_fwd_sm90_kernel<T, D, false, false>
                                        : kernel;
  }
  ATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  // The work counter starts at 0 for every call (the workspace may hold anything).
  ATTN_CUDA_CHECK(cudaMemsetAsync(params.work_counter, 0, sizeof(int), stream));
#if defined(ATTN_SM90_FWD_TRACE)
  {
    const char* env = std::getenv("ATTN_CUDA_TRACE_PTR");
    unsigned long long* trace = env != nullptr ? reinterpret_cast<unsigned long long*>(std::strtoull(env, nullptr, 10)) : nullptr;
    ATTN_CUDA_CHECK(cudaMemcpyToSymbolAsync(g_fwd_trace, &trace, sizeof trace, 0, cudaMemcpyHostToDevice, stream));
  }
#endif
  kernel<<<unsigned(params.grid_ctas), Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
  ATTN_CUDA_CHECK_LAUNCH("flash_fwd_sm90_kernel");
}

}  // namespace attn::cuda::sm90

/// One explicit instantiation of the Hopper forward, for a src/cuda/sm90/flash_fwd_*.cu file.
#define ATTN_INSTANTIATE_FLASH_FWD_SM90(DTYPE, CTYPE, D)                                   \
  namespace attn::cuda {                                                                   \
  template <>                                                                              \
  void launch_flash_fwd_sm90<DType::DTYPE, D>(const FwdParams& params, cudaStream_t stream) { \
    sm90::launch_fwd<CTYPE, D>(params, stream);                                            \
  }                                                                                        \
  }
