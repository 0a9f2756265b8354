#include "attn/modules/rope.hpp"

#include <cmath>
#include <vector>

namespace attn::modules {

void RopeConfig::check(const char* name, int head_dim) const {
  const int r = resolved_dim(head_dim);
  ATTN_CHECK(r > 0 && r % 2 == 0 && r <= head_dim, name, ".rotary_dim: expected an even value in [2, head_dim = ",
             head_dim, "] (or 0 for all), got ", rotary_dim);
  ATTN_CHECK(base > 1.0 && std::isfinite(base), name, ".base: expected a finite value > 1, got ", base);
  if (scaling.kind == RopeScaling::Kind::none) return;
  ATTN_CHECK(scaling.factor > 0.0 && std::isfinite(scaling.factor), name,
             ".scaling.factor: expected a finite value > 0, got ", scaling.factor);
  if (scaling.kind != RopeScaling::Kind::llama3) return;
  ATTN_CHECK(scaling.low_freq_factor > 0.0 && scaling.high_freq_factor > scaling.low_freq_factor, name,
             ".scaling: expected 0 < low_freq_factor < high_freq_factor, got ", scaling.low_freq_factor, " and ",
             scaling.high_freq_factor);
  ATTN_CHECK(scaling.original_max_positions >= 1.0, name, ".scaling.original_max_positions: expected >= 1, got ",
             scaling.original_max_positions);
}

namespace {

/// base^(-2i / rotary_dim) for pair i, then the scaling's adjustment.
double frequency(const RopeConfig& rope, int i, int rotary_dim) {
  const double f = std::pow(rope.base, -2.0 * i / rotary_dim);
  const RopeScaling& sc = rope.scaling;
  switch (sc.kind) {
    case RopeScaling::Kind::none: return f;
    case RopeScaling::Kind::linear: return f / sc.factor;
    case RopeScaling::Kind::llama3: {
      const double kTwoPi = 6.283185307179586;
      const double periods_in_context = sc.original_max_positions * f / kTwoPi;  // L / wavelength
      if (periods_in_context > sc.high_freq_factor) return f;
      if (periods_in_context < sc.low_freq_factor) return f / sc.factor;
      const double t = (periods_in_context - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor);
      return t * f + (1.0 - t) * f / sc.factor;
    }
  }
  return f;
}

}  // namespace

void apply_rope(const TensorView& x, std::span<const std::int64_t> positions, const RopeConfig& rope) {
  ATTN_CHECK(x.defined() && x.ndim == 3 && x.dtype == DType::f32 && x.device.is_cpu() && x.stride_of(-1) == 1,
             "x: expected a CPU f32 (tokens, heads, head_dim) tensor with unit last stride");
  const std::int64_t tokens = x.size(0);
  const int heads = int(x.size(1)), head_dim = int(x.size(2));
  ATTN_CHECK(std::int64_t(positions.size()) == tokens, "positions: expected ", tokens, " entries (one per token), got ",
             positions.size());
  rope.check("rope", head_dim);
  const int half = rope.resolved_dim(head_dim) / 2;
  // Feature pair i: (first, second) offsets inside the head.
  const int stride_a = rope.style == RopeStyle::neox ? 1 : 2;
  const int second = rope.style == RopeStyle::neox ? half : 1;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i) inv_freq[std::size_t(i)] = frequency(rope, i, 2 * half);
  std::vector<float> cos_t(static_cast<std::size_t>(half)), sin_t(static_cast<std::size_t>(half));
  for (std::int64_t t = 0; t < tokens; ++t) {
    // Angles in double: positions reach 1e5+ where f32 products lose the phase.
    const double pos = double(positions[std::size_t(t)]);
    for (int i = 0; i < half; ++i) {
      cos_t[std::size_t(i)] = float(std::cos(pos * inv_freq[std::size_t(i)]));
      sin_t[std::size_t(i)] = float(std::sin(pos * inv_freq[std::size_t(i)]));
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x.as<float>() + t * x.stride[0] + h * x.stride[1];
      for (int i = 0; i < half; ++i) {
        float& a = v[i * stride_a];
        float& c = v[i * stride_a + second];
        const float a0 = a, c0 = c;
        a = a0 * cos_t[std::size_t(i)] - c0 * sin_t[std::size_t(i)];
        c = a0 * sin_t[std::size_t(i)] + c0 * cos_t[std::size_t(i)];
      }
    }
  }
}

}  // namespace attn::modules
