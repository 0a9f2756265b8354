// TensorView (a non-owning strided view) and Tensor (owning, aligned storage).
//
// Strides are in elements, not bytes. Kernels require a unit stride in the last dimension.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attn/device.hpp"
#include "attn/dtype.hpp"
#include "attn/error.hpp"

namespace attn {

inline constexpr int kMaxDims = 6;

/// Pointer + shape + strides + dtype + device. Never owns its memory.
/// An undefined view (`!defined()`) stands for an optional argument left out.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device{};
  int ndim = 0;
  std::array<std::int64_t, kMaxDims> shape{};
  std::array<std::int64_t, kMaxDims> stride{};

  bool defined() const { return ndim > 0; }
  /// Size of dimension d; negative d counts from the end.
  std::int64_t size(int d) const { return shape[std::size_t(d < 0 ? d + ndim : d)]; }
  std::int64_t stride_of(int d) const { return stride[std::size_t(d < 0 ? d + ndim : d)]; }
  std::int64_t numel() const;
  bool is_contiguous() const;
  std::size_t nbytes() const { return std::size_t(numel()) * dtype_size(dtype); }
  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
  /// "(2, 16, 8, 64)".
  std::string shape_str() const;

  /// A row-major (contiguous) view of `data`.
  static TensorView contiguous(void* data, DType dtype, std::span<const std::int64_t> shape,
                               Device device = Device::cpu());
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                               Device device = Device::cpu()) {
    return contiguous(data, dtype, std::span<const std::int64_t>(shape.begin(), shape.size()), device);
  }
};

/// Owning tensor with row-major strides. CPU memory is 64-byte aligned; CUDA memory comes
/// from cudaMalloc (only when the CUDA backend is built). Copyable views, shared storage.
class Tensor {
 public:
  Tensor() = default;
  Tensor(std::span<const std::int64_t> shape, DType dtype, Device device = Device::cpu());
  Tensor(std::initializer_list<std::int64_t> shape, DType dtype, Device device = Device::cpu())
      : Tensor(std::span<const std::int64_t>(shape.begin(), shape.size()), dtype, device) {}

  const TensorView& view() const { return view_; }
  operator TensorView() const { return view_; }  // NOLINT(google-explicit-constructor)
  bool defined() const { return view_.defined(); }
  void* data() const { return view_.data; }
  template <class T>
  T* as() const {
    return view_.as<T>();
  }
  DType dtype() const { return view_.dtype; }
  Device device() const { return view_.device; }
  std::int64_t size(int d) const { return view_.size(d); }
  std::int64_t numel() const { return view_.numel(); }
  std::size_t nbytes() const { return view_.nbytes(); }

 private:
  std::shared_ptr<void> storage_;
  TensorView view_;
};

/// Copies between views of the same shape and dtype, on any devices (strided on the CPU;
/// CUDA copies need contiguous views).
void copy(const TensorView& dst, const TensorView& src);

/// Converts a CPU view of any float dtype into a new contiguous CPU tensor of `dtype`
/// (rounding to nearest even).
Tensor convert(const TensorView& src, DType dtype);

/// Reads / writes element `index` (row-major flat index over the view's shape) of a CPU view as double.
double read_element(const TensorView& t, std::int64_t flat_index);
void write_element(const TensorView& t, std::int64_t flat_index, double value);

namespace detail {
void* device_alloc(Device device, std::size_t bytes);
void device_free(Device device, void* ptr);
}  // namespace detail

}  // namespace attn
