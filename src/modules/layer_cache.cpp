#include "attn/modules/layer_cache.hpp"

#include "modules/packed.hpp"
#include "modules/tensor_util.hpp"

namespace attn::modules {
namespace {

using detail::check_dim;
using detail::check_f32;

void check_storage(DType dtype) {
  ATTN_CHECK(is_storage_dtype(dtype), "dtype: expected f32, f16 or bf16, got ", dtype_name(dtype));
}

/// Checks a packed (T, ...) tensor's first dimension against new_tokens; returns T.
std::int64_t check_packed(const TensorView& t, const char* name, int ndim, std::span<const std::int64_t> new_tokens,
                          int batch) {
  check_f32(t, name, ndim);
  const std::int64_t total = detail::packed_total(new_tokens, batch);
  check_dim(t, name, 0, total, "the sum of new_tokens");
  return total;
}

/// Throws unless every sequence has room for its new tokens; nothing is written before.
void check_room(const std::vector<std::int64_t>& lengths, std::span<const std::int64_t> new_tokens,
                std::int64_t capacity, const char* name) {
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ATTN_CHECK(lengths[b] + new_tokens[b] <= capacity, name, ": sequence ", b, " holds ", lengths[b], " tokens; ",
               new_tokens[b], " more exceed the capacity of ", capacity);
}

/// Stores f32 packed src (T, [H,] F) rows into dst (B, capacity, [H,] F') of the cache's dtype
/// after each sequence's tokens, features [first, first + F).
void write_rows(const TensorView& dst, const TensorView& src, const std::vector<std::int64_t>& lengths,
                std::span<const std::int64_t> new_tokens, std::int64_t first) {
  const bool heads_dim = src.ndim == 3;
  const std::int64_t heads = heads_dim ? src.size(1) : 1, feat = src.size(-1);
  std::int64_t row = 0;
  for (std::size_t b = 0; b < lengths.size(); ++b)
    for (std::int64_t s = 0; s < new_tokens[b]; ++s, ++row)
      for (std::int64_t h = 0; h < heads; ++h) {
        const float* from = src.as<float>() + row * src.stride[0] + (heads_dim ? h * src.stride[1] : 0);
        const std::int64_t to = std::int64_t(b) * dst.stride[0] + (lengths[b] + s) * dst.stride[1] +
                                (heads_dim ? h * dst.stride[2] : 0) + first;
        detail::store_row(detail::element_address(dst, to), dst.dtype, from, feat);
      }
}

void advance(std::vector<std::int64_t>& lengths, std::span<const std::int64_t> new_tokens) {
  for (std::size_t b = 0; b < lengths.size(); ++b) lengths[b] += new_tokens[b];
}

void discard(std::vector<std::int64_t>& lengths, std::span<const std::int64_t> new_tokens) {
  detail::packed_total(new_tokens, int(lengths.size()));
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ATTN_CHECK(new_tokens[b] <= lengths[b], "new_tokens: sequence ", b, " holds ", lengths[b], " tokens, cannot drop ",
               new_tokens[b]);
  for (std::size_t b = 0; b < lengths.size(); ++b) lengths[b] -= new_tokens[b];
}

void reset_slot(std::vector<std::int64_t>& lengths, int b) {
  ATTN_CHECK(b >= 0 && b < int(lengths.size()), "b: expected a sequence in [0, ", lengths.size(), "), got ", b);
  lengths[std::size_t(b)] = 0;
}

/// One attention call per sequence with new tokens, because cached lengths differ. Attention
/// runs in the cache's dtype (every kernel takes q, k, v of one dtype): f32 q is rounded to it and
/// the output read back as f32.
void attend_each(const TensorView& q_f32, const TensorView& k, const TensorView& v, const TensorView& out_f32,
                 const std::vector<std::int64_t>& lengths, std::span<const std::int64_t> new_tokens,
                 const AttentionParams& params, Backend backend) {
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ATTN_CHECK(new_tokens[b] <= lengths[b], "q: ", new_tokens[b], " queries but sequence ", b, " caches only ",
               lengths[b], " tokens; append the new tokens' keys first");
  Tensor q_low, out_low;
  TensorView q = q_f32, out = out_f32;
  if (k.dtype != DType::f32) {
    q_low = convert(q_f32, k.dtype);
    out_low = Tensor(std::span<const std::int64_t>(out_f32.shape.data(), 3), k.dtype);
    q = q_low;
    out = out_low;
  }
  std::int64_t first = 0;
  for (int b = 0; b < int(lengths.size()); ++b) {
    const std::int64_t count = new_tokens[std::size_t(b)], len = lengths[std::size_t(b)];
    if (count == 0) continue;
    ForwardArgs args;
    args.q = detail::packed_sequence(q, first, count);
    args.k = detail::sequence(k, b, len);
    args.v = detail::sequence(v, b, len);
    args.out = detail::packed_sequence(out, first, count);
    args.params = params;
    attention_forward(args, backend);
    first += count;
  }
  if (out_low.defined())
    for (std::int64_t i = 0; i < out_low.numel(); ++i) write_element(out_f32, i, read_element(out_low, i));
}

}  // namespace

ContiguousKVCache::ContiguousKVCache(int batch, std::int64_t capacity, int heads_kv, int head_dim, int head_dim_v,
                                     DType dtype) {
  check_storage(dtype);
  ATTN_CHECK(batch >= 1, "batch: expected >= 1, got ", batch);
  ATTN_CHECK(capacity >= 1, "capacity: expected >= 1, got ", capacity);
  ATTN_CHECK(heads_kv >= 1, "heads_kv: expected >= 1, got ", heads_kv);
  ATTN_CHECK(head_dim >= 1 && head_dim_v >= 1, "head_dim: expected >= 1, got ", head_dim, " / ", head_dim_v);
  keys_ = Tensor({batch, capacity, heads_kv, head_dim}, dtype);
  values_ = Tensor({batch, capacity, heads_kv, head_dim_v}, dtype);
  lengths_.assign(std::size_t(batch), 0);
}

void ContiguousKVCache::reset(int b) { reset_slot(lengths_, b); }

void ContiguousKVCache::discard_last(std::span<const std::int64_t> new_tokens) { discard(lengths_, new_tokens); }

void ContiguousKVCache::append(const TensorView& k, const TensorView& v, std::span<const std::int64_t> new_tokens) {
  check_packed(k, "k", 3, new_tokens, batch_size());
  check_packed(v, "v", 3, new_tokens, batch_size());
  check_dim(k, "k", 1, keys_.size(2), "the cache's kv heads");
  check_dim(k, "k", 2, keys_.size(3), "the cache's head_dim");
  check_dim(v, "v", 1, values_.size(2), "the cache's kv heads");
  check_dim(v, "v", 2, values_.size(3), "the cache's head_dim_v");
  check_room(lengths_, new_tokens, capacity(), "k");
  write_rows(keys_, k, lengths_, new_tokens, 0);
  write_rows(values_, v, lengths_, new_tokens, 0);
  advance(lengths_, new_tokens);
}

void ContiguousKVCache::attend(const TensorView& q, const TensorView& out, std::span<const std::int64_t> new_tokens,
                               const AttentionParams& params, Backend backend) const {
  check_packed(q, "q", 3, new_tokens, batch_size());
  check_packed(out, "out", 3, new_tokens, batch_size());
  attend_each(q, keys_, values_, out, lengths_, new_tokens, params, backend);
}

ContiguousLatentCache::ContiguousLatentCache(int batch, std::int64_t capacity, int kv_lora_rank, int rope_dim,
                                             DType dtype)
    : kv_lora_rank_(kv_lora_rank), rope_dim_(rope_dim) {
  check_storage(dtype);
  ATTN_CHECK(batch >= 1, "batch: expected >= 1, got ", batch);
  ATTN_CHECK(capacity >= 1, "capacity: expected >= 1, got ", capacity);
  ATTN_CHECK(kv_lora_rank >= 1, "kv_lora_rank: expected >= 1, got ", kv_lora_rank);
  ATTN_CHECK(rope_dim >= 0, "rope_dim: expected >= 0, got ", rope_dim);
  rows_ = Tensor({batch, capacity, 1, kv_lora_rank + rope_dim}, dtype);
  lengths_.assign(std::size_t(batch), 0);
}

void ContiguousLatentCache::reset(int b) { reset_slot(lengths_, b); }

void ContiguousLatentCache::discard_last(std::span<const std::int64_t> new_tokens) { discard(lengths_, new_tokens); }

void ContiguousLatentCache::append(const TensorView& c_kv, const TensorView& k_rope,
                                   std::span<const std::int64_t> new_tokens) {
  check_packed(c_kv, "c_kv", 2, new_tokens, batch_size());
  check_packed(k_rope, "k_rope", 2, new_tokens, batch_size());
  check_dim(c_kv, "c_kv", 1, kv_lora_rank_, "kv_lora_rank");
  check_dim(k_rope, "k_rope", 1, rope_dim_, "rope_dim");
  check_room(lengths_, new_tokens, capacity(), "c_kv");
  write_rows(rows_, c_kv, lengths_, new_tokens, 0);
  write_rows(rows_, k_rope, lengths_, new_tokens, kv_lora_rank_);
  advance(lengths_, new_tokens);
}

void ContiguousLatentCache::read(int b, const TensorView& c_kv, const TensorView& k_rope) const {
  ATTN_CHECK(b >= 0 && b < batch_size(), "b: expected a sequence in [0, ", batch_size(), "), got ", b);
  const std::int64_t len = lengths_[std::size_t(b)];
  check_f32(c_kv, "c_kv", 2);
  check_f32(k_rope, "k_rope", 2);
  ATTN_CHECK(c_kv.size(0) == len && c_kv.size(1) == kv_lora_rank_, "c_kv: expected (", len, ", ", kv_lora_rank_,
             "), got ", c_kv.shape_str());
  ATTN_CHECK(k_rope.size(0) == len && k_rope.size(1) == rope_dim_, "k_rope: expected (", len, ", ", rope_dim_,
             "), got ", k_rope.shape_str());
  for (std::int64_t t = 0; t < len; ++t) {
    const std::int64_t row = b * rows_.view().stride[0] + t * rows_.view().stride[1];
    detail::load_row(detail::element_address(rows_, row), rows_.dtype(), c_kv.as<float>() + t * c_kv.stride[0],
                     kv_lora_rank_);
    detail::load_row(detail::element_address(rows_, row + kv_lora_rank_), rows_.dtype(),
                     k_rope.as<float>() + t * k_rope.stride[0], rope_dim_);
  }
}

void ContiguousLatentCache::attend(const TensorView& q, const TensorView& out, std::span<const std::int64_t> new_tokens,
                                   const AttentionParams& params, Backend backend) const {
  check_packed(q, "q", 3, new_tokens, batch_size());
  check_packed(out, "out", 3, new_tokens, batch_size());
  check_dim(q, "q", 2, kv_lora_rank_ + rope_dim_, "kv_lora_rank + rope_dim");
  check_dim(out, "out", 2, kv_lora_rank_, "kv_lora_rank");
  attend_each(q, rows_, detail::last_dim_slice(rows_, 0, kv_lora_rank_), out, lengths_, new_tokens, params, backend);
}

}  // namespace attn::modules
