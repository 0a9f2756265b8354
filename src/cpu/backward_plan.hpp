// How the CPU backward (flash_backward.hpp) cuts a problem into work units and lays out its
// workspace, and the two calls the CPU backend makes:
//
//   backend.cpp:  backward_workspace_size(p) -> flash_backward_workspace_size(p)
//                 backward(p, ws)            -> flash_backward_run(p, ws)
//
// Three passes, each parallel over independent units (thread_pool.hpp):
//   1. prepare  (b, kv head, query block): Q and dO rows into f32 tiles, D = rowsum(dO * O),
//      lse in base 2 (+inf for fully masked rows, so their P is exactly 0).
//   2. main     (b, kv head, key chunk): for each key block of the chunk, dK and dV of the
//      block accumulate in the thread's tiles over every query block that reaches it, then are
//      written once; dQ accumulates into the chunk's own f32 partial.
//   3. finish   (b, kv head, query block): dq = scale * sum of the chunk partials, in chunk order.
// The chunk count depends only on the problem, never on the threads, and every sum runs in a
// fixed order, so gradients are bitwise reproducible for any thread count or schedule.
//
// Rows of a tile are (query position, head of the GQA group), position-major: row = i * G + g
// for query head hkv * G + g, so one K/V block serves the whole group and dK/dV sum over it.
//
// Workspace, in floats, 64-byte aligned blocks. Per sequence b, (Hkv, Sq_b * G) rows: its own
// length, so a packed batch costs its total tokens, not B times the longest sequence.
//   q      (rows, d_pad)    query rows in f32, zero columns past d
//   dout   (rows, dv_pad)   dO rows in f32, zero columns past dv
//   lse2   (rows)           lse * log2(e), +inf for rows that attend to nothing
//   delta  (rows)           D = rowsum(dO * O)
//   dq     (B: Hkv, chunks, Sq_b * G, d_pad)  per-chunk dQ partials (unscaled)
//   per thread: k_t (d x Bc), v_t (dv x Bc)   K and V blocks transposed (zero past the keys)
//               k (Bc x d_pad)                K block as is (zero columns past d)
//               dk (Bc x d_pad), dv (Bc x dv_pad)  accumulators
//               s, ds (rows x Bc)             P and dS of one tile, row-major
#pragma once

#include <cstddef>
#include <cstdint>

#include "attn/attention.hpp"
#include "problem.hpp"

namespace attn::cpu {

struct BackwardPlan {
  static constexpr int kKeyBlock = 64;   ///< keys per block (Bc): a panel multiple on every ISA
  static constexpr int kTileRows = 64;   ///< target rows per query tile: positions x group heads
  static constexpr int kPad = 32;        ///< widest gemm panel (AVX-512), so any ISA fits the layout
  static constexpr int kTargetUnits = 16;  ///< main-pass units wanted before chunking stops
  static constexpr int kMaxChunks = 8;
  static constexpr std::size_t kMaxPartialBytes = std::size_t(64) << 20;  ///< dQ partials cap, when chunked

  int group = 1;
  int block_positions = 1;  ///< query positions per tile
  int rows = 1;             ///< block_positions * group
  int d_pad = 0, dv_pad = 0;
  int num_query_blocks = 0;
  int num_key_blocks = 0;   ///< of the longest key sequence
  int chunks = 1;           ///< key chunks per (sequence, kv head)
  int threads = 1;
  std::size_t total_rows = 0;  ///< query tokens of all sequences x heads_q

  std::size_t q = 0, dout = 0, lse2 = 0, delta = 0, dq = 0;  ///< offsets in floats
  std::size_t k_t = 0, v_t = 0, k = 0, dk = 0, dv = 0, s = 0, ds = 0;  ///< offsets within a thread slice
  std::size_t thread_base = 0, thread_floats = 0;
  std::size_t workspace_bytes = 0;
};

BackwardPlan plan_backward(const detail::BackwardProblem& p, int threads);

/// Sized for the current thread count.
std::size_t flash_backward_workspace_size(const detail::BackwardProblem& p);
/// Runs on active_isa(); uses fewer threads when the pool grew since the workspace was sized.
void flash_backward_run(const detail::BackwardProblem& p, Workspace ws);

namespace scalar { void flash_backward_entry(const detail::BackwardProblem&, const BackwardPlan&, std::byte*); }
namespace avx2 { void flash_backward_entry(const detail::BackwardProblem&, const BackwardPlan&, std::byte*); }
namespace avx512 { void flash_backward_entry(const detail::BackwardProblem&, const BackwardPlan&, std::byte*); }

}  // namespace attn::cpu
