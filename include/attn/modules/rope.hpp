// Rotary position embeddings (RoPE, Su et al.).
//
// The first `rotary_dim` features of each head are rotated in pairs by angle
// pos * base^(-2i / rotary_dim), i in [0, rotary_dim / 2); the rest pass through unchanged.
// Pairing styles:
//   neox        (GPT-NeoX, Llama): feature i pairs with i + rotary_dim / 2 (half split)
//   interleaved (GPT-J, DeepSeek's rope part): feature 2i pairs with 2i + 1
// A pair (a, b) becomes (a cos - b sin, a sin + b cos). Optional scaling (linear, Llama 3) changes
// the frequencies for long contexts.
#pragma once

#include <cstdint>
#include <span>

#include "attn/tensor.hpp"

namespace attn::modules {

enum class RopeStyle { neox, interleaved };

/// Frequency scaling for contexts longer than the model was trained on.
struct RopeScaling {
  enum class Kind { none, linear, llama3 };
  Kind kind = Kind::none;
  /// linear: every frequency divided by factor (positions squeezed by it). llama3: see below.
  double factor = 1.0;
  /// llama3 (Llama 3.1 / 3.2): with wavelength w = 2 pi / frequency and L the original context,
  /// w < L / high_freq_factor keeps its frequency, w > L / low_freq_factor divides it by factor,
  /// and in between blends the two with weight t = (L / w - low) / (high - low) on the kept one.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_positions = 8192;
};

struct RopeConfig {
  /// Rotated features per head: even and <= head_dim; 0 means the whole head.
  int rotary_dim = 0;
  double base = 10000.0;
  RopeStyle style = RopeStyle::neox;
  RopeScaling scaling{};

  /// rotary_dim with 0 resolved against head_dim.
  int resolved_dim(int head_dim) const { return rotary_dim == 0 ? head_dim : rotary_dim; }
  /// Throws attn::Error naming `name` (e.g. "rope") when the config does not fit head_dim.
  void check(const char* name, int head_dim) const;
};

/// Rotates x in place: f32 packed tokens (T, H, D) with unit last stride; token t sits at
/// positions[t] (decode: the cache length before the token was appended).
void apply_rope(const TensorView& x, std::span<const std::int64_t> positions, const RopeConfig& rope);

}  // namespace attn::modules
