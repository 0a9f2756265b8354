#include "attn/paged_cache.hpp"

#include <cstring>

#include "cache/views.hpp"

namespace attn {

PagePool::PagePool(std::int32_t num_pages, std::int32_t page_size, std::int32_t heads_kv, std::int32_t head_dim,
                   std::int32_t head_dim_v, DType dtype)
    : k_({num_pages, page_size, heads_kv, head_dim}, dtype), v_({num_pages, page_size, heads_kv, head_dim_v}, dtype) {
  // Zeroed so that every slot holds a finite value: a kernel reading a masked slot of a stale
  // or released page multiplies it by a zero probability, and 0 * NaN would poison the row.
  std::memset(k_.data(), 0, k_.nbytes());
  std::memset(v_.data(), 0, v_.nbytes());
}

void PagePool::copy_page(std::int32_t src, std::int32_t dst) const {
  copy(detail::select(k_, dst), detail::select(k_, src));
  copy(detail::select(v_, dst), detail::select(v_, src));
}

}  // namespace attn
