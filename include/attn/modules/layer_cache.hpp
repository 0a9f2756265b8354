// Per-layer caches as the attention layers see them: two small interfaces, and contiguous
// implementations that live here until src/cache's paged pool can implement the same
// interfaces (one class each, no change to the layers).
//
// Shape letters: B sequences, S new tokens, L a sequence's cached length (new tokens included
// once appended), Hk kv heads, D / Dv key / value head dims, R kv_lora_rank, P the rope dim.
// Every tensor crossing these interfaces is f32 (the layers' dtype) on the CPU with a unit last
// stride; what a cache stores, and in which dtype its attention runs, is its own business.
#pragma once

#include <cstdint>
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
  /// Appends k (B, S, Hk, D) and v (B, S, Hk, Dv) after every sequence's tokens. Throws
  /// attn::Error and changes nothing when a sequence would run out of room.
  virtual void append(const TensorView& k, const TensorView& v) = 0;
  /// Drops the newest `tokens` of every sequence: undoes an append whose attention then failed,
  /// so a failed layer call leaves the cache as it was.
  virtual void discard_last(std::int64_t tokens) = 0;
  /// out (B, S, Hq, Dv) = attention of q (B, S, Hq, D) over each sequence's L cached tokens;
  /// queries are the last S of them (DESIGN.md's bottom-right alignment), so causal masks hold.
  virtual void attend(const TensorView& q, const TensorView& out, const AttentionParams& params,
                      Backend backend) const = 0;
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
  /// Appends c_kv (B, S, R) and k_rope (B, S, P); all-or-nothing like LayerKVCache::append.
  virtual void append(const TensorView& c_kv, const TensorView& k_rope) = 0;
  /// As LayerKVCache::discard_last.
  virtual void discard_last(std::int64_t tokens) = 0;
  /// Copies sequence b's L cached rows into c_kv (L, R) and k_rope (L, P), for the expanded path.
  virtual void read(int b, const TensorView& c_kv, const TensorView& k_rope) const = 0;
  /// The absorbed path's MQA: keys [c_kv ; k_rope] (one head of R + P), values c_kv (R), so
  /// out (B, S, H, R) from q (B, S, H, R + P).
  virtual void attend(const TensorView& q, const TensorView& out, const AttentionParams& params,
                      Backend backend) const = 0;
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
  void append(const TensorView& k, const TensorView& v) override;
  void discard_last(std::int64_t tokens) override;
  void attend(const TensorView& q, const TensorView& out, const AttentionParams& params,
              Backend backend) const override;

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
  void append(const TensorView& c_kv, const TensorView& k_rope) override;
  void discard_last(std::int64_t tokens) override;
  void read(int b, const TensorView& c_kv, const TensorView& k_rope) const override;
  void attend(const TensorView& q, const TensorView& out, const AttentionParams& params,
              Backend backend) const override;

 private:
  Tensor rows_;
  int kv_lora_rank_ = 0, rope_dim_ = 0;
  std::vector<std::int64_t> lengths_;
};

}  // namespace attn::modules
