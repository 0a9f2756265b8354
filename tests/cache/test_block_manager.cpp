// The block manager and paged cache against a shadow model: after every random operation
// each page's count must equal the table entries that point to it, no page may be both free
// and used, and each sequence's K/V read through its table must equal what a contiguous copy
// holds. Running out of pages must leave everything, storage included, untouched.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "attn/paged_cache.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

constexpr int kLayers = 2, kHeads = 2, kDim = 4, kDimV = 3;

// K/V of token t depend on every token <= t (as in a real model), so a prefix hit must find
// exactly the values the new sequence would have computed. Values are multiples of 1/64 in
// [-2, 2), exact in f32.
float kv_value(std::uint64_t prefix_hash, int layer, int which, int element) {
  const std::array<std::int32_t, 3> salt = {layer, which, element};
  const std::uint64_t h = PrefixCache::chain_hash(prefix_hash, salt);
  return float(std::int64_t(h % 256) - 128) / 64.0f;
}

struct Shadow {
  std::vector<std::int32_t> tokens;
  std::int64_t first_kept = 0;  // positions before this may be released
};

/// Expected K (which = 0) or V (which = 1) rows of positions [first, first + n): (n, Hk, dim).
Tensor expected_rows(const std::vector<std::int32_t>& tokens, std::int64_t first, std::int64_t n, int layer, int which) {
  const int dim = which == 0 ? kDim : kDimV;
  Tensor t({n, kHeads, dim}, DType::f32);
  std::uint64_t h = 0;
  for (std::int64_t pos = 0; pos < first + n; ++pos) {
    h = PrefixCache::chain_hash(h, std::span<const std::int32_t>(&tokens[std::size_t(pos)], 1));
    if (pos < first) continue;
    for (int e = 0; e < kHeads * dim; ++e) t.as<float>()[(pos - first) * kHeads * dim + e] = kv_value(h, layer, which, e);
  }
  return t;
}

void write_rows(PagedKVCache& c, BlockManager::SeqId s, const std::vector<std::int32_t>& tokens, std::int64_t first) {
  const std::int64_t n = std::int64_t(tokens.size()) - first;
  for (int l = 0; l < kLayers; ++l) c.write(l, s, first, expected_rows(tokens, first, n, l, 0), expected_rows(tokens, first, n, l, 1));
}

/// Everything observable about the cache, for "nothing changed" checks.
struct Snapshot {
  std::map<BlockManager::SeqId, std::vector<std::int32_t>> pages, tokens;
  std::vector<std::int32_t> refs;
  std::vector<bool> cached;
  std::int32_t free = 0, lru = 0;
  std::vector<std::vector<char>> pool;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const PagedKVCache& c) {
  Snapshot s;
  const BlockManager& m = c.manager();
  for (auto id : m.sequences()) {
    s.pages[id] = m.table(id).pages;
    s.tokens[id] = m.table(id).tokens;
  }
  for (int p = 0; p < m.allocator().num_pages(); ++p) {
    s.refs.push_back(m.allocator().ref_count(p));
    s.cached.push_back(m.prefix_cache().contains_page(p));
  }
  s.free = m.allocator().num_free_uncached();
  s.lru = m.allocator().num_free_cached();
  for (int l = 0; l < kLayers; ++l)
    for (const Tensor* t : {&c.layer(l).k(), &c.layer(l).v()}) {
      const char* d = static_cast<const char*>(t->data());
      s.pool.emplace_back(d, d + t->nbytes());
    }
  return s;
}

