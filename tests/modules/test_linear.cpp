// The f32 projection (tiles, remainders, threads) against double.
#include <cmath>

#include <gtest/gtest.h>

#include "attn/modules/linear.hpp"
#include "modules/double_compose.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

TEST(Linear, MatchesDoubleForOddSizesAndThreadedSplits) {
  struct Size {
    std::int64_t rows, in, out;
    bool bias;
  };
  // Remainders of every tile dimension, decode (one row), and sizes big enough to use threads.
  for (const Size s : {Size{1, 7, 3, true}, Size{5, 13, 9, false}, Size{67, 133, 70, true}, Size{1, 512, 1000, true},
                       Size{130, 256, 200, false}}) {
    modules::Linear l;
    l.weight = test::randn({s.out, s.in}, DType::f32);
    if (s.bias) l.bias = test::randn({s.out}, DType::f32);
    const Tensor x = test::randn({s.rows, s.in}, DType::f32);
    const Tensor y = modules::linear(l, x);
    const test::Mat want = test::linear64(test::to_mat(x), l);
    // f32 dot products of length `in`: error grows like sqrt(in) ulps of the terms' size.
    double worst = 0;
    for (std::int64_t i = 0; i < y.numel(); ++i)
      worst = std::max(worst, std::abs(y.as<float>()[i] - want.a[std::size_t(i)]));
    EXPECT_LT(worst, 1e-5 * std::sqrt(double(s.in)) * 4) << s.rows << "x" << s.in << "x" << s.out;
  }
}

TEST(Linear, BadShapesNameTheArgument) {
  modules::Linear l;
  l.weight = test::randn({4, 8}, DType::f32);
  const Tensor x = test::randn({2, 7}, DType::f32);
  EXPECT_THROW(modules::linear(l, x), Error);
  l.bias = test::randn({5}, DType::f32);
  try {
    l.check("proj", 4, 8);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("proj.bias"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attn
