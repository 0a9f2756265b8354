#include <algorithm>

#include "attn/block_manager.hpp"

namespace attn {
namespace {

std::int64_t pages_for(std::int64_t tokens, std::int32_t page_size) { return (tokens + page_size - 1) / page_size; }

/// The longest run of cached full pages at the start of `prompt`, capped so that at least
/// the last prompt token is left to compute.
std::vector<std::int32_t> match_prefix(const PrefixCache& cache, std::span<const std::int32_t> prompt,
                                       std::int32_t page_size, std::vector<std::uint64_t>* hashes) {
  std::vector<std::int32_t> hits;
  const std::int64_t max_pages = prompt.empty() ? 0 : std::int64_t(prompt.size() - 1) / page_size;
  std::uint64_t h = 0;
  for (std::int64_t i = 0; i < max_pages; ++i) {
    const auto page_tokens = prompt.subspan(std::size_t(i * page_size), std::size_t(page_size));
    h = PrefixCache::chain_hash(h, page_tokens);
    const std::int32_t p = cache.lookup(h, page_tokens);
    if (p < 0) break;
    hits.push_back(p);
    if (hashes != nullptr) hashes->push_back(h);
  }
  return hits;
}

}  // namespace

BlockManager::BlockManager(BlockManagerConfig config) : config_(config), alloc_(config.num_pages) {
  ATTN_CHECK(config.page_size >= 1, "page_size: expected >= 1, got ", config.page_size);
}

BlockTable& BlockManager::table_mut(SeqId seq) {
  const auto it = seqs_.find(seq);
  ATTN_CHECK(it != seqs_.end(), "seq: no sequence with id ", seq);
  return it->second;
}

const BlockTable& BlockManager::table(SeqId seq) const {
  const auto it = seqs_.find(seq);
  ATTN_CHECK(it != seqs_.end(), "seq: no sequence with id ", seq);
  return it->second;
}

std::vector<BlockManager::SeqId> BlockManager::sequences() const {
  std::vector<SeqId> ids;
  for (const auto& [id, t] : seqs_) ids.push_back(id);
  return ids;
}

std::int32_t BlockManager::take_page() {
  const BlockAllocator::Allocation a = alloc_.allocate();
  if (a.was_cached) prefix_.erase_page(a.page);  // evicted: its old content is about to be overwritten
  return a.page;
}

void BlockManager::release_page(std::int32_t page) { alloc_.decref(page, prefix_.contains_page(page)); }

void BlockManager::register_full_pages(BlockTable& t) {
  const std::int32_t ps = config_.page_size;
  const std::int64_t full = t.num_tokens() / ps;
  for (std::int64_t i = std::int64_t(t.hashes.size()); i < full; ++i) {
    const auto page_tokens = std::span<const std::int32_t>(t.tokens).subspan(std::size_t(i * ps), std::size_t(ps));
    const std::uint64_t h = PrefixCache::chain_hash(i == 0 ? 0 : t.hashes.back(), page_tokens);
    t.hashes.push_back(h);
    const std::int32_t p = t.pages[std::size_t(i)];
    // A page already registered (a prefix hit) or content already cached elsewhere stays as is.
    if (config_.prefix_caching && p != BlockTable::kReleased) prefix_.insert(h, p, page_tokens);
  }
}

std::int64_t BlockManager::pages_needed_to_add(std::span<const std::int32_t> prompt) const {
  const std::vector<std::int32_t> hits =
      config_.prefix_caching ? match_prefix(prefix_, prompt, config_.page_size, nullptr) : std::vector<std::int32_t>{};
  std::int64_t revived = 0;
  for (std::int32_t p : hits) revived += alloc_.ref_count(p) == 0 ? 1 : 0;
  return pages_for(std::int64_t(prompt.size()), config_.page_size) - std::int64_t(hits.size()) + revived;
}

BlockManager::Added BlockManager::add_sequence(std::span<const std::int32_t> prompt) {
  BlockTable t;
  std::vector<std::int32_t> hits;
  if (config_.prefix_caching) hits = match_prefix(prefix_, prompt, config_.page_size, &t.hashes);
  const std::int64_t need = pages_needed_to_add(prompt);
  if (need > alloc_.available()) throw OutOfPages(need, alloc_.available());

  // Commit: nothing below can run out of pages.
  t.tokens.assign(prompt.begin(), prompt.end());
  t.pages.reserve(std::size_t(pages_for(t.num_tokens(), config_.page_size)));
  for (std::int32_t p : hits) {
    if (alloc_.ref_count(p) == 0) {
      alloc_.revive(p);
    } else {
      alloc_.incref(p);
    }
    t.pages.push_back(p);
  }
  while (std::int64_t(t.pages.size()) < pages_for(t.num_tokens(), config_.page_size)) t.pages.push_back(take_page());
  register_full_pages(t);
  const SeqId id = next_id_++;
  seqs_.emplace(id, std::move(t));
  return {id, std::int64_t(hits.size()) * config_.page_size};
}

std::int64_t BlockManager::pages_needed_to_append(SeqId seq, std::int64_t n) const {
  const BlockTable& t = table(seq);
  const std::int32_t ps = config_.page_size;
  const bool partial = t.num_tokens() % ps != 0;
  const bool shared_tail = n > 0 && partial && alloc_.ref_count(t.pages.back()) > 1;
  return pages_for(t.num_tokens() + n, ps) - std::int64_t(t.pages.size()) + (shared_tail ? 1 : 0);
}

std::vector<PageCopy> BlockManager::append(SeqId seq, std::span<const std::int32_t> tokens) {
  BlockTable& t = table_mut(seq);
  const std::int64_t need = pages_needed_to_append(seq, std::int64_t(tokens.size()));
  if (need > alloc_.available()) throw OutOfPages(need, alloc_.available());

  std::vector<PageCopy> copies;
  const std::int32_t ps = config_.page_size;
  if (!tokens.empty() && t.num_tokens() % ps != 0 && alloc_.ref_count(t.pages.back()) > 1) {
    // Copy-on-write: the tail page is shared (fork) and about to receive new slots.
    const std::int32_t old = t.pages.back();
    const std::int32_t fresh = take_page();
    alloc_.decref(old, false);  // still held by the other sharers, so never freed here
    t.pages.back() = fresh;
    copies.push_back({old, fresh});
  }
  t.tokens.insert(t.tokens.end(), tokens.begin(), tokens.end());
  while (std::int64_t(t.pages.size()) < pages_for(t.num_tokens(), ps)) t.pages.push_back(take_page());
  register_full_pages(t);
  return copies;
}

BlockManager::SeqId BlockManager::fork(SeqId seq) {
  BlockTable copy = table(seq);
  for (std::int32_t p : copy.pages)
    if (p != BlockTable::kReleased) alloc_.incref(p);
  const SeqId id = next_id_++;
  seqs_.emplace(id, std::move(copy));
  return id;
}

void BlockManager::free(SeqId seq) {
  BlockTable& t = table_mut(seq);
  // Last pages first: they join the LRU list earlier, so a shared prefix outlives its tails.
  for (auto it = t.pages.rbegin(); it != t.pages.rend(); ++it)
    if (*it != BlockTable::kReleased) release_page(*it);
  seqs_.erase(seq);
}

void BlockManager::release_before(SeqId seq, std::int64_t first_kept) {
  BlockTable& t = table_mut(seq);
  const std::int64_t full_before = std::min(first_kept, t.num_tokens()) / config_.page_size;
  for (std::int64_t i = 0; i < full_before; ++i) {
    std::int32_t& p = t.pages[std::size_t(i)];
    if (p == BlockTable::kReleased) continue;
    release_page(p);
    p = BlockTable::kReleased;
  }
}

BlockStats BlockManager::stats() const {
  BlockStats s;
  s.pages_total = alloc_.num_pages();
  s.pages_free = alloc_.num_free_uncached();
  s.pages_cached = alloc_.num_free_cached();
  s.pages_used = s.pages_total - s.pages_free - s.pages_cached;
  s.sequences = std::int64_t(seqs_.size());
  s.slots_reserved = std::int64_t(s.pages_used) * config_.page_size;
  // A shared page holds as many tokens as its fullest sharer wrote.
  std::unordered_map<std::int32_t, std::int32_t> fill;
  for (const auto& [id, t] : seqs_) {
    s.tokens_logical += t.num_tokens();
    for (std::size_t i = 0; i < t.pages.size(); ++i) {
      if (t.pages[i] == BlockTable::kReleased) continue;
      const std::int64_t n = std::min<std::int64_t>(config_.page_size, t.num_tokens() - std::int64_t(i) * config_.page_size);
      std::int32_t& f = fill[t.pages[i]];
      f = std::max(f, std::int32_t(n));
    }
  }
  for (const auto& [p, n] : fill) s.slots_filled += n;
  return s;
}

}  // namespace attn
