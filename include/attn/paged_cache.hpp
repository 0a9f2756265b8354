// Paged KV cache (PagedAttention): per layer a pool of pages, shared block tables.
//
// Shape letters: P pages, S page_size (tokens per page), Hk kv heads, D / Dv head dims,
// B sequences in a batch, M max pages per sequence.
//
//   k pool of a layer   (P, S, Hk, D)   row-major: token slot s of page p, head h starts at
//                                        ((p * S + s) * Hk + h) * D
//   v pool of a layer   (P, S, Hk, Dv)
//   block table         i32 (B, M): entry [b][i] = page holding tokens [i*S, (i+1)*S) of b
//   cache seqlens       i32 (B,): tokens stored per sequence
//
// The BlockManager decides which pages a sequence uses; PagedKVCache applies its decisions
// to the storage (copy-on-write copies in every layer) and hands attention_with_kvcache the
// table and lengths of a batch. A decode step of an engine reads:
//   Tensor lens = cache.seqlens(seqs);                // tokens already stored
//   for (s : seqs) cache.append(s, {next_token[s]});  // reserve a slot (copy-on-write here)
//   Tensor table = cache.block_table(seqs);           // after append: includes new pages
//   per layer: attention_with_kvcache({q, layer.k(), layer.v(), table, lens, k_new, v_new, out})
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attn/block_manager.hpp"
#include "attn/tensor.hpp"

namespace attn {

/// The K and V pages of one layer.
class PagePool {
 public:
  PagePool(std::int32_t num_pages, std::int32_t page_size, std::int32_t heads_kv, std::int32_t head_dim,
           std::int32_t head_dim_v, DType dtype);
  /// (P, S, Hk, D) and (P, S, Hk, Dv), contiguous.
  const Tensor& k() const { return k_; }
  const Tensor& v() const { return v_; }
  /// Copies every slot of page `src` into page `dst` (K and V).
  void copy_page(std::int32_t src, std::int32_t dst) const;

 private:
  Tensor k_, v_;
};

struct PagedCacheConfig {
  std::int32_t num_layers = 1;
  std::int32_t num_pages = 0;
  std::int32_t page_size = 16;
  std::int32_t heads_kv = 0;
  std::int32_t head_dim = 0;
  std::int32_t head_dim_v = 0;  ///< 0 = head_dim
  DType dtype = DType::f32;
  bool prefix_caching = true;
};

struct PagedCacheStats {
  BlockStats blocks;
  std::int64_t bytes_per_slot = 0;     ///< K + V of one token in every layer
  std::int64_t bytes_total = 0;        ///< the whole pool
  std::int64_t bytes_reserved = 0;     ///< pages in use
  std::int64_t bytes_with_tokens = 0;  ///< slots of pages in use that hold a token
};

/// Block manager + one PagePool per layer.
class PagedKVCache {
 public:
  using SeqId = BlockManager::SeqId;
  explicit PagedKVCache(const PagedCacheConfig& config);

  const PagedCacheConfig& config() const { return config_; }
  const BlockManager& manager() const { return manager_; }
  const PagePool& layer(int l) const;

  /// See BlockManager: same semantics, with copy-on-write applied to the storage.
  BlockManager::Added add_sequence(std::span<const std::int32_t> prompt) { return manager_.add_sequence(prompt); }
  void append(SeqId seq, std::span<const std::int32_t> tokens);
  SeqId fork(SeqId seq) { return manager_.fork(seq); }
  void free(SeqId seq) { manager_.free(seq); }
  void release_before(SeqId seq, std::int64_t first_kept) { manager_.release_before(seq, first_kept); }
  std::int64_t length(SeqId seq) const { return manager_.length(seq); }

  /// Writes K (n, Hk, D) and V (n, Hk, Dv) of layer `layer` at positions first..first+n-1 of
  /// `seq`, which must already be reserved (append) and held by `seq` alone.
  void write(int layer, SeqId seq, std::int64_t first, const TensorView& k, const TensorView& v);
  /// Copies the first `n` tokens of `seq` in `layer` into contiguous K (n, Hk, D), V (n, Hk, Dv).
  void read(int layer, SeqId seq, std::int64_t n, const TensorView& k, const TensorView& v) const;

  /// The i32 (B, M) block table of `seqs` (M = the most pages any of them holds; entries past
  /// a sequence's pages and pages released by a window read 0, which the lengths and the
  /// window mask keep attention from using) and their i32 (B,) lengths.
  Tensor block_table(std::span<const SeqId> seqs) const;
  Tensor seqlens(std::span<const SeqId> seqs) const;

  PagedCacheStats stats() const;

 private:
  PagedCacheConfig config_;
  BlockManager manager_;
  std::vector<PagePool> layers_;
};

}  // namespace attn
