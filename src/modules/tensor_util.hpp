// View and copy helpers shared by the layers (CPU, f32 unless stated).
#pragma once

#include <cstdint>

#include "attn/half.hpp"
#include "attn/tensor.hpp"

namespace attn::modules::detail {

/// The first len tokens of sequence b of a (B, S, ...) view, as (1, len, ...) with the same strides.
inline TensorView sequence(const TensorView& t, int b, std::int64_t len) {
  TensorView s = t;
  s.data = static_cast<char*>(t.data) + b * t.stride[0] * std::int64_t(dtype_size(t.dtype));
  s.shape[0] = 1;
  s.shape[1] = len;
  return s;
}

/// Features [first, first + count) of the last dimension, same strides.
inline TensorView last_dim_slice(const TensorView& t, std::int64_t first, std::int64_t count) {
  TensorView s = t;
  s.data = static_cast<char*>(t.data) + first * std::int64_t(dtype_size(t.dtype));
  s.shape[std::size_t(t.ndim - 1)] = count;
  return s;
}

/// Throws naming `name` unless t is a CPU f32 view of `ndim` dims with unit last stride.
inline void check_f32(const TensorView& t, const char* name, int ndim) {
  ATTN_CHECK(t.defined() && t.ndim == ndim && t.dtype == DType::f32 && t.device.is_cpu() && t.stride_of(-1) == 1,
             name, ": expected a CPU f32 tensor of ", ndim, " dimensions with unit last stride",
             t.defined() ? ", got " + std::string(dtype_name(t.dtype)) + " " + t.shape_str() : std::string());
}

/// Throws naming `name` unless dimension d of t has size `expected` (described by `what`).
inline void check_dim(const TensorView& t, const char* name, int d, std::int64_t expected, const char* what) {
  ATTN_CHECK(t.size(d) == expected, name, ": expected dimension ", d, " to be ", expected, " (", what, "), got ",
             t.shape_str());
}

/// Writes n f32 values into storage of `dtype` (f32, f16 or bf16; rounding to nearest even).
inline void store_row(void* dst, DType dtype, const float* src, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::f16: static_cast<half_t*>(dst)[i] = to_half(src[i]); break;
      case DType::bf16: static_cast<bfloat16_t*>(dst)[i] = to_bfloat16(src[i]); break;
      default: static_cast<float*>(dst)[i] = src[i]; break;
    }
  }
}

/// Reads n values of storage `dtype` (f32, f16 or bf16) as f32.
inline void load_row(const void* src, DType dtype, float* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::f16: dst[i] = to_float(static_cast<const half_t*>(src)[i]); break;
      case DType::bf16: dst[i] = to_float(static_cast<const bfloat16_t*>(src)[i]); break;
      default: dst[i] = static_cast<const float*>(src)[i]; break;
    }
  }
}

/// Address of element `offset` (in elements) of t.
inline char* element_address(const TensorView& t, std::int64_t offset) {
  return static_cast<char*>(t.data) + offset * std::int64_t(dtype_size(t.dtype));
}

}  // namespace attn::modules::detail
