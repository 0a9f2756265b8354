#include "attn/paged_cache.hpp"

#include <algorithm>

#include "cache/views.hpp"

namespace attn {
namespace {

void check_token_rows(const TensorView& t, const char* name, std::int64_t n, std::int64_t heads, std::int64_t dim,
                      DType dtype) {
  ATTN_CHECK(t.defined() && t.ndim == 3, name, ": expected 3 dimensions (tokens, heads_kv, dim), got ", t.shape_str());
  ATTN_CHECK(t.device.is_cpu(), name, ": expected a cpu tensor, got ", t.device.str());
  ATTN_CHECK(t.dtype == dtype, name, ": expected dtype ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  ATTN_CHECK(t.shape[0] == n && t.shape[1] == heads && t.shape[2] == dim, name, ": expected shape (", n, ", ", heads,
             ", ", dim, "), got ", t.shape_str());
}

}  // namespace

PagedKVCache::PagedKVCache(const PagedCacheConfig& c)
    : config_(c), manager_({c.num_pages, c.page_size, c.prefix_caching}) {
  ATTN_CHECK(c.num_layers >= 1, "num_layers: expected >= 1, got ", c.num_layers);
  ATTN_CHECK(c.heads_kv >= 1, "heads_kv: expected >= 1, got ", c.heads_kv);
  ATTN_CHECK(c.head_dim >= 1, "head_dim: expected >= 1, got ", c.head_dim);
  ATTN_CHECK(c.head_dim_v >= 0, "head_dim_v: expected >= 1 (0 = head_dim), got ", c.head_dim_v);
  if (config_.head_dim_v == 0) config_.head_dim_v = c.head_dim;
  layers_.reserve(std::size_t(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l)
    layers_.emplace_back(c.num_pages, c.page_size, c.heads_kv, c.head_dim, config_.head_dim_v, c.dtype);
}

const PagePool& PagedKVCache::layer(int l) const {
  ATTN_CHECK(l >= 0 && l < config_.num_layers, "layer: expected 0 <= layer < ", config_.num_layers, ", got ", l);
  return layers_[std::size_t(l)];
}

void PagedKVCache::append(SeqId seq, std::span<const std::int32_t> tokens) {
  // The manager commits only when the pages fit; page copies cannot fail after that.
  for (const PageCopy& c : manager_.append(seq, tokens))
    for (const PagePool& pool : layers_) pool.copy_page(c.src, c.dst);
}

void PagedKVCache::write(int l, SeqId seq, std::int64_t first, const TensorView& k, const TensorView& v) {
  const PagePool& pool = layer(l);
  const BlockTable& t = manager_.table(seq);
  const std::int64_t n = k.defined() ? k.shape[0] : 0;
  check_token_rows(k, "k", n, config_.heads_kv, config_.head_dim, config_.dtype);
  check_token_rows(v, "v", n, config_.heads_kv, config_.head_dim_v, config_.dtype);
  ATTN_CHECK(first >= 0 && first + n <= t.num_tokens(), "first: positions [", first, ", ", first + n,
             ") are not reserved in sequence ", seq, " of ", t.num_tokens(), " tokens (append first)");
  const std::int32_t ps = config_.page_size;
  for (std::int64_t i = first / ps; n > 0 && i <= (first + n - 1) / ps; ++i) {
    const std::int32_t p = t.pages[std::size_t(i)];
    ATTN_CHECK(p != BlockTable::kReleased, "first: page ", i, " of sequence ", seq, " was released by its window");
    // Shared pages are immutable: a full page may be cached or forked, and append already
    // copied the shared tail. Writing here would change other sequences' tokens.
    ATTN_CHECK(manager_.allocator().ref_count(p) == 1, "first: position ", std::max(first, i * ps), " of sequence ",
               seq, " lies in page ", p, " shared by ", manager_.allocator().ref_count(p), " sequences");
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const std::int64_t pos = first + j;
    const std::int32_t p = t.pages[std::size_t(pos / ps)];
    copy(detail::select(detail::select(pool.k(), p), pos % ps), detail::select(k, j));
    copy(detail::select(detail::select(pool.v(), p), pos % ps), detail::select(v, j));
  }
}

void PagedKVCache::read(int l, SeqId seq, std::int64_t n, const TensorView& k, const TensorView& v) const {
  const PagePool& pool = layer(l);
  const BlockTable& t = manager_.table(seq);
  check_token_rows(k, "k", n, config_.heads_kv, config_.head_dim, config_.dtype);
  check_token_rows(v, "v", n, config_.heads_kv, config_.head_dim_v, config_.dtype);
  ATTN_CHECK(n >= 0 && n <= t.num_tokens(), "n: expected at most the ", t.num_tokens(), " tokens of sequence ", seq,
             ", got ", n);
  const std::int32_t ps = config_.page_size;
  for (std::int64_t pos = 0; pos < n; ++pos) {
    const std::int32_t p = t.pages[std::size_t(pos / ps)];
    ATTN_CHECK(p != BlockTable::kReleased, "n: position ", pos, " of sequence ", seq, " was released by its window");
    copy(detail::select(k, pos), detail::select(detail::select(pool.k(), p), pos % ps));
    copy(detail::select(v, pos), detail::select(detail::select(pool.v(), p), pos % ps));
  }
}

Tensor PagedKVCache::block_table(std::span<const SeqId> seqs) const {
  std::size_t width = 1;  // at least one column, so the tensor is never empty
  for (SeqId s : seqs) width = std::max(width, manager_.table(s).pages.size());
  Tensor bt({std::int64_t(seqs.size()), std::int64_t(width)}, DType::i32);
  std::fill_n(bt.as<std::int32_t>(), bt.numel(), 0);
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    const std::vector<std::int32_t>& pages = manager_.table(seqs[b]).pages;
    for (std::size_t i = 0; i < pages.size(); ++i)
      bt.as<std::int32_t>()[b * width + i] = std::max(pages[i], 0);  // released -> 0
  }
  return bt;
}

Tensor PagedKVCache::seqlens(std::span<const SeqId> seqs) const {
  Tensor s({std::int64_t(seqs.size())}, DType::i32);
  for (std::size_t b = 0; b < seqs.size(); ++b) s.as<std::int32_t>()[b] = std::int32_t(manager_.length(seqs[b]));
  return s;
}

PagedCacheStats PagedKVCache::stats() const {
  PagedCacheStats s;
  s.blocks = manager_.stats();
  s.bytes_per_slot = std::int64_t(config_.num_layers) * config_.heads_kv * (config_.head_dim + config_.head_dim_v) *
                     std::int64_t(dtype_size(config_.dtype));
  s.bytes_total = s.bytes_per_slot * config_.num_pages * config_.page_size;
  s.bytes_reserved = s.bytes_per_slot * s.blocks.slots_reserved;
  s.bytes_with_tokens = s.bytes_per_slot * s.blocks.slots_filled;
  return s;
}

}  // namespace attn
