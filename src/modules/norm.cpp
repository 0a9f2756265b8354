#include "attn/modules/norm.hpp"

#include <cmath>
#include <vector>

namespace attn::modules {
namespace {

void check_vector(const Tensor& t, const char* name, const char* field, std::int64_t dim) {
  ATTN_CHECK(t.defined() && t.dtype() == DType::f32 && t.view().ndim == 1 && t.size(0) == dim && t.device().is_cpu(),
             name, ".", field, ": expected a CPU f32 tensor (", dim, ")",
             t.defined() ? ", got " + std::string(dtype_name(t.dtype())) + " " + t.view().shape_str()
                         : std::string(", got none"));
}

void check_rows(const TensorView& x, std::int64_t dim) {
  ATTN_CHECK(x.defined() && x.dtype == DType::f32 && x.device.is_cpu() && x.is_contiguous(),
             "x: expected a contiguous CPU f32 tensor");
  ATTN_CHECK(x.size(-1) == dim, "x: expected last dimension ", dim, ", got ", x.size(-1));
}

Tensor like(const TensorView& x) { return Tensor(std::span<const std::int64_t>(x.shape.data(), std::size_t(x.ndim)), x.dtype); }

}  // namespace

void Norm::check(const char* name, std::int64_t d) const {
  check_vector(weight, name, "weight", d);
  if (bias.defined()) {
    ATTN_CHECK(kind == NormKind::layer_norm, name, ".bias: RMSNorm has no bias");
    check_vector(bias, name, "bias", d);
  }
  ATTN_CHECK(eps > 0.0f, name, ".eps: expected > 0, got ", eps);
}

Norm Norm::identity_weights(NormKind kind, std::int64_t d, float eps) {
  Norm n;
  n.kind = kind;
  n.eps = eps;
  n.weight = Tensor({d}, DType::f32);
  for (std::int64_t i = 0; i < d; ++i) n.weight.as<float>()[i] = 1.0f;
  if (kind == NormKind::layer_norm) {
    n.bias = Tensor({d}, DType::f32);
    for (std::int64_t i = 0; i < d; ++i) n.bias.as<float>()[i] = 0.0f;
  }
  return n;
}

Tensor apply_norm(const Norm& norm, const TensorView& x) {
  const std::int64_t d = norm.dim();
  norm.check("norm", d);
  check_rows(x, d);
  Tensor y = like(x);
  const float* w = norm.weight.as<float>();
  const float* b = norm.bias.defined() ? norm.bias.as<float>() : nullptr;
  const std::int64_t rows = x.numel() / d;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x.as<float>() + r * d;
    float* out = y.as<float>() + r * d;
    // Statistics in double: a row of 8K f32 values would otherwise lose ~3 digits of its variance.
    double mean = 0;
    if (norm.kind == NormKind::layer_norm) {
      for (std::int64_t i = 0; i < d; ++i) mean += in[i];
      mean /= double(d);
    }
    double sq = 0;
    for (std::int64_t i = 0; i < d; ++i) sq += (in[i] - mean) * (in[i] - mean);
    const double inv = 1.0 / std::sqrt(sq / double(d) + double(norm.eps));
    for (std::int64_t i = 0; i < d; ++i)
      out[i] = float((in[i] - mean) * inv) * w[i] + (b != nullptr ? b[i] : 0.0f);
  }
  return y;
}

void ResidualBlock::check(const char* name, std::int64_t d) const {
  if (style == ResidualStyle::scaled) {
    check_vector(alpha, name, "alpha", d);
  } else {
    norm.check(name, d);
  }
}

Tensor ResidualBlock::forward(const TensorView& x, const std::function<Tensor(const TensorView&)>& sublayer) const {
  const std::int64_t d = x.size(-1);
  check("residual", d);
  check_rows(x, d);
  const std::int64_t n = x.numel();
  // The sub-layer is caller code: its output is checked before it meets the residual stream.
  const auto checked = [&](const Tensor& f) {
    ATTN_CHECK(f.view().ndim == x.ndim && f.view().shape == x.shape && f.dtype() == DType::f32 && f.view().is_contiguous(),
               "sublayer: expected an f32 output of shape ",
               x.shape_str(), ", got ", dtype_name(f.dtype()), " ", f.view().shape_str());
    return f;
  };
  switch (style) {
    case ResidualStyle::post_norm: {
      Tensor sum = checked(sublayer(x));
      for (std::int64_t i = 0; i < n; ++i) sum.as<float>()[i] += x.as<float>()[i];
      return apply_norm(norm, sum);
    }
    case ResidualStyle::pre_norm: {
      Tensor y = checked(sublayer(apply_norm(norm, x)));
      for (std::int64_t i = 0; i < n; ++i) y.as<float>()[i] += x.as<float>()[i];
      return y;
    }
    case ResidualStyle::scaled: {
      Tensor y = checked(sublayer(x));
      const float* a = alpha.as<float>();
      for (std::int64_t i = 0; i < n; ++i) y.as<float>()[i] = x.as<float>()[i] + a[i % d] * y.as<float>()[i];
      return y;
    }
  }
  detail::fail("residual.style: unknown value ", int(style));
}

}  // namespace attn::modules
