#include "attn/modules/layer_cache.hpp"

#include "modules/tensor_util.hpp"

namespace attn::modules {
namespace {

using detail::check_dim;
using detail::check_f32;

/// Throws unless every sequence has room for `incoming` more tokens; nothing is written before.
void check_room(const std::vector<std::int64_t>& lengths, std::int64_t incoming, std::int64_t capacity,
                const char* name) {
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ATTN_CHECK(lengths[b] + incoming <= capacity, name, ": sequence ", b, " holds ", lengths[b], " tokens; ",
               incoming, " more exceed the capacity of ", capacity);
}

/// Stores f32 src (B, S, ..., F) rows into dst (B, capacity, ..., F') of the cache's dtype at
/// each sequence's length, features [first, first + F).
void write_rows(const TensorView& dst, const TensorView& src, const std::vector<std::int64_t>& lengths,
                std::int64_t first) {
  const std::int64_t heads = src.ndim == 4 ? src.size(2) : 1, feat = src.size(-1);
  for (int b = 0; b < int(src.size(0)); ++b)
    for (std::int64_t s = 0; s < src.size(1); ++s)
      for (std::int64_t h = 0; h < heads; ++h) {
        const float* from = src.as<float>() + b * src.stride[0] + s * src.stride[1] + (src.ndim == 4 ? h * src.stride[2] : 0);
        const std::int64_t to = b * dst.stride[0] + (lengths[std::size_t(b)] + s) * dst.stride[1] +
                                (dst.ndim == 4 ? h * dst.stride[2] : 0) + first;
        detail::store_row(detail::element_address(dst, to), dst.dtype, from, feat);
      }
}

void check_storage(DType dtype) {
  ATTN_CHECK(is_storage_dtype(dtype), "dtype: expected f32, f16 or bf16, got ", dtype_name(dtype));
}

void check_queries(const TensorView& q, const TensorView& out, int batch, const std::vector<std::int64_t>& lengths) {
  check_f32(q, "q", 4);
  check_f32(out, "out", 4);
  check_dim(q, "q", 0, batch, "the cache's batch size");
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ATTN_CHECK(lengths[b] >= q.size(1), "q: ", q.size(1), " queries but sequence ", b, " caches only ", lengths[b],
               " tokens; append the new tokens' keys first");
}

/// One attention call per sequence, because cached lengths differ between sequences. Attention
/// runs in the cache's dtype (every kernel takes q, k, v of one dtype): f32 q is rounded to it and
/// the output read back as f32.
void attend_each(const TensorView& q_f32, const TensorView& k, const TensorView& v, const TensorView& out_f32,
                 const std::vector<std::int64_t>& lengths, const AttentionParams& params, Backend backend) {
  Tensor q_low, out_low;
  TensorView q = q_f32, out = out_f32;
  if (k.dtype != DType::f32) {
    q_low = convert(q_f32, k.dtype);
    out_low = Tensor(std::span<const std::int64_t>(out_f32.shape.data(), 4), k.dtype);
    q = q_low;
    out = out_low;
  }
  for (int b = 0; b < int(lengths.size()); ++b) {
    const std::int64_t len = lengths[std::size_t(b)];
    ForwardArgs args;
    args.q = detail::sequence(q, b, 0, q.size(1));
    args.k = detail::sequence(k, b, 0, len);
    args.v = detail::sequence(v, b, 0, len);
    args.out = detail::sequence(out, b, 0, out.size(1));
    args.params = params;
    attention_forward(args, backend);
  }
  if (out_low.defined())
    for (std::int64_t i = 0; i < out_low.numel(); ++i) write_element(out_f32, i, read_element(out_low, i));
}

void reset_slot(std::vector<std::int64_t>& lengths, int b) {
  ATTN_CHECK(b >= 0 && b < int(lengths.size()), "b: expected a sequence in [0, ", lengths.size(), "), got ", b);
  lengths[std::size_t(b)] = 0;
}

void discard(std::vector<std::int64_t>& lengths, std::int64_t tokens) {
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ATTN_CHECK(tokens >= 0 && tokens <= lengths[b], "tokens: expected 0 .. ", lengths[b], " (sequence ", b,
               "'s length), got ", tokens);
  for (std::int64_t& len : lengths) len -= tokens;
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

void ContiguousKVCache::discard_last(std::int64_t tokens) { discard(lengths_, tokens); }

void ContiguousKVCache::append(const TensorView& k, const TensorView& v) {
  check_f32(k, "k", 4);
  check_f32(v, "v", 4);
  check_dim(k, "k", 0, batch_size(), "the cache's batch size");
  check_dim(k, "k", 2, keys_.size(2), "the cache's kv heads");
  check_dim(k, "k", 3, keys_.size(3), "the cache's head_dim");
  check_dim(v, "v", 0, batch_size(), "the cache's batch size");
  check_dim(v, "v", 1, k.size(1), "k's token count");
  check_dim(v, "v", 2, values_.size(2), "the cache's kv heads");
  check_dim(v, "v", 3, values_.size(3), "the cache's head_dim_v");
  check_room(lengths_, k.size(1), capacity(), "k");
  write_rows(keys_, k, lengths_, 0);
  write_rows(values_, v, lengths_, 0);
  for (std::int64_t& len : lengths_) len += k.size(1);
}

void ContiguousKVCache::attend(const TensorView& q, const TensorView& out, const AttentionParams& params,
                               Backend backend) const {
  check_queries(q, out, batch_size(), lengths_);
  attend_each(q, keys_, values_, out, lengths_, params, backend);
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

void ContiguousLatentCache::discard_last(std::int64_t tokens) { discard(lengths_, tokens); }

void ContiguousLatentCache::append(const TensorView& c_kv, const TensorView& k_rope) {
  check_f32(c_kv, "c_kv", 3);
  check_f32(k_rope, "k_rope", 3);
  check_dim(c_kv, "c_kv", 0, batch_size(), "the cache's batch size");
  check_dim(c_kv, "c_kv", 2, kv_lora_rank_, "kv_lora_rank");
  check_dim(k_rope, "k_rope", 0, batch_size(), "the cache's batch size");
  check_dim(k_rope, "k_rope", 1, c_kv.size(1), "c_kv's token count");
  check_dim(k_rope, "k_rope", 2, rope_dim_, "rope_dim");
  check_room(lengths_, c_kv.size(1), capacity(), "c_kv");
  write_rows(rows_, c_kv, lengths_, 0);
  write_rows(rows_, k_rope, lengths_, kv_lora_rank_);
  for (std::int64_t& len : lengths_) len += c_kv.size(1);
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

void ContiguousLatentCache::attend(const TensorView& q, const TensorView& out, const AttentionParams& params,
                                   Backend backend) const {
  check_queries(q, out, batch_size(), lengths_);
  check_dim(q, "q", 3, kv_lora_rank_ + rope_dim_, "kv_lora_rank + rope_dim");
  check_dim(out, "out", 3, kv_lora_rank_, "kv_lora_rank");
  attend_each(q, rows_, detail::last_dim_slice(rows_, 0, kv_lora_rank_), out, lengths_, params, backend);
}

}  // namespace attn::modules
