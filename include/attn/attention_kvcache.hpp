// Attention over a KV cache (decode, append and chunked prefill), modelled on
// flash_attn_with_kvcache.
//
// Shape letters: B sequences, Sq queries per sequence, Snew new tokens per sequence, Hq / Hk
// query / kv heads, D / Dv head dims, Smax cache capacity, P pages of S tokens, M table width.
//
//   q              (B, Sq, Hq, D)
//   k_cache        contiguous (B, Smax, Hk, D)      or paged (P, S, Hk, D)
//   v_cache        contiguous (B, Smax, Hk, Dv)     or paged (P, S, Hk, Dv)
//   block_table    i32 (B, M), paged only: page of tokens [i*S, (i+1)*S) of sequence b
//   cache_seqlens  i32 (B,): tokens already in the cache per sequence
//   k_new, v_new   optional (B, Snew, Hk, D / Dv): written at positions cache_seqlens[b] ..
//                  cache_seqlens[b] + Snew - 1 before attention
//   out            (B, Sq, Hq, Dv)
//   lse            optional f32 (B, Hq, Sq)
//
// Sequence b attends to its first L_b = cache_seqlens[b] + Snew keys; queries are aligned to
// the end of them (bottom-right), so with a causal mask query i sits at position
// i + L_b - Sq: decode (Sq = 1) sees everything, chunked prefill (Sq = Snew) is causal over
// the prefix and within the chunk. Masks, soft-capping, scale and lse follow AttentionParams
// exactly as attention_forward does.
//
// Everything is validated first (shapes, dtypes, lengths against Smax or the block table,
// page ids, two sequences writing one cache slot); a call that throws changes nothing.
// cache_seqlens is not advanced: the caller owns the lengths.
//
// Devices: every tensor on the CPU, or every tensor on one CUDA device (the backend follows
// q's device, as in attention_forward). On CUDA the append and the attention run on the
// device's default stream, asynchronously; the checks need cache_seqlens and the block table
// on the host, so the call first copies those small int32 arrays back (a synchronous copy).
// The CUDA path runs f16 and bf16 with the head dims of the CUDA forward; page sizes are
// free (any page_size >= 1), and the workspace lives on the device.
#pragma once

#include <cstddef>

#include "attn/attention.hpp"

namespace attn {

struct KVCacheArgs {
  TensorView q;
  TensorView k_cache, v_cache;
  TensorView block_table;  ///< defined = paged cache
  TensorView cache_seqlens;
  TensorView k_new, v_new;  ///< both or neither
  TensorView out;
  TensorView lse;  ///< optional
  AttentionParams params;
};

/// Workspace bytes the backend needs (validates like the call itself).
std::size_t attention_with_kvcache_workspace_size(const KVCacheArgs& args, Backend backend = Backend::automatic);
/// Uses the given workspace (on q's device); never allocates device memory for the kernel.
void attention_with_kvcache(const KVCacheArgs& args, Workspace workspace, Backend backend = Backend::automatic);
/// Allocates the workspace it needs.
void attention_with_kvcache(const KVCacheArgs& args, Backend backend = Backend::automatic);

}  // namespace attn