void check_invariants(const PagedKVCache& c, const std::map<BlockManager::SeqId, Shadow>& shadow) {
  const BlockManager& m = c.manager();
  const std::int32_t P = m.allocator().num_pages(), ps = m.page_size();
  std::vector<std::int32_t> refs(std::size_t(P), 0);
  ASSERT_EQ(m.sequences().size(), shadow.size());
  for (const auto& [id, sh] : shadow) {
    const BlockTable& t = m.table(id);
    ASSERT_EQ(t.tokens, sh.tokens) << "seq " << id;
    ASSERT_EQ(std::int64_t(t.pages.size()), (t.num_tokens() + ps - 1) / ps) << "seq " << id;
    std::set<std::int32_t> own;
    for (std::size_t i = 0; i < t.pages.size(); ++i) {
      const std::int32_t p = t.pages[i];
      if (p == BlockTable::kReleased) {
        ASSERT_LE(std::int64_t(i + 1) * ps, sh.first_kept) << "seq " << id << " lost a page inside its window";
        continue;
      }
      ASSERT_TRUE(p >= 0 && p < P);
      ASSERT_TRUE(own.insert(p).second) << "seq " << id << " holds page " << p << " twice";
      ++refs[std::size_t(p)];
    }
  }
  std::int32_t used = 0, cached_free = 0;
  for (std::int32_t p = 0; p < P; ++p) {
    ASSERT_EQ(m.allocator().ref_count(p), refs[std::size_t(p)]) << "page " << p;
    used += refs[std::size_t(p)] > 0;
    cached_free += refs[std::size_t(p)] == 0 && m.prefix_cache().contains_page(p);
  }
  const BlockStats st = m.stats();
  ASSERT_EQ(st.pages_used, used);
  ASSERT_EQ(st.pages_cached, cached_free);
  ASSERT_EQ(st.pages_free, P - used - cached_free);
  ASSERT_EQ(m.allocator().available(), P - used);
  ASSERT_LE(st.slots_filled, st.slots_reserved);

  // Data: every kept position of every sequence equals the contiguous expectation.
  for (const auto& [id, sh] : shadow) {
    const BlockTable& t = m.table(id);
    for (int l = 0; l < kLayers; ++l)
      for (int which = 0; which < 2; ++which) {
        const Tensor want = expected_rows(sh.tokens, 0, t.num_tokens(), l, which);
        const Tensor& pool = which == 0 ? c.layer(l).k() : c.layer(l).v();
        const int row = kHeads * (which == 0 ? kDim : kDimV);
        for (std::int64_t pos = 0; pos < t.num_tokens(); ++pos) {
          const std::int32_t p = t.pages[std::size_t(pos / ps)];
          if (p == BlockTable::kReleased) continue;
          const float* got = pool.as<float>() + (std::int64_t(p) * ps + pos % ps) * row;
          ASSERT_EQ(std::memcmp(got, want.as<float>() + pos * row, std::size_t(row) * 4), 0)
              << "seq " << id << " layer " << l << (which ? " v" : " k") << " position " << pos;
        }
      }
  }
}

PagedCacheConfig small_config(std::int32_t pages, std::int32_t page_size) {
  PagedCacheConfig c;
  c.num_layers = kLayers;
  c.num_pages = pages;
  c.page_size = page_size;
  c.heads_kv = kHeads;
  c.head_dim = kDim;
  c.head_dim_v = kDimV;
  return c;
}

