// RoPE facts that need no oracle: position 0 is the identity, norms are kept, scores depend only
// on the distance between positions, features past rotary_dim are untouched.
#include <cmath>

#include <gtest/gtest.h>

#include "attn/modules/rope.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using modules::RopeConfig;
using modules::RopeStyle;

double dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return s;
}

TEST(Rope, RelativePositionsIdentityAndPassThrough) {
  const int D = 16;
  for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
    const RopeConfig rope{12, 10000.0, style};
    // Two copies of the same q and k, rotated at positions (m, n) and (m + 1000, n + 1000).
    const Tensor q = test::randn({2, 1, D}, DType::f32), k = test::randn({2, 1, D}, DType::f32);
    for (int i = 0; i < D; ++i) {
      q.as<float>()[D + i] = q.as<float>()[i];
      k.as<float>()[D + i] = k.as<float>()[i];
    }
    const Tensor q0 = test::randn({1, 1, D}, DType::f32);
    std::vector<float> before(q0.as<float>(), q0.as<float>() + D), k_before(k.as<float>(), k.as<float>() + D);
    const std::vector<std::int64_t> qpos{7, 1007}, kpos{3, 1003}, zero{0};
    modules::apply_rope(q, qpos, rope);
    modules::apply_rope(k, kpos, rope);
    modules::apply_rope(q0, zero, rope);
    EXPECT_NEAR(dot(q.as<float>(), k.as<float>(), D), dot(q.as<float>() + D, k.as<float>() + D, D), 1e-4);
    EXPECT_NEAR(dot(k.as<float>(), k.as<float>(), D), dot(k_before.data(), k_before.data(), D), 1e-4);
    for (int i = 0; i < D; ++i) EXPECT_EQ(q0.as<float>()[i], before[std::size_t(i)]) << "position 0";
    for (int i = 12; i < D; ++i) EXPECT_EQ(k.as<float>()[i], k_before[std::size_t(i)]) << "past rotary_dim";
  }
}

TEST(Rope, BadArgumentsAreNamed) {
  const Tensor x = test::randn({2, 1, 8}, DType::f32);
  const std::vector<std::int64_t> one{0}, two{0, 0};
  try {
    modules::apply_rope(x, one, RopeConfig{});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("positions"), std::string::npos) << e.what();
  }
  RopeConfig inverted{};
  inverted.scaling = {modules::RopeScaling::Kind::llama3, 8.0, 4.0, 1.0, 8192};
  try {
    modules::apply_rope(x, two, inverted);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope.scaling"), std::string::npos) << e.what();
  }
  try {
    modules::apply_rope(x, two, RopeConfig{0, 0.5});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope.base"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attn
