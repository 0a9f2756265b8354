// Per-layer caches as the attention layers see them: two small interfaces, and contiguous
// implementations that live here until src/cache's paged pool can implement the same
// interfaces (one class each, no change to the layers).
//
// Batches are packed, as continuous batching needs: a call brings T new tokens, new_tokens[b]
// of them for sequence b (0 for a sequence that sits this step out), sequence 0's rows first.
// Shape letters: B sequences, T packed new tokens, L a sequence's cached length (its new tokens
// included once appended), Hk kv heads, D / Dv key / value head dims, R kv_lora_rank, P rope dim.
// Every tensor crossing these interfaces is f32 (the layers' dtype) on the CPU with a unit last
// stride; what a cache stores, and in which dtype its attention runs, is its own business.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attn/attention.hpp"

namespace attn::modules {

/// Keys and values of one layer for a batch of sequences.
class LayerKVCache {
 public:
  virtual ~LayerKVCache() = default;
  virtual int batch_size() const = 0;
  /// Tokens held for sequence b.
  virtual std::int64_t seqlen(int b) const = 0;
  /// Appends packed k (T, Hk, D) and v (T, Hk, Dv) after each sequence's tokens. Throws
  /// attn::Error and changes nothing when a sequence would run out of room.
  virtual void append(const TensorView& k, const TensorView& v, std::span<const std::int64_t> new_tokens) = 0;
  /// Drops each sequence's newest new_tokens[b] tokens: undoes an append whose attention then
  /// failed, so a failed layer call leaves the cache as it was.
  virtual void discard_last(std::span<const std::int64_t> new_tokens) = 0;
  /// out (T, Hq, Dv) = attention of packed q (T, Hq, D) over each sequence's L cached tokens;
  /// sequence b's queries are its last new_tokens[b] tokens (DESIGN.md's bottom-right
  /// alignment), so causal masks hold.
  virtual void attend(const TensorView& q, const TensorView& out, std::span<const std::int64_t> new_tokens,
                      const AttentionParams& params, Backend backend) const = 0;
};

/// MLA's latent cache: per token only c_kv (R, after its norm) and the RoPE'd shared key (P).
/// A paged implementation would keep pages of 64 tokens of R + P values (FlashMLA's page size).
class LatentKVCache {
 public:
  virtual ~LatentKVCache() = default;
  virtual int batch_size() const = 0;
  virtual std::int64_t seqlen(int b) const = 0;
  virtual int kv_lora_rank() const = 0;
  virtual int rope_dim() const = 0;
  /// Appends packed c_kv (T, R) and k_rope (T, P); all-or-nothing like LayerKVCache::append.
  virtual void append(const TensorView& c_kv, const TensorView& k_rope, std::span<const std::int64_t> new_tokens) = 0;
  /// As LayerKVCache::discard_last.
  virtual void discard_last(std::span<const std::int64_t> new_tokens) = 0;
  /// Copies sequence b's L cached rows into c_kv (L, R) and k_rope (L, P), for the expanded path.
  virtual void read(int b, const TensorView& c_kv, const TensorView& k_rope) const = 0;
  /// The absorbed path's MQA: keys [c_kv ; k_rope] (one head of R + P), values c_kv (R), so
  /// out (T, H, R) from packed q (T, H, R + P).
  virtual void attend(const TensorView& q, const TensorView& out, std::span<const std::int64_t> new_tokens,
                      const AttentionParams& params, Backend backend) const = 0;
};

/// (B, capacity, Hk, D) keys and (B, capacity, Hk, Dv) values in f32, f16 or bf16, one length per
/// sequence. Appends round f32 inputs to the dtype; attention runs in it (q rounded to it too, as
/// every kernel takes one dtype) and its output is read back as f32.
class ContiguousKVCache final : public LayerKVCache {
 public:
  ContiguousKVCache(int batch, std::int64_t capacity, int heads_kv, int head_dim, int head_dim_v,
                    DType dtype = DType::f32);
  DType dtype() const { return keys_.dtype(); }
  int batch_size() const override { return int(lengths_.size()); }
  std::int64_t seqlen(int b) const override { return lengths_.at(std::size_t(b)); }
  std::int64_t capacity() const { return keys_.size(1); }
  /// Empties sequence b's slot for a new sequence; the others keep their tokens.
  void reset(int b);
  void append(const TensorView& k, const TensorView& v, std::span<const std::int64_t> new_tokens) override;
  void discard_last(std::span<const std::int64_t> new_tokens) override;
  void attend(const TensorView& q, const TensorView& out, std::span<const std::int64_t> new_tokens,
              const AttentionParams& params, Backend backend) const override;

 private:
  Tensor keys_, values_;
  std::vector<std::int64_t> lengths_;
};

/// (B, capacity, R + P) rows in f32, f16 or bf16 (rounding as ContiguousKVCache); values are a
/// view of each row's first R entries, so a token costs R + P values, not 2R + P.
class ContiguousLatentCache final : public LatentKVCache {
 public:
  ContiguousLatentCache(int batch, std::int64_t capacity, int kv_lora_rank, int rope_dim, DType dtype = DType::f32);
  DType dtype() const { return rows_.dtype(); }
  int batch_size() const override { return int(lengths_.size()); }
  std::int64_t seqlen(int b) const override { return lengths_.at(std::size_t(b)); }
  std::int64_t capacity() const { return rows_.size(1); }
  /// Empties sequence b's slot for a new sequence; the others keep their tokens.
  void reset(int b);
  int kv_lora_rank() const override { return kv_lora_rank_; }
  int rope_dim() const override { return rope_dim_; }
  void append(const TensorView& c_kv, const TensorView& k_rope, std::span<const std::int64_t> new_tokens) override;
  void discard_last(std::span<const std::int64_t> new_tokens) override;
  void read(int b, const TensorView& c_kv, const TensorView& k_rope) const override;
  void attend(const TensorView& q, const TensorView& out, std::span<const std::int64_t> new_tokens,
              const AttentionParams& params, Backend backend) const override;

 private:
  Tensor rows_;
  int kv_lora_rank_ = 0, rope_dim_ = 0;
  std::vector<std::int64_t> lengths_;
};

}  // namespace attn::modules
