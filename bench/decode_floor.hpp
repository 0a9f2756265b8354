// Reference passes for CPU decode at G = 4 over the paged f16 cache of bench/cpu_decode_timing:
// what a kernel with only the unavoidable work, or with no arithmetic at all, reaches on the
// machine (docs/PERF-cpu-decode.md, "Ninth session: what the machine allows").
//
// Per key and kv head, any decode kernel must convert the key's and the value's head_dim halves
// to f32 and do G x head_dim fused multiply-adds for the scores and as many for P V. Four passes
// over one sequence's context, each in steps of 32 keys as the kernel (src/cpu/flash_forward.hpp,
// "decode tiles"):
//   arithmetic:   exactly that work in the kernel's order (every key's heads' dots, two keys at
//                 a time, then P V per head, 16 dims x all the step's keys at a time), 8
//                 independent FMA chains in both loops, q pinned in registers, and nothing else:
//                 no softmax, no masks, no horizontal sums (the score accumulators go into a
//                 sink), the same four probabilities for every key (held in registers; the kernel
//                 broadcasts a new one per key and row).
//   kernel_order: no arithmetic: each line the arithmetic pass reads is loaded once, in the order
//                 that pass first touches it.
//   address_order: no arithmetic: each key's K run, then each key's V run, in address order.
//   address_arithmetic: the same FMAs and conversions as `arithmetic`, with V read like K: the
//                 score loop over the V rows too (two keys at a time, heads inner, near address
//                 order). Not decode (P V needs the step's probabilities and keeps o, not dot
//                 products), but the most memory-friendly order for this much arithmetic.
// With `prefetch`, the next step's K and V lines are requested (prefetcht1) a few per call,
// spread over the step, as the kernel does (docs/PERF-cpu-decode.md, v4-v5); without it only
// the hardware prefetchers fetch ahead. The results are not attention (nothing is normalised).
// address_order is a ceiling for any kernel that reads this cache; arithmetic is not a strict
// bound (its prefetch loop is plainer than the kernel's) but says how fast the kernel's structure
// runs when the softmax, masks, reductions and broadcasts cost nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace attn::bench {

enum class FloorPass { arithmetic, kernel_order, address_order, address_arithmetic };

struct DecodeFloorArgs {
  const std::uint16_t* k_pool = nullptr;  // (pages, page, heads, 128) f16
  const std::uint16_t* v_pool = nullptr;
  const std::int32_t* table = nullptr;  // (batch, pages_per_seq)
  int pages_per_seq = 0, page = 16, heads = 8, ctx = 0;  // ctx a multiple of 32
  const float* q = nullptr;  // (heads, 4, 128) f32
  float* o = nullptr;        // per thread: (heads, 4, 128) f32
  float* sink = nullptr;     // per thread: 8 floats
};

#if defined(__x86_64__)
namespace floor_detail {

constexpr int kD = 128, kRows = 4, kStep = 32, kLinesPerHeadRow = kD * 2 / 64;

__attribute__((target("avx2,fma,f16c"))) inline __m256 cvt(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

/// The next step's lines, `n` per call, in address order (all K runs, then all V runs).
struct NextStepLines {
  const std::uint16_t* const* rows[2];
  int keys = 0, lines_per_row = 0;
  int section = 0, row = 0, line = 0;
  void issue(int n) {
    for (; n > 0 && section < 2 && keys > 0; --n) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[section][row]) + 64 * line, _MM_HINT_T1);
      if (++line == lines_per_row) {
        line = 0;
        if (++row == keys) row = 0, ++section;
      }
    }
  }
};

}  // namespace floor_detail

