#include <algorithm>

#include "attn/block_manager.hpp"

namespace attn {
namespace {

// splitmix64's finaliser: every input bit flips about half the output bits, so chained page
// hashes of different prefixes collide only by chance (and lookup compares tokens anyway).
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

std::uint64_t PrefixCache::chain_hash(std::uint64_t previous, std::span<const std::int32_t> tokens) {
  std::uint64_t h = mix(previous ^ std::uint64_t(tokens.size()));
  for (std::int32_t t : tokens) h = mix(h ^ std::uint32_t(t));
  return h;
}

std::int32_t PrefixCache::lookup(std::uint64_t hash, std::span<const std::int32_t> tokens) const {
  const auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const Entry& e = by_page_.at(it->second);
  return std::equal(e.tokens.begin(), e.tokens.end(), tokens.begin(), tokens.end()) ? it->second : -1;
}

bool PrefixCache::insert(std::uint64_t hash, std::int32_t page, std::span<const std::int32_t> tokens) {
  if (by_hash_.count(hash) != 0 || by_page_.count(page) != 0) return false;
  by_hash_.emplace(hash, page);
  by_page_.emplace(page, Entry{hash, std::vector<std::int32_t>(tokens.begin(), tokens.end())});
  return true;
}

void PrefixCache::erase_page(std::int32_t page) {
  const auto it = by_page_.find(page);
  if (it == by_page_.end()) return;
  by_hash_.erase(it->second.hash);
  by_page_.erase(it);
}

}  // namespace attn
