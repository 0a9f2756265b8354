// PagedAttention bookkeeping without storage: which pages each sequence owns, how many
// sequences share each page, and which full pages can be found again by their tokens.
//
// Terms: a page holds `page_size` consecutive token slots of one sequence (in every layer at
// once: page p of the manager is page p of every layer's pool, see paged_cache.hpp). Token t
// of a sequence lives in page table[t / page_size], slot t % page_size.
//
// Pieces, each small and testable alone (one responsibility each):
//   BlockAllocator  reference counts, the free list, the LRU list of free pages still cached
//   PrefixCache     hash chain of a full page's tokens -> page id
//   BlockTable      one sequence: its page ids, length and token ids
//   BlockManager    ties them: add / append / fork / free / window release / prefix match
// Every operation that can run out of pages checks first and commits after, so a thrown
// OutOfPages leaves every table, count and page exactly as it was.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <span>
#include <unordered_map>
#include <vector>

#include "attn/error.hpp"

namespace attn {

/// Thrown when an operation needs more free pages than the pool has. Nothing was changed;
/// the caller may preempt a sequence (free it) and retry.
class OutOfPages : public Error {
 public:
  OutOfPages(std::int64_t needed, std::int64_t available);
  std::int64_t needed;
  std::int64_t available;
};

/// Reference counts and reuse order of `num_pages` pages.
///
/// A page is in use (count >= 1), free, or free-but-cached (count 0, still registered in the
/// PrefixCache so a later sequence may revive it). allocate() takes never-cached free pages
/// first, then the least recently freed cached page, whose cache entry the caller must drop.
class BlockAllocator {
 public:
  explicit BlockAllocator(std::int32_t num_pages);

  std::int32_t num_pages() const { return std::int32_t(ref_.size()); }
  /// Pages allocate() can hand out: free plus free-but-cached.
  std::int32_t available() const { return std::int32_t(free_.size() + lru_.size()); }
  std::int32_t num_free_uncached() const { return std::int32_t(free_.size()); }
  std::int32_t num_free_cached() const { return std::int32_t(lru_.size()); }
  std::int32_t ref_count(std::int32_t page) const { return ref_[std::size_t(page)]; }

  struct Allocation {
    std::int32_t page;
    bool was_cached;  ///< taken from the LRU list: drop its PrefixCache entry
  };
  /// One page with count 1. Precondition: available() > 0.
  Allocation allocate();
  void incref(std::int32_t page);
  /// Revives a free-but-cached page (count 0 -> 1) found by a prefix match.
  void revive(std::int32_t page);
  /// count - 1; at 0 the page becomes free, or free-but-cached when `cached` (most recently used).
  void decref(std::int32_t page, bool cached);

 private:
  std::vector<std::int32_t> ref_;
  std::vector<std::int32_t> free_;  // a stack: recently freed pages are reused first (warm memory)
  std::list<std::int32_t> lru_;     // front = least recently used
  std::vector<std::list<std::int32_t>::iterator> lru_pos_;
  std::vector<bool> in_lru_;
};

/// Full pages found by content: key = hash of (hash of the previous page, this page's token
/// ids), so equal keys mean equal prefixes up to and including the page. Token ids are kept
/// and compared on lookup, so a hash collision is a miss, never wrong data.
class PrefixCache {
 public:
  /// Hash of a page's tokens chained to the previous page's hash (0 for the first page).
  static std::uint64_t chain_hash(std::uint64_t previous, std::span<const std::int32_t> tokens);

  /// The page registered under `hash` holding exactly `tokens`, or -1.
  std::int32_t lookup(std::uint64_t hash, std::span<const std::int32_t> tokens) const;
  /// Registers `page`; returns false (and changes nothing) when `hash` already has a page.
  bool insert(std::uint64_t hash, std::int32_t page, std::span<const std::int32_t> tokens);
  bool contains_page(std::int32_t page) const { return by_page_.count(page) != 0; }
  void erase_page(std::int32_t page);
  std::size_t size() const { return by_hash_.size(); }

