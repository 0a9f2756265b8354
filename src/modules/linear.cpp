#include "attn/modules/linear.hpp"

#include <vector>

#include "modules/matmul.hpp"

namespace attn::modules {

void Linear::check(const char* name, std::int64_t out, std::int64_t in) const {
  ATTN_CHECK(weight.defined() && weight.dtype() == DType::f32 && weight.view().ndim == 2 &&
                 weight.device().is_cpu(),
             name, ".weight: expected a CPU f32 tensor (", out, ", ", in, ")",
             weight.defined() ? ", got " + std::string(dtype_name(weight.dtype())) + " " + weight.view().shape_str()
                              : std::string(", got none"));
  ATTN_CHECK(weight.size(0) == out && weight.size(1) == in, name, ".weight: expected shape (", out, ", ", in,
             "), got ", weight.view().shape_str());
  if (!bias.defined()) return;
  ATTN_CHECK(bias.dtype() == DType::f32 && bias.view().ndim == 1 && bias.size(0) == out && bias.device().is_cpu(),
             name, ".bias: expected a CPU f32 tensor (", out, "), got ", dtype_name(bias.dtype()), " ",
             bias.view().shape_str());
}

Tensor linear(const Linear& layer, const TensorView& x) {
  const std::int64_t in = layer.in_features(), out = layer.out_features();
  layer.check("linear", out, in);
  ATTN_CHECK(x.defined() && x.dtype == DType::f32 && x.device.is_cpu() && x.is_contiguous(),
             "x: expected a contiguous CPU f32 tensor");
  ATTN_CHECK(x.size(-1) == in, "x: expected last dimension ", in, " (in_features), got ", x.size(-1));
  std::vector<std::int64_t> shape(x.shape.begin(), x.shape.begin() + x.ndim);
  shape.back() = out;
  Tensor y(shape, DType::f32);
  detail::matmul_abt(x.as<float>(), layer.weight.as<float>(), layer.bias.defined() ? layer.bias.as<float>() : nullptr,
                     y.as<float>(), x.numel() / in, in, out);
  return y;
}

TensorView reshape(const TensorView& t, std::initializer_list<std::int64_t> shape) {
  ATTN_CHECK(t.is_contiguous(), "reshape: expected a contiguous tensor, got strides of ", t.shape_str());
  std::int64_t n = 1;
  for (std::int64_t s : shape) n *= s;
  ATTN_CHECK(n == t.numel(), "reshape: ", t.shape_str(), " has ", t.numel(), " elements, not ", n);
  return TensorView::contiguous(t.data, t.dtype, shape, t.device);
}

}  // namespace attn::modules