TEST(BlockManager, RandomOperationsMatchShadowModel) {
  std::mt19937_64& rng = test::rng();
  for (std::int32_t ps : {1, 3, 4, 16}) {
    PagedKVCache cache(small_config(ps == 1 ? 96 : 40, ps));
    std::map<BlockManager::SeqId, Shadow> shadow;
    // A few shared "system prompts" make prefix hits common.
    std::vector<std::vector<std::int32_t>> prefixes(3);
    for (auto& p : prefixes)
      for (int i = 0; i < 2 * ps + 5; ++i) p.push_back(std::int32_t(rng() % 50));
    int hits = 0, outs = 0, cows = 0;
    auto rand_tokens = [&](std::int64_t n) {
      std::vector<std::int32_t> t;
      for (std::int64_t i = 0; i < n; ++i) t.push_back(std::int32_t(rng() % 50));
      return t;
    };
    auto pick = [&]() {
      auto it = shadow.begin();
      std::advance(it, std::ptrdiff_t(rng() % shadow.size()));
      return it->first;
    };
    for (int step = 0; step < 600; ++step) {
      SCOPED_TRACE(testing::Message() << "page_size " << ps << " step " << step);
      const Snapshot before = snapshot(cache);
      const int op = int(rng() % 10);
      try {
        if (op <= 1 || shadow.empty()) {  // add, often with a shared prefix
          std::vector<std::int32_t> prompt;
          if (rng() % 3 != 0) prompt = prefixes[rng() % prefixes.size()];
          const auto tail = rand_tokens(std::int64_t(rng() % (2 * ps + 3)));
          prompt.insert(prompt.end(), tail.begin(), tail.end());
          const std::int64_t need = cache.manager().pages_needed_to_add(prompt);
          const std::int32_t avail = cache.manager().allocator().available();
          const auto added = cache.add_sequence(prompt);
          ASSERT_EQ(cache.manager().allocator().available(), avail - need) << "pages_needed_to_add was wrong";
          ASSERT_EQ(added.cached_tokens % ps, 0);
          ASSERT_TRUE(added.cached_tokens == 0 || added.cached_tokens < std::int64_t(prompt.size()));
          hits += added.cached_tokens > 0;
          shadow[added.seq].tokens = prompt;
          write_rows(cache, added.seq, prompt, added.cached_tokens);
        } else if (op <= 4) {  // append: decode (1 token) or a chunk
          const auto s = pick();
          const auto toks = rand_tokens(rng() % 2 ? 1 : std::int64_t(rng() % (2 * ps + 2)));
          const std::int64_t old = cache.length(s);
          const bool shared_tail = old % ps != 0 && cache.manager().allocator().ref_count(cache.manager().table(s).pages.back()) > 1;
          const std::int64_t need = cache.manager().pages_needed_to_append(s, std::int64_t(toks.size()));
          const std::int32_t avail = cache.manager().allocator().available();
          cache.append(s, toks);
          ASSERT_EQ(cache.manager().allocator().available(), avail - need) << "pages_needed_to_append was wrong";
          cows += shared_tail && !toks.empty();
          auto& sh = shadow[s].tokens;
          sh.insert(sh.end(), toks.begin(), toks.end());
          write_rows(cache, s, sh, old);
        } else if (op == 5) {
          const auto s = pick();
          const auto child = cache.fork(s);
          shadow[child] = shadow[s];
        } else if (op <= 7) {
          const auto s = pick();
          cache.free(s);
          shadow.erase(s);
        } else if (op == 8) {  // sliding window of 2 pages plus a bit
          const auto s = pick();
          const std::int64_t kept = std::max<std::int64_t>(0, cache.length(s) - (2 * ps + 1));
          cache.release_before(s, kept);
          shadow[s].first_kept = std::max(shadow[s].first_kept, kept);
        } else {  // a write into a page shared with a fork must be refused
          const auto s = pick();
          const BlockTable& t = cache.manager().table(s);
          for (std::size_t i = 0; i < t.pages.size(); ++i) {
            const std::int32_t p = t.pages[i];
            if (p == BlockTable::kReleased || cache.manager().allocator().ref_count(p) < 2) continue;
            const std::int64_t pos = std::int64_t(i) * ps;
            for (int l = 0; l < kLayers; ++l)
              EXPECT_THROW(cache.write(l, s, pos, Tensor({1, kHeads, kDim}, DType::f32), Tensor({1, kHeads, kDimV}, DType::f32)),
                           Error);
            break;
          }
          ASSERT_TRUE(snapshot(cache) == before) << "a refused write changed the cache";
        }
      } catch (const OutOfPages& e) {
        ++outs;
        ASSERT_GT(e.needed, e.available);
        ASSERT_TRUE(snapshot(cache) == before) << "OutOfPages changed the cache";
      }
      check_invariants(cache, shadow);
      if (HasFatalFailure()) return;
    }
    // Running out of pages once for certain: the random steps do in most runs, not all (page
    // size 1 with 96 pages once went 600 steps without). Tokens no page holds: no prefix hits.
    {
      const Snapshot before = snapshot(cache);
      const std::int32_t avail = cache.manager().allocator().available();
      const std::vector<std::int32_t> prompt(std::size_t(avail + 1) * std::size_t(ps), 1000);
      try {
        cache.add_sequence(prompt);
        ADD_FAILURE() << "adding " << prompt.size() << " tokens with " << avail << " pages free did not run out, page_size " << ps;
      } catch (const OutOfPages& e) {
        ++outs;
        EXPECT_GT(e.needed, e.available);
        ASSERT_TRUE(snapshot(cache) == before) << "OutOfPages changed the cache";
      }
      check_invariants(cache, shadow);
    }
    // The sequence must have exercised every path, or the test proves little (running out of
    // pages: at least the step above).
    EXPECT_GT(hits, 0) << "page_size " << ps;
    if (ps > 1) {  // one-token pages are never partial, so never copied
      EXPECT_GT(cows, 0) << "page_size " << ps;
    }
    for (auto id : cache.manager().sequences()) cache.free(id);
    shadow.clear();
    check_invariants(cache, shadow);
    EXPECT_EQ(cache.manager().stats().pages_used, 0);
  }
}

