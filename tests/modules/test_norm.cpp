// LayerNorm, RMSNorm and the three residual styles against their formulas written out in double.
#include <cmath>

#include <gtest/gtest.h>

#include "attn/modules/norm.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using modules::Norm;
using modules::NormKind;
using modules::ResidualBlock;
using modules::ResidualStyle;

/// The formula of the header, in double, for row r of x (rows, d).
std::vector<double> norm_row(const Norm& n, const Tensor& x, std::int64_t r) {
  const std::int64_t d = x.size(-1);
  const float* v = x.as<float>() + r * d;
  double mean = 0, ms = 0;
  for (std::int64_t i = 0; i < d; ++i) mean += v[i];
  mean /= double(d);
  if (n.kind == NormKind::rms_norm) mean = 0;
  for (std::int64_t i = 0; i < d; ++i) ms += (v[i] - mean) * (v[i] - mean);
  ms /= double(d);
  std::vector<double> y(static_cast<std::size_t>(d));
  for (std::int64_t i = 0; i < d; ++i)
    y[std::size_t(i)] = (v[i] - mean) / std::sqrt(ms + n.eps) * n.weight.as<float>()[i] +
                        (n.bias.defined() ? n.bias.as<float>()[i] : 0.0);
  return y;
}

Norm random_norm(NormKind kind, std::int64_t d) {
  Norm n;
  n.kind = kind;
  n.eps = 1e-5f;
  n.weight = test::randn({d}, DType::f32);
  if (kind == NormKind::layer_norm) n.bias = test::randn({d}, DType::f32);
  return n;
}

TEST(Norm, LayerNormAndRmsNormMatchTheFormulas) {
  for (NormKind kind : {NormKind::layer_norm, NormKind::rms_norm}) {
    const std::int64_t rows = 6, d = 40;
    const Norm n = random_norm(kind, d);
    // An offset of 3 makes LayerNorm's mean matter and RMSNorm's not cancel.
    Tensor x = test::randn({2, 3, d}, DType::f32);
    for (std::int64_t i = 0; i < x.numel(); ++i) x.as<float>()[i] += 3.0f;
    const Tensor y = modules::apply_norm(n, x);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::vector<double> want = norm_row(n, x, r);
      for (std::int64_t i = 0; i < d; ++i)
        EXPECT_NEAR(y.as<float>()[r * d + i], want[std::size_t(i)], 2e-6 * (1 + std::abs(want[std::size_t(i)])))
            << (kind == NormKind::layer_norm ? "layer_norm" : "rms_norm") << " row " << r << " col " << i;
    }
  }
}

TEST(ResidualBlock, ThreeStylesMatchTheFormulas) {
  const std::int64_t d = 16;
  const Tensor x = test::randn({3, d}, DType::f32);
  // A sub-layer with a known form: f(x) = 2x + 1 elementwise.
  const auto f = [](const TensorView& in) {
    Tensor out({in.size(0), in.size(1)}, DType::f32);
    for (std::int64_t i = 0; i < in.numel(); ++i) out.as<float>()[i] = 2.0f * in.as<float>()[i] + 1.0f;
    return out;
  };
  const Norm n = random_norm(NormKind::layer_norm, d);

  ResidualBlock post{ResidualStyle::post_norm, n, {}};
  Tensor sum({3, d}, DType::f32);
  for (std::int64_t i = 0; i < x.numel(); ++i) sum.as<float>()[i] = 3.0f * x.as<float>()[i] + 1.0f;
  const Tensor y_post = post.forward(x, f);
  for (std::int64_t r = 0; r < 3; ++r) {
    const std::vector<double> want = norm_row(n, sum, r);
    for (std::int64_t i = 0; i < d; ++i) EXPECT_NEAR(y_post.as<float>()[r * d + i], want[std::size_t(i)], 1e-5);
  }

  ResidualBlock pre{ResidualStyle::pre_norm, n, {}};
  const Tensor y_pre = pre.forward(x, f);
  for (std::int64_t r = 0; r < 3; ++r) {
    const std::vector<double> nx = norm_row(n, x, r);
    for (std::int64_t i = 0; i < d; ++i)
      EXPECT_NEAR(y_pre.as<float>()[r * d + i], x.as<float>()[r * d + i] + 2.0 * nx[std::size_t(i)] + 1.0, 1e-5);
  }

  ResidualBlock scaled{ResidualStyle::scaled, {}, test::randn({d}, DType::f32)};
  const Tensor y_scaled = scaled.forward(x, f);
  for (std::int64_t r = 0; r < 3; ++r)
    for (std::int64_t i = 0; i < d; ++i) {
      const double xi = x.as<float>()[r * d + i];
      EXPECT_NEAR(y_scaled.as<float>()[r * d + i], xi + scaled.alpha.as<float>()[i] * (2.0 * xi + 1.0), 1e-5);
    }
  // ReZero's initial state: alpha = 0 makes the block the identity.
  for (std::int64_t i = 0; i < d; ++i) scaled.alpha.as<float>()[i] = 0.0f;
  const Tensor y_id = scaled.forward(x, f);
  for (std::int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(y_id.as<float>()[i], x.as<float>()[i]);
}

TEST(Norm, BadArgumentsAreNamed) {
  Norm rms = random_norm(NormKind::rms_norm, 8);
  rms.bias = test::randn({8}, DType::f32);
  EXPECT_NE(test::error_of([&] { rms.check("norm", 8); }).find("norm.bias"), std::string::npos);
  Norm ln = random_norm(NormKind::layer_norm, 8);
  ln.eps = 0.0f;
  EXPECT_NE(test::error_of([&] { ln.check("norm", 8); }).find("norm.eps"), std::string::npos);
  const Tensor x = test::randn({2, 7}, DType::f32);
  EXPECT_NE(test::error_of([&] { modules::apply_norm(random_norm(NormKind::layer_norm, 8), x); }).find("x:"),
            std::string::npos);
  ResidualBlock scaled{ResidualStyle::scaled, {}, test::randn({3}, DType::f32)};
  EXPECT_NE(test::error_of([&] { scaled.forward(x, [](const TensorView& t) { return Tensor({t.size(0), t.size(1)}, DType::f32); }); })
                .find("residual.alpha"),
            std::string::npos);
  ResidualBlock pre{ResidualStyle::pre_norm, random_norm(NormKind::rms_norm, 7), {}};
  EXPECT_NE(test::error_of([&] { pre.forward(x, [](const TensorView&) { return Tensor({1, 7}, DType::f32); }); })
                .find("sublayer"),
            std::string::npos);
}

}  // namespace
}  // namespace attn
