// Host and device tensors for the CUDA checks (forward, backward, MLA, KV cache): fresh random
// inputs on the host, copies each way, and NaN-poisoned outputs so that an element a kernel
// fails to write cannot pass.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "attn/tensor.hpp"

namespace attn::test::cuda {

using Shape = std::vector<std::int64_t>;

inline Tensor host_tensor(const Shape& shape, DType dtype) {
  return Tensor(std::span<const std::int64_t>(shape), dtype);
}

/// Normal(0, sigma) values, rounded to `dtype`.
inline Tensor host_randn(const Shape& shape, DType dtype, double sigma, std::mt19937_64& gen) {
  Tensor t = host_tensor(shape, dtype);
  std::normal_distribution<double> nd(0.0, sigma);
  for (std::int64_t i = 0; i < t.numel(); ++i) write_element(t.view(), i, nd(gen));
  return t;
}

/// int32 values in the given shape (1-D of values.size() when none is given).
inline Tensor host_i32(const std::vector<int>& values, const Shape& shape = {}) {
  Tensor t = host_tensor(shape.empty() ? Shape{std::int64_t(values.size())} : shape, DType::i32);
  std::copy(values.begin(), values.end(), t.as<std::int32_t>());
  return t;
}

inline Tensor to_device(const Tensor& h) {
  Tensor d(std::span<const std::int64_t>(h.view().shape.data(), std::size_t(h.view().ndim)), h.dtype(),
           Device::cuda());
  copy(d, h);
  return d;
}

/// A host copy (of a device tensor, or of a host one: copy() serves both). Synchronises, so a
/// kernel fault surfaces here.
inline Tensor to_host(const Tensor& d) {
  Tensor h(std::span<const std::int64_t>(d.view().shape.data(), std::size_t(d.view().ndim)), d.dtype());
  copy(h, d);
  return h;
}

/// A device tensor full of NaN.
inline Tensor poisoned_device(const Shape& shape, DType dtype) {
  Tensor h = host_tensor(shape, dtype);
  for (std::int64_t i = 0; i < h.numel(); ++i) write_element(h.view(), i, std::numeric_limits<double>::quiet_NaN());
  return to_device(h);
}

}  // namespace attn::test::cuda