TEST(BlockManager, PrefixHitReusesPagesAndLeavesLastTokenToCompute) {
  BlockManager m({8, 4, true});
  const std::vector<std::int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const auto s1 = m.add_sequence(a);
  EXPECT_EQ(s1.cached_tokens, 0);
  // Same 8-token prefix: both full pages hit; a different third page allocates.
  const std::vector<std::int32_t> b = {1, 2, 3, 4, 5, 6, 7, 8, 42, 43};
  const auto s2 = m.add_sequence(b);
  EXPECT_EQ(s2.cached_tokens, 8);
  EXPECT_EQ(m.table(s2.seq).pages[0], m.table(s1.seq).pages[0]);
  EXPECT_EQ(m.allocator().ref_count(m.table(s1.seq).pages[1]), 2);
  // A prompt that is exactly the cached pages still recomputes its last page.
  const std::vector<std::int32_t> c = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(m.add_sequence(c).cached_tokens, 4);
  // Same tokens in a different place of the chain do not hit.
  const std::vector<std::int32_t> d = {5, 6, 7, 8, 1, 2, 3, 4, 0};
  EXPECT_EQ(m.add_sequence(d).cached_tokens, 0);
}

TEST(BlockManager, FreedCachedPagesRevivedOrEvictedLeastRecentlyUsedFirst) {
  BlockManager m({4, 2, true});
  const std::vector<std::int32_t> a = {1, 2, 3}, b = {7, 8, 9};
  const auto sa = m.add_sequence(a), sb = m.add_sequence(b);
  const std::int32_t page_a = m.table(sa.seq).pages[0], page_b = m.table(sb.seq).pages[0];
  m.free(sa.seq);
  m.free(sb.seq);
  EXPECT_EQ(m.stats().pages_cached, 2);  // the two full pages; the partial tails are plain free
  EXPECT_EQ(m.stats().pages_free, 2);
  // Needing all four pages evicts both cached ones, A's (freed first) before B's.
  const std::vector<std::int32_t> big = {20, 21, 22, 23, 24, 25, 26};
  const auto sbig = m.add_sequence(big);
  EXPECT_EQ(m.table(sbig.seq).pages[2], page_a);
  EXPECT_EQ(m.table(sbig.seq).pages[3], page_b);
  EXPECT_EQ(m.stats().pages_cached, 0);
  EXPECT_EQ(m.prefix_cache().size(), 3u);  // big's three full pages; a's and b's entries are gone
  m.free(sbig.seq);
  EXPECT_FALSE(m.contains(sbig.seq));
  EXPECT_EQ(m.add_sequence(a).cached_tokens, 0);  // evicted from the hash map when reused
}

TEST(BlockManager, ReviveTakesACachedPageBackFromTheFreeList) {
  BlockManager m({3, 2, true});
  const std::vector<std::int32_t> a = {1, 2, 3};
  const auto sa = m.add_sequence(a);
  const std::int32_t page = m.table(sa.seq).pages[0];
  m.free(sa.seq);
  const auto again = m.add_sequence(a);
  EXPECT_EQ(again.cached_tokens, 2);
  EXPECT_EQ(m.table(again.seq).pages[0], page);
  EXPECT_EQ(m.allocator().ref_count(page), 1);
  EXPECT_EQ(m.stats().pages_cached, 0);
}

