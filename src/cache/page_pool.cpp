#include "attn/paged_cache.hpp"
#include "cache/views.hpp"

namespace attn {

PagePool::PagePool(std::int32_t num_pages, std::int32_t page_size, std::int32_t heads_kv, std::int32_t head_dim,
                   std::int32_t head_dim_v, DType dtype)
    : k_({num_pages, page_size, heads_kv, head_dim}, dtype), v_({num_pages, page_size, heads_kv, head_dim_v}, dtype) {}

void PagePool::copy_page(std::int32_t src, std::int32_t dst) const {
  copy(detail::select(k_, dst), detail::select(k_, src));
  copy(detail::select(v_, dst), detail::select(v_, src));
}

}  // namespace attn
