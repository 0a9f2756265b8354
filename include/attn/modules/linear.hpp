// A dense projection y = x W^T + b (PyTorch nn.Linear's layout), the building block of the
// attention layers. f32 on the CPU.
#pragma once

#include <cstdint>

#include "attn/tensor.hpp"

namespace attn::modules {

struct Linear {
  /// f32 (out_features, in_features), contiguous: row o holds the weights of output o.
  Tensor weight;
  /// f32 (out_features), or undefined for no bias.
  Tensor bias;

  std::int64_t in_features() const { return weight.size(1); }
  std::int64_t out_features() const { return weight.size(0); }
  /// Throws attn::Error naming `name` unless weight is f32 (out, in) and bias absent or f32 (out).
  void check(const char* name, std::int64_t out, std::int64_t in) const;
};

/// y (..., out_features) = x (..., in_features) W^T + b; x f32 contiguous on the CPU.
Tensor linear(const Linear& layer, const TensorView& x);

/// A contiguous f32 tensor with the given shape and the same data (no copy); numel must match.
TensorView reshape(const TensorView& t, std::initializer_list<std::int64_t> shape);

}  // namespace attn::modules
