#include "attn/kv_cache.hpp"

#include <algorithm>

#include "cache/views.hpp"

namespace attn {
namespace {

void check_tokens_like(const TensorView& t, const char* name, std::span<const std::int64_t> shape, DType dtype) {
  ATTN_CHECK(t.defined() && t.ndim == int(shape.size()), name, ": expected ", shape.size(), " dimensions, got ",
             t.shape_str());
  ATTN_CHECK(t.device.is_cpu(), name, ": expected a cpu tensor, got ", t.device.str());
  ATTN_CHECK(t.dtype == dtype, name, ": expected dtype ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  for (std::size_t d = 1; d < shape.size(); ++d)
    ATTN_CHECK(t.shape[d] == shape[d], name, ": expected size ", shape[d], " in dimension ", d, ", got shape ",
               t.shape_str());
}

}  // namespace

KVCache::KVCache(std::int32_t batch, std::int32_t max_seqlen, std::int32_t heads_kv, std::int32_t head_dim,
                 std::int32_t head_dim_v, DType dtype)
    : k_({batch, max_seqlen, heads_kv, head_dim}, dtype),
      v_({batch, max_seqlen, heads_kv, head_dim_v}, dtype),
      seqlens_({batch}, DType::i32) {
  ATTN_CHECK(batch >= 1 && max_seqlen >= 1 && heads_kv >= 1 && head_dim >= 1 && head_dim_v >= 1,
             "cache: expected batch, max_seqlen, heads_kv, head_dim, head_dim_v >= 1, got ", batch, ", ", max_seqlen,
             ", ", heads_kv, ", ", head_dim, ", ", head_dim_v);
  std::fill_n(seqlens_.as<std::int32_t>(), batch, 0);
}

std::int32_t KVCache::length(int b) const {
  ATTN_CHECK(b >= 0 && b < k_.size(0), "b: expected 0 <= b < ", k_.size(0), ", got ", b);
  return seqlens_.as<std::int32_t>()[b];
}

void KVCache::append(const TensorView& k, const TensorView& v) {
  const std::int64_t B = k_.size(0), Hk = k_.size(2);
  const std::int64_t n = k.defined() && k.ndim == 4 ? k.shape[1] : 0;
  check_tokens_like(k, "k", std::vector<std::int64_t>{B, n, Hk, k_.size(3)}, k_.dtype());
  check_tokens_like(v, "v", std::vector<std::int64_t>{B, n, Hk, v_.size(3)}, v_.dtype());
  ATTN_CHECK(k.shape[0] == B && v.shape[0] == B && v.shape[1] == n, "v: expected shape (", B, ", ", n, ", ", Hk, ", ",
             v_.size(3), "), got ", v.shape_str());
  for (int b = 0; b < B; ++b)
    ATTN_CHECK(length(b) + n <= max_seqlen(), "k: sequence ", b, " holds ", length(b), " tokens; ", n,
               " more exceed max_seqlen ", max_seqlen());
  for (int b = 0; b < B; ++b) {
    const std::int32_t len = length(b);
    copy(detail::narrow(detail::select(k_, b), len, n), detail::select(k, b));
    copy(detail::narrow(detail::select(v_, b), len, n), detail::select(v, b));
    seqlens_.as<std::int32_t>()[b] = len + std::int32_t(n);
  }
}

void KVCache::append(int b, const TensorView& k, const TensorView& v) {
  const std::int32_t len = length(b);
  const std::int64_t n = k.defined() && k.ndim == 3 ? k.shape[0] : 0;
  check_tokens_like(k, "k", std::vector<std::int64_t>{n, k_.size(2), k_.size(3)}, k_.dtype());
  check_tokens_like(v, "v", std::vector<std::int64_t>{n, v_.size(2), v_.size(3)}, v_.dtype());
  ATTN_CHECK(v.shape[0] == n, "v: expected ", n, " tokens (from k), got ", v.shape[0]);
  ATTN_CHECK(len + n <= max_seqlen(), "k: sequence ", b, " holds ", len, " tokens; ", n, " more exceed max_seqlen ",
             max_seqlen());
  copy(detail::narrow(detail::select(k_, b), len, n), k);
  copy(detail::narrow(detail::select(v_, b), len, n), v);
  seqlens_.as<std::int32_t>()[b] = len + std::int32_t(n);
}

void KVCache::advance(std::int32_t n) {
  ATTN_CHECK(n >= 0, "n: expected >= 0, got ", n);
  for (int b = 0; b < k_.size(0); ++b)
    ATTN_CHECK(length(b) + std::int64_t(n) <= max_seqlen(), "n: sequence ", b, " holds ", length(b), " tokens; ", n,
               " more exceed max_seqlen ", max_seqlen());
  for (int b = 0; b < k_.size(0); ++b) seqlens_.as<std::int32_t>()[b] += n;
}

void KVCache::reset(int b) {
  length(b);  // bounds check
  seqlens_.as<std::int32_t>()[b] = 0;
}

}  // namespace attn