TEST(BlockManager, ForkSharesThenCopiesOnWrite) {
  PagedKVCache c(small_config(8, 4));
  const std::vector<std::int32_t> prompt = {1, 2, 3, 4, 5, 6};
  const auto parent = c.add_sequence(prompt).seq;
  write_rows(c, parent, prompt, 0);
  const auto child = c.fork(parent);
  const BlockManager& m = c.manager();
  EXPECT_EQ(m.table(child).pages, m.table(parent).pages);
  EXPECT_EQ(m.stats().pages_used, 2);
  const std::int32_t tail = m.table(parent).pages[1];
  EXPECT_EQ(m.allocator().ref_count(tail), 2);
  // The child's first new token goes into the shared tail: it gets its own copy.
  c.append(child, std::vector<std::int32_t>{9});
  EXPECT_NE(m.table(child).pages[1], tail);
  EXPECT_EQ(m.table(child).pages[0], m.table(parent).pages[0]);
  EXPECT_EQ(m.allocator().ref_count(tail), 1);
  std::vector<std::int32_t> child_tokens = prompt;
  child_tokens.push_back(9);
  write_rows(c, child, child_tokens, 6);
  // The parent now owns its tail alone: no copy.
  c.append(parent, std::vector<std::int32_t>{10});
  EXPECT_EQ(m.table(parent).pages[1], tail);
  std::vector<std::int32_t> parent_tokens = prompt;
  parent_tokens.push_back(10);
  write_rows(c, parent, parent_tokens, 6);
  check_invariants(c, {{parent, {parent_tokens, 0}}, {child, {child_tokens, 0}}});
}

TEST(BlockManager, OutOfPagesIsCatchableAndChangesNothing) {
  PagedKVCache c(small_config(3, 2));
  const std::vector<std::int32_t> prompt = {1, 2, 3, 4, 5};
  const auto s = c.add_sequence(prompt).seq;
  write_rows(c, s, prompt, 0);
  const Snapshot before = snapshot(c);
  try {
    c.append(s, std::vector<std::int32_t>{6, 7});
    FAIL() << "expected OutOfPages";
  } catch (const Error& e) {  // catchable as the library's error type
    EXPECT_NE(std::string(e.what()).find("out of pages"), std::string::npos);
  }
  EXPECT_TRUE(snapshot(c) == before);
  EXPECT_THROW(c.add_sequence(std::vector<std::int32_t>{9, 9, 9}), OutOfPages);
  EXPECT_TRUE(snapshot(c) == before);
  c.append(s, std::vector<std::int32_t>{6});  // fits in the tail page
  EXPECT_EQ(c.length(s), 6);
}

TEST(BlockManager, SlidingWindowReleasesOnlyPagesBehindTheWindow) {
  BlockManager m({6, 4, false});
  std::vector<std::int32_t> t(10, 1);
  const auto s = m.add_sequence(t).seq;
  m.release_before(s, 7);  // tokens 0..6 unused: only page 0 (0..3) is wholly behind
  EXPECT_EQ(m.table(s).pages[0], BlockTable::kReleased);
  EXPECT_NE(m.table(s).pages[1], BlockTable::kReleased);
  EXPECT_EQ(m.stats().pages_used, 2);
  m.release_before(s, 100);  // clamped to the length: the partial tail stays
  EXPECT_EQ(m.stats().pages_used, 1);
  m.free(s);
  EXPECT_EQ(m.stats().pages_used, 0);
}

TEST(BlockManager, StatsCountReservedAndFilledSlots) {
  PagedKVCache c(small_config(10, 4));
  c.add_sequence(std::vector<std::int32_t>{1, 2, 3, 4, 5});
  const auto st = c.stats();
  EXPECT_EQ(st.blocks.pages_used, 2);
  EXPECT_EQ(st.blocks.slots_reserved, 8);
  EXPECT_EQ(st.blocks.slots_filled, 5);
  EXPECT_EQ(st.blocks.tokens_logical, 5);
  EXPECT_EQ(st.bytes_per_slot, kLayers * kHeads * (kDim + kDimV) * 4);
  EXPECT_EQ(st.bytes_reserved, 8 * st.bytes_per_slot);
  EXPECT_EQ(st.bytes_with_tokens, 5 * st.bytes_per_slot);
}

TEST(BlockManager, ErrorsNameTheArgument) {
  EXPECT_THROW(BlockManager({0, 16, true}), Error);
  try {
    BlockManager({4, 0, true});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("page_size"), std::string::npos);
  }
  BlockManager m({4, 4, true});
  try {
    m.free(12345);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seq"), std::string::npos);
  }
}

}  // namespace
}  // namespace attn
