// Sub-views used to move token vectors between caller tensors and cache storage with
// attn::copy (which handles strides and dtypes checks), without new copy loops.
#pragma once

#include <cstdint>

#include "attn/tensor.hpp"

namespace attn::detail {

/// t[i]: the view without its first dimension.
inline TensorView select(const TensorView& t, std::int64_t i) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + i * t.stride[0] * std::int64_t(dtype_size(t.dtype));
  v.ndim = t.ndim - 1;
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[std::size_t(d)] = t.shape[std::size_t(d + 1)];
    v.stride[std::size_t(d)] = t.stride[std::size_t(d + 1)];
  }
  return v;
}

/// t[first : first + n] along the first dimension.
inline TensorView narrow(const TensorView& t, std::int64_t first, std::int64_t n) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + first * t.stride[0] * std::int64_t(dtype_size(t.dtype));
  v.shape[0] = n;
  return v;
}

}  // namespace attn::detail
