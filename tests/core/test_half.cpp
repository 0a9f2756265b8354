#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

#include "attn/half.hpp"

namespace attn {
namespace {

TEST(Half, EveryF16RoundTrips) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const half_t h{std::uint16_t(b)};
    const float f = to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(to_float(to_half(f))));
      continue;
    }
    EXPECT_EQ(to_half(f).bits, h.bits) << "bits " << b;
  }
}

TEST(Half, RoundsToNearestEven) {
  // Halfway between 1 and the next f16 (1 + 2^-10) rounds to 1 (even); just above rounds up.
  EXPECT_EQ(to_float(to_half(1.0f + std::ldexp(1.0f, -11))), 1.0f);
  EXPECT_EQ(to_float(to_half(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20))), 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(to_float(to_half(65520.0f)), INFINITY);
  EXPECT_EQ(to_float(to_half(65519.0f)), 65504.0f);
  EXPECT_EQ(to_float(to_half(std::ldexp(1.0f, -25))), 0.0f);                  // halfway to the smallest subnormal
  EXPECT_EQ(to_float(to_half(std::ldexp(1.5f, -25))), std::ldexp(1.0f, -24));  // above halfway
}

TEST(BFloat16, RoundsToNearestEven) {
  EXPECT_EQ(to_float(to_bfloat16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(to_float(to_bfloat16(1.0f + std::ldexp(3.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(to_float(to_bfloat16(NAN))));
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = to_float(bfloat16_t{std::uint16_t(b)});
    if (!std::isnan(f)) {
      EXPECT_EQ(to_bfloat16(f).bits, b);
    }
  }
}

}  // namespace
}  // namespace attn
