// Normalisation over the last dimension and the residual wrappers around a sub-layer.
//
//   LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias   (var biased, over the row)
//   RMSNorm:   y = x / sqrt(mean(x^2) + eps) * weight
#pragma once

#include <functional>

#include "attn/tensor.hpp"

namespace attn::modules {

enum class NormKind { layer_norm, rms_norm };

struct Norm {
  NormKind kind = NormKind::rms_norm;
  /// f32 (dim).
  Tensor weight;
  /// f32 (dim) or undefined (no bias); LayerNorm only.
  Tensor bias;
  float eps = 1e-5f;

  std::int64_t dim() const { return weight.size(0); }
  /// Throws attn::Error naming `name` unless the weights fit `dim`, eps > 0, and RMSNorm has no bias.
  void check(const char* name, std::int64_t dim) const;
  /// weight = 1, bias = 0 (LayerNorm) or none (RMSNorm).
  static Norm identity_weights(NormKind kind, std::int64_t dim, float eps = 1e-5f);
};

/// Normalises each row of x (..., dim): f32 contiguous, CPU. Returns a new tensor.
Tensor apply_norm(const Norm& norm, const TensorView& x);

/// How a sub-layer f joins the residual stream.
enum class ResidualStyle {
  post_norm,  ///< norm(x + f(x))   (original Transformer, BERT)
  pre_norm,   ///< x + f(norm(x))   (GPT-2 onwards)
  scaled,     ///< x + alpha * f(x)  (ReZero / LayerScale; alpha learnable, no norm)
};

/// A residual wrapper. For `scaled`, alpha is a learnable per-channel vector f32 (dim)
/// (LayerScale); a single learnable scalar (ReZero) is the vector with all entries equal, so
/// one form loads both kinds of checkpoint. ReZero starts alpha at 0, LayerScale at ~1e-4.
struct ResidualBlock {
  ResidualStyle style = ResidualStyle::pre_norm;
  Norm norm;     ///< post_norm and pre_norm
  Tensor alpha;  ///< scaled: f32 (dim)

  void check(const char* name, std::int64_t dim) const;
  /// x (..., dim) f32 contiguous; `sublayer` maps such a tensor to one of the same shape.
  Tensor forward(const TensorView& x, const std::function<Tensor(const TensorView&)>& sublayer) const;
};

}  // namespace attn::modules