 private:
  struct Entry {
    std::uint64_t hash;
    std::vector<std::int32_t> tokens;
  };
  std::unordered_map<std::uint64_t, std::int32_t> by_hash_;
  std::unordered_map<std::int32_t, Entry> by_page_;
};

/// One sequence's pages. pages[i] holds tokens [i * page_size, (i + 1) * page_size);
/// kReleased marks a page given back by a sliding window.
struct BlockTable {
  static constexpr std::int32_t kReleased = -1;
  std::vector<std::int32_t> pages;
  std::vector<std::int32_t> tokens;  ///< token ids, one per stored position (the hash input)
  std::int64_t num_tokens() const { return std::int64_t(tokens.size()); }
  /// Chain hashes of the first hashes.size() (full) pages.
  std::vector<std::uint64_t> hashes;
};

/// A page copy the storage must perform (copy-on-write): every layer's page `src` into `dst`.
struct PageCopy {
  std::int32_t src;
  std::int32_t dst;
};

struct BlockStats {
  std::int32_t pages_total = 0;
  std::int32_t pages_used = 0;    ///< count >= 1
  std::int32_t pages_free = 0;    ///< count 0, not cached
  std::int32_t pages_cached = 0;  ///< count 0, registered for prefix reuse (evictable)
  std::int64_t sequences = 0;
  std::int64_t tokens_logical = 0;  ///< sum of sequence lengths (shared tokens counted per sequence)
  std::int64_t slots_reserved = 0;  ///< pages_used * page_size
  std::int64_t slots_filled = 0;    ///< slots of used pages that hold a token
};

struct BlockManagerConfig {
  std::int32_t num_pages = 0;
  std::int32_t page_size = 16;
  bool prefix_caching = true;
};

/// The block manager: sequences, their tables, sharing and prefix reuse.
class BlockManager {
 public:
  using SeqId = std::int64_t;
  explicit BlockManager(BlockManagerConfig config);

  const BlockManagerConfig& config() const { return config_; }
  std::int32_t page_size() const { return config_.page_size; }

  struct Added {
    SeqId seq;
    /// Leading prompt tokens whose K/V are already in the pool (prefix hit); the caller
    /// computes and writes only the rest. Always < the prompt length, so the last prompt
    /// token is recomputed and its logits exist.
    std::int64_t cached_tokens;
  };
  /// A new sequence holding `prompt`: reuses cached full pages of the longest matching
  /// prefix, allocates the rest. Throws OutOfPages (changing nothing) when they do not fit.
  Added add_sequence(std::span<const std::int32_t> prompt);
  /// Pages add_sequence(prompt) would take from the free lists (0 when it all hits).
  std::int64_t pages_needed_to_add(std::span<const std::int32_t> prompt) const;

  /// Reserves slots for `tokens` after the sequence's end; the caller writes their K/V next
  /// (before any other sequence is added, or in the same attention call). Writing into a
  /// page shared with another sequence copies it first: the returned copies must be applied
  /// to every layer's pool. Pages that become full are registered for prefix reuse.
  /// Throws OutOfPages (changing nothing).
  std::vector<PageCopy> append(SeqId seq, std::span<const std::int32_t> tokens);
  /// Pages append(seq, n tokens) would allocate.
  std::int64_t pages_needed_to_append(SeqId seq, std::int64_t n) const;

  /// A new sequence sharing every page of `seq` (parallel sampling, beam search).
  SeqId fork(SeqId seq);
  /// Drops the sequence; its pages are freed when no other sequence holds them.
  void free(SeqId seq);
  /// Sliding window: gives back the pages whose every token lies before `first_kept`
  /// (positions < first_kept will never be attended to again).
  void release_before(SeqId seq, std::int64_t first_kept);

  bool contains(SeqId seq) const { return seqs_.count(seq) != 0; }
  const BlockTable& table(SeqId seq) const;
  std::int64_t length(SeqId seq) const { return table(seq).num_tokens(); }
  /// Sequence ids in creation order.
  std::vector<SeqId> sequences() const;
  const BlockAllocator& allocator() const { return alloc_; }
  const PrefixCache& prefix_cache() const { return prefix_; }
  BlockStats stats() const;

 private:
  BlockTable& table_mut(SeqId seq);
  std::int32_t take_page();
  void register_full_pages(BlockTable& t);
  void release_page(std::int32_t page);

  BlockManagerConfig config_;
  BlockAllocator alloc_;
  PrefixCache prefix_;
  std::map<SeqId, BlockTable> seqs_;
  SeqId next_id_ = 0;
};

}  // namespace attn
