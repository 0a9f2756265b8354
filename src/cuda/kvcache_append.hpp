// The device half of attention_with_kvcache's append (src/cache/attention_kvcache.cpp): new
// tokens into a contiguous or paged cache, and the per-sequence key lengths the forward reads.
// Callers validate first (lengths against the capacity, page ids, no two writes to one slot);
// these kernels trust the indices they are given. Work goes to the current device's default
// stream, asynchronously.
//
// Shape letters: B sequences, Snew new tokens per sequence, Hk kv heads, D elements per row.
#pragma once

#include <cstddef>
#include <cstdint>

#include "problem.hpp"

namespace attn::cuda {

/// One cache (K or V) and the tokens appended to it.
struct KvAppendTensor {
  /// Contiguous (B, Smax, Hk, D) or a page pool (P, S, Hk, D); token t of sequence b, head h
  /// starts at element cache_layout.offset(b, t, h) (TokenLayout paged or padded).
  void* cache = nullptr;
  detail::TokenLayout cache_layout;
  /// (B, Snew, Hk, D), padded layout, same dtype as the cache.
  const void* src = nullptr;
  detail::TokenLayout src_layout;
  int dim = 0;  ///< D: elements per (token, head) row, unit stride
};

struct KvAppendParams {
  KvAppendTensor k, v;
  /// i32 (B,) on the device, contiguous: sequence b's new tokens go to positions
  /// cache_seqlens[b] .. cache_seqlens[b] + Snew - 1.
  const std::int32_t* cache_seqlens = nullptr;
  int batch = 0;
  int seqlen_new = 0;
  int heads_kv = 0;
  std::size_t element_size = 0;  ///< bytes per element of caches and sources
};

/// Copies k_new / v_new into the caches (a byte copy: the dtype only sets the element size).
/// Rows move in the widest of 16, 8, 4, 2 or 1-byte words that every pointer and stride allows.
void launch_kvcache_append(const KvAppendParams& params);

/// seqlens_k[b] = cache_seqlens[b] + seqlen_new for b < batch (both i32 on the device,
/// contiguous): the key lengths of the forward that follows the append.
void launch_kvcache_seqlens(const std::int32_t* cache_seqlens, int seqlen_new, int batch, std::int32_t* seqlens_k);

}  // namespace attn::cuda
