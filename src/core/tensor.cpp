#include "attn/tensor.hpp"

#include <cstdlib>
#include <cstring>

#include "attn/half.hpp"
#include "core/device_memory.hpp"

namespace attn {

std::int64_t TensorView::numel() const {
  if (ndim == 0) return 0;
  std::int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[std::size_t(d)];
  return n;
}

bool TensorView::is_contiguous() const {
  std::int64_t expect = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[std::size_t(d)] != 1 && stride[std::size_t(d)] != expect) return false;
    expect *= shape[std::size_t(d)];
  }
  return true;
}

std::string TensorView::shape_str() const {
  std::string s = "(";
  for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[std::size_t(d)]);
  return s + ")";
}

TensorView TensorView::contiguous(void* data, DType dtype, std::span<const std::int64_t> shape, Device device) {
  ATTN_CHECK(int(shape.size()) <= kMaxDims, "tensor: at most ", kMaxDims, " dimensions, got ", shape.size());
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.ndim = int(shape.size());
  std::int64_t s = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[std::size_t(d)] = shape[std::size_t(d)];
    v.stride[std::size_t(d)] = s;
    s *= shape[std::size_t(d)];
  }
  return v;
}

Tensor::Tensor(std::span<const std::int64_t> shape, DType dtype, Device device) {
  for (std::int64_t s : shape) ATTN_CHECK(s >= 0, "tensor: expected sizes >= 0, got ", s);
  view_ = TensorView::contiguous(nullptr, dtype, shape, device);
  const std::size_t bytes = view_.nbytes();
  void* p = detail::device_alloc(device, bytes == 0 ? 64 : bytes);
  storage_ = std::shared_ptr<void>(p, [device](void* q) { detail::device_free(device, q); });
  view_.data = p;
}

namespace detail {

void* device_alloc(Device device, std::size_t bytes) {
  if (device.is_cuda()) return cuda_malloc(device.index, bytes);
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  ATTN_CHECK(p != nullptr, "tensor: out of host memory allocating ", bytes, " bytes");
  return p;
}
void device_free(Device device, void* ptr) {
  if (device.is_cuda()) {
    cuda_free(device.index, ptr);
  } else {
    std::free(ptr);
  }
}

}  // namespace detail

namespace {

// Elements from the start of the view to row-major element `flat` of its shape, through its strides.
std::int64_t element_offset(const TensorView& t, std::int64_t flat) {
  std::int64_t off = 0;
  for (int d = t.ndim - 1; d >= 0; --d) {
    const std::int64_t n = t.shape[std::size_t(d)];
    off += (flat % n) * t.stride[std::size_t(d)];
    flat /= n;
  }
  return off;
}

}  // namespace

double read_element(const TensorView& t, std::int64_t flat) {
  const std::int64_t off = element_offset(t, flat);
  switch (t.dtype) {
    case DType::f32: return t.as<float>()[off];
    case DType::f16: return to_float(t.as<half_t>()[off]);
    case DType::bf16: return to_float(t.as<bfloat16_t>()[off]);
    case DType::f64: return t.as<double>()[off];
    case DType::i32: return t.as<std::int32_t>()[off];
    case DType::u8: return t.as<std::uint8_t>()[off];
  }
  return 0;
}

void write_element(const TensorView& t, std::int64_t flat, double value) {
  const std::int64_t off = element_offset(t, flat);
  switch (t.dtype) {
    case DType::f32: t.as<float>()[off] = float(value); break;
    case DType::f16: t.as<half_t>()[off] = to_half(float(value)); break;
    case DType::bf16: t.as<bfloat16_t>()[off] = to_bfloat16(float(value)); break;
    case DType::f64: t.as<double>()[off] = value; break;
    case DType::i32: t.as<std::int32_t>()[off] = std::int32_t(value); break;
    case DType::u8: t.as<std::uint8_t>()[off] = std::uint8_t(value); break;
  }
}

namespace {
void check_copy_shapes(const TensorView& dst, const TensorView& src) {
  ATTN_CHECK(dst.ndim == src.ndim, "copy: expected equal ranks, got ", dst.shape_str(), " and ", src.shape_str());
  for (int d = 0; d < dst.ndim; ++d)
    ATTN_CHECK(dst.shape[std::size_t(d)] == src.shape[std::size_t(d)], "copy: expected equal shapes, got ",
               dst.shape_str(), " and ", src.shape_str());
}
}  // namespace

void copy(const TensorView& dst, const TensorView& src) {
  check_copy_shapes(dst, src);
  ATTN_CHECK(dst.dtype == src.dtype, "copy: expected equal dtypes, got ", dtype_name(dst.dtype), " and ",
             dtype_name(src.dtype));
  if (dst.device.is_cuda() || src.device.is_cuda()) {
    ATTN_CHECK(dst.is_contiguous() && src.is_contiguous(), "copy: CUDA copies expect contiguous tensors");
    detail::cuda_memcpy(dst.data, src.data, dst.nbytes());
    return;
  }
  if (dst.is_contiguous() && src.is_contiguous()) {
    std::memcpy(dst.data, src.data, dst.nbytes());
    return;
  }
  const std::size_t es = dtype_size(dst.dtype);
  const std::int64_t n = dst.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t f = i, od = 0, os = 0;
    for (int d = dst.ndim - 1; d >= 0; --d) {
      const std::int64_t s = dst.shape[std::size_t(d)];
      od += (f % s) * dst.stride[std::size_t(d)];
      os += (f % s) * src.stride[std::size_t(d)];
      f /= s;
    }
    std::memcpy(static_cast<char*>(dst.data) + od * std::int64_t(es),
                static_cast<const char*>(src.data) + os * std::int64_t(es), es);
  }
}

Tensor convert(const TensorView& src, DType dtype) {
  ATTN_CHECK(src.device.is_cpu(), "convert: expected a cpu tensor, got ", src.device.str());
  Tensor out(std::span<const std::int64_t>(src.shape.data(), std::size_t(src.ndim)), dtype);
  const std::int64_t n = src.numel();
  for (std::int64_t i = 0; i < n; ++i) write_element(out.view(), i, read_element(src, i));
  return out;
}

}  // namespace attn
