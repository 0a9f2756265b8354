#include "support/random.hpp"

#include <cmath>
#include <cstdlib>
#include <limits>

#include <gtest/gtest.h>

#include "attn/error.hpp"

namespace attn::test {

std::mt19937_64& rng() {
  static std::mt19937_64 gen([] {
    const char* s = std::getenv("ATTN_TEST_SEED");
    return s != nullptr ? std::strtoull(s, nullptr, 10) : std::random_device{}();
  }());
  return gen;
}

Tensor randn(std::span<const std::int64_t> shape, DType dtype, double sigma) {
  Tensor t(shape, dtype);
  std::normal_distribution<double> nd(0.0, sigma);
  for (std::int64_t i = 0; i < t.numel(); ++i) write_element(t.view(), i, nd(rng()));
  return t;
}

Tensor randn(std::initializer_list<std::int64_t> shape, DType dtype, double sigma) {
  return randn(std::span<const std::int64_t>(shape.begin(), shape.size()), dtype, sigma);
}

Tensor to_f64(const TensorView& t) { return convert(t, DType::f64); }

void poison(const TensorView& t) {
  for (std::int64_t i = 0; i < t.numel(); ++i) write_element(t, i, std::numeric_limits<double>::quiet_NaN());
}

namespace {
// Returns false when a and b disagree in a way no tolerance can excuse.
bool comparable(double x, double y) {
  if (std::isnan(x) || std::isnan(y)) return false;
  if (std::isinf(x) || std::isinf(y)) return x == y;
  return true;
}
}  // namespace

double max_abs_diff(const TensorView& a, const TensorView& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double m = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double x = read_element(a, i), y = read_element(b, i);
    if (!comparable(x, y)) return std::numeric_limits<double>::infinity();
    if (std::isinf(x)) continue;
    m = std::max(m, std::abs(x - y));
  }
  return m;
}

double rel_l2(const TensorView& a, const TensorView& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double x = read_element(a, i), y = read_element(b, i);
    if (!comparable(x, y)) return std::numeric_limits<double>::infinity();
    if (std::isinf(x)) continue;
    num += (x - y) * (x - y);
    den += y * y;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

Tensor i32(const std::vector<std::int32_t>& values) {
  Tensor t({std::int64_t(values.size())}, DType::i32);
  for (std::size_t i = 0; i < values.size(); ++i) t.as<std::int32_t>()[i] = values[i];
  return t;
}

Tensor i32(std::initializer_list<std::int32_t> values) { return i32(std::vector<std::int32_t>(values)); }

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace attn::test
