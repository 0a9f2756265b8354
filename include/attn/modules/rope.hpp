// Rotary position embeddings (RoPE, Su et al.).
//
// The first `rotary_dim` features of each head are rotated in pairs by angle
// pos * base^(-2i / rotary_dim), i in [0, rotary_dim / 2); the rest pass through unchanged.
// Pairing styles:
//   neox        (GPT-NeoX, Llama): feature i pairs with i + rotary_dim / 2 (half split)
//   interleaved (GPT-J, DeepSeek's rope part): feature 2i pairs with 2i + 1
// A pair (a, b) becomes (a cos - b sin, a sin + b cos).
#pragma once

#include <cstdint>
#include <span>

#include "attn/tensor.hpp"

namespace attn::modules {

enum class RopeStyle { neox, interleaved };

struct RopeConfig {
  /// Rotated features per head: even and <= head_dim; 0 means the whole head.
  int rotary_dim = 0;
  double base = 10000.0;
  RopeStyle style = RopeStyle::neox;

  /// rotary_dim with 0 resolved against head_dim.
  int resolved_dim(int head_dim) const { return rotary_dim == 0 ? head_dim : rotary_dim; }
  /// Throws attn::Error naming `name` (e.g. "rope") when the config does not fit head_dim.
  void check(const char* name, int head_dim) const;
};

/// Rotates x in place: f32 (B, S, H, D) with unit last stride. Token s of sequence b sits at
/// position start_positions[b] + s (decode passes the cache lengths).
void apply_rope(const TensorView& x, std::span<const std::int64_t> start_positions, const RopeConfig& rope);

}  // namespace attn::modules