/// One pass of `pass` over sequence b's whole context.
__attribute__((target("avx2,fma,f16c"))) inline void decode_floor_sequence(const DecodeFloorArgs& a, int b,
                                                                             FloorPass pass, bool prefetch) {
  using namespace floor_detail;
  const int H = a.heads, run = H * kD;
  const std::uint16_t* krows[2][kStep];
  const std::uint16_t* vrows[2][kStep];
  auto pointers = [&](int j0, int slot) {
    for (int c = 0; c < kStep; ++c) {
      const int j = j0 + c;
      const std::int64_t page = a.table[std::int64_t(b) * a.pages_per_seq + j / a.page];
      const std::int64_t token = page * a.page + j % a.page;
      krows[slot][c] = a.k_pool + token * run;
      vrows[slot][c] = a.v_pool + token * run;
    }
  };
  __m256 sink = _mm256_setzero_ps();
  const __m256 p0 = _mm256_set1_ps(0.25f), p1 = _mm256_set1_ps(0.5f), p2 = _mm256_set1_ps(0.125f),
               p3 = _mm256_set1_ps(0.0625f);
  // The step's 2 x 32 rows of `run` halves, spread over its 16 x H dot calls and 8 x H P V calls.
  const int lines_per_row = run * 2 / 64, calls = (kStep / 2 + kD / 16) * H;
  const int per_call = (2 * kStep * lines_per_row + calls - 1) / calls;
  pointers(0, 0);
  int cur = 0;
  for (int j0 = 0; j0 < a.ctx; j0 += kStep, cur ^= 1) {
    NextStepLines ahead{{krows[cur ^ 1], vrows[cur ^ 1]}, 0, lines_per_row};
    if (j0 + kStep < a.ctx) {
      pointers(j0 + kStep, cur ^ 1);
      ahead.keys = prefetch ? kStep : 0;
    }
    if (pass == FloorPass::address_order) {
      for (const auto* rows : {krows[cur], vrows[cur]})
        for (int j = 0; j < kStep; ++j) {
          ahead.issue(per_call / 2);
          for (int l = 0; l < lines_per_row; ++l) sink = _mm256_add_ps(sink, cvt(rows[j] + 32 * l));
        }
      continue;
    }
    // Scores: keys outer (two at a time), heads inner. address_arithmetic runs the V rows
    // through the same loop instead of the P V loop below.
    for (const auto* rows : {krows[cur], vrows[cur]}) {
      if (rows == vrows[cur] && pass != FloorPass::address_arithmetic) break;
      for (int j = 0; j < kStep; j += 2)
      for (int h = 0; h < H; ++h) {
        ahead.issue(per_call);
        const std::uint16_t* k0 = rows[j] + h * kD;
        const std::uint16_t* k1 = rows[j + 1] + h * kD;
        if (pass == FloorPass::kernel_order) {
          for (int l = 0; l < kLinesPerHeadRow; ++l)
            sink = _mm256_add_ps(sink, _mm256_add_ps(cvt(k0 + 32 * l), cvt(k1 + 32 * l)));
          continue;
        }
        const float* q = a.q + h * kRows * kD;
        __m256 acc[8];
        for (int x = 0; x < 8; ++x) acc[x] = _mm256_setzero_ps();
        for (int e = 0; e < kD; e += 8) {
          __m256 qv[kRows];
          for (int r = 0; r < kRows; ++r) {
            qv[r] = _mm256_loadu_ps(q + r * kD + e);
            asm("" : "+x"(qv[r]));  // kept in registers, as the kernel does (v6)
          }
          const __m256 ka = cvt(k0 + e), kb = cvt(k1 + e);
          for (int r = 0; r < kRows; ++r) {
            acc[r] = _mm256_fmadd_ps(ka, qv[r], acc[r]);
            acc[4 + r] = _mm256_fmadd_ps(kb, qv[r], acc[4 + r]);
          }
        }
        for (int x = 0; x < 8; ++x) sink = _mm256_add_ps(sink, acc[x]);
      }
    }
    if (pass == FloorPass::address_arithmetic) continue;
    // P V: per head, 16 dims of the 4 rows in registers across the step's keys.
    for (int h = 0; h < H; ++h) {
      float* o = a.o + h * kRows * kD;
      for (int e = 0; e < kD; e += 16) {
        ahead.issue(per_call);
        if (pass == FloorPass::kernel_order) {
          if (e % 32 == 0)  // a 64-byte line holds 32 halves: first touched at every other chunk
            for (int j = 0; j < kStep; ++j) sink = _mm256_add_ps(sink, cvt(vrows[cur][j] + h * kD + e));
          continue;
        }
        __m256 acc[8];
        for (int r = 0; r < kRows; ++r) {
          acc[2 * r] = _mm256_loadu_ps(o + r * kD + e);
          acc[2 * r + 1] = _mm256_loadu_ps(o + r * kD + e + 8);
        }
        for (int j = 0; j < kStep; ++j) {
          const std::uint16_t* vj = vrows[cur][j] + h * kD + e;
          const __m256 va = cvt(vj), vb = cvt(vj + 8);
          acc[0] = _mm256_fmadd_ps(p0, va, acc[0]);
          acc[1] = _mm256_fmadd_ps(p0, vb, acc[1]);
          acc[2] = _mm256_fmadd_ps(p1, va, acc[2]);
          acc[3] = _mm256_fmadd_ps(p1, vb, acc[3]);
          acc[4] = _mm256_fmadd_ps(p2, va, acc[4]);
          acc[5] = _mm256_fmadd_ps(p2, vb, acc[5]);
          acc[6] = _mm256_fmadd_ps(p3, va, acc[6]);
          acc[7] = _mm256_fmadd_ps(p3, vb, acc[7]);
        }
        for (int r = 0; r < kRows; ++r) {
          _mm256_storeu_ps(o + r * kD + e, acc[2 * r]);
          _mm256_storeu_ps(o + r * kD + e + 8, acc[2 * r + 1]);
        }
      }
    }
  }
  _mm256_storeu_ps(a.sink, _mm256_add_ps(sink, _mm256_loadu_ps(a.sink)));
}
#endif

}  // namespace attn::bench
