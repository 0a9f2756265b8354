// Packed batches (see layer_cache.hpp): T new tokens, new_tokens[b] of them for sequence b.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attn/tensor.hpp"

namespace attn::modules::detail {

/// Checks new_tokens against the cache's batch and returns T, their sum; names `what` (the
/// packed tensor whose first dimension must be T).
inline std::int64_t packed_total(std::span<const std::int64_t> new_tokens, int batch) {
  ATTN_CHECK(std::int64_t(new_tokens.size()) == batch, "new_tokens: expected ", batch,
             " counts (one per cached sequence), got ", new_tokens.size());
  std::int64_t total = 0;
  for (std::size_t b = 0; b < new_tokens.size(); ++b) {
    ATTN_CHECK(new_tokens[b] >= 0, "new_tokens: expected counts >= 0, got ", new_tokens[b], " for sequence ", b);
    total += new_tokens[b];
  }
  return total;
}

/// Rows [first, first + count) of a packed (T, H, F) view as a (1, count, H, F) batch of one.
inline TensorView packed_sequence(const TensorView& t, std::int64_t first, std::int64_t count) {
  TensorView s;
  s.data = static_cast<char*>(t.data) + first * t.stride[0] * std::int64_t(dtype_size(t.dtype));
  s.dtype = t.dtype;
  s.device = t.device;
  s.ndim = 4;
  s.shape = {1, count, t.shape[1], t.shape[2]};
  s.stride = {count * t.stride[0], t.stride[0], t.stride[1], t.stride[2]};
  return s;
}

/// new_tokens of a (B, S) batch: S for every sequence.
inline std::vector<std::int64_t> uniform_new_tokens(std::int64_t batch, std::int64_t seqlen) {
  return std::vector<std::int64_t>(static_cast<std::size_t>(batch), seqlen);
}

/// RoPE positions of packed new tokens: sequence b's continue at cache.seqlen(b), read before
/// their append.
template <class Cache>
std::vector<std::int64_t> new_token_positions(const Cache& cache, std::span<const std::int64_t> new_tokens) {
  std::vector<std::int64_t> positions;
  for (int b = 0; b < int(new_tokens.size()); ++b)
    for (std::int64_t s = 0; s < new_tokens[std::size_t(b)]; ++s) positions.push_back(cache.seqlen(b) + s);
  return positions;
}

}  // namespace attn::modules::detail
