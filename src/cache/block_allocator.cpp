#include "attn/block_manager.hpp"

namespace attn {

OutOfPages::OutOfPages(std::int64_t need, std::int64_t avail)
    : Error(detail::concat("attn: cache: out of pages: need ", need, ", ", avail, " available")),
      needed(need),
      available(avail) {}

BlockAllocator::BlockAllocator(std::int32_t num_pages)
    : ref_(std::size_t(num_pages), 0), lru_pos_(std::size_t(num_pages)), in_lru_(std::size_t(num_pages), false) {
  ATTN_CHECK(num_pages >= 1, "num_pages: expected >= 1, got ", num_pages);
  free_.reserve(std::size_t(num_pages));
  // Reversed so that a fresh pool hands out pages 0, 1, 2, ... (readable tests and dumps).
  for (std::int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

BlockAllocator::Allocation BlockAllocator::allocate() {
  ATTN_CHECK(available() > 0, "cache: allocate called with no page available");
  if (!free_.empty()) {
    const std::int32_t p = free_.back();
    free_.pop_back();
    ref_[std::size_t(p)] = 1;
    return {p, false};
  }
  const std::int32_t p = lru_.front();
  lru_.pop_front();
  in_lru_[std::size_t(p)] = false;
  ref_[std::size_t(p)] = 1;
  return {p, true};
}

void BlockAllocator::incref(std::int32_t page) {
  ATTN_CHECK(ref_[std::size_t(page)] >= 1, "cache: incref of free page ", page);
  ++ref_[std::size_t(page)];
}

void BlockAllocator::revive(std::int32_t page) {
  ATTN_CHECK(in_lru_[std::size_t(page)], "cache: revive of page ", page, " that is not free-but-cached");
  lru_.erase(lru_pos_[std::size_t(page)]);
  in_lru_[std::size_t(page)] = false;
  ref_[std::size_t(page)] = 1;
}

void BlockAllocator::decref(std::int32_t page, bool cached) {
  std::int32_t& r = ref_[std::size_t(page)];
  ATTN_CHECK(r >= 1, "cache: decref of free page ", page);
  if (--r > 0) return;
  if (cached) {
    lru_pos_[std::size_t(page)] = lru_.insert(lru_.end(), page);
    in_lru_[std::size_t(page)] = true;
  } else {
    free_.push_back(page);
  }
}

}  // namespace attn
