// cpu::matmul_abt (y = x W^T + b) against a float64 product, on every ISA this CPU supports,
// with one and two threads, in both forms (dot products below 32 rows, packed tiles above).
// Shapes: 1, and sizes that are not multiples of the vector, the gemm panel, the 64-row block
// of W, the 96-row C tile or the 256-deep slice. Leading dimensions exceed the
// rows so padding must stay untouched. Tolerance per element: the f32 dot-product bound
// K * 2^-24 * (sum |x_k w_k| + |b|), doubled.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cpu/cpu_cases.hpp"
#include "cpu/matmul.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

struct Shape {
  std::int64_t M, N, K;
};

void check(const Shape& s, bool with_bias) {
  const std::int64_t ldx = s.K + 3, ldw = s.K + 5, ldy = s.N + 2;
  const Tensor x = test::randn({s.M, ldx}, DType::f32), w = test::randn({s.N, ldw}, DType::f32);
  const Tensor b = test::randn({s.N}, DType::f32);
  const float* bias = with_bias ? b.as<float>() : nullptr;
  std::vector<double> want(std::size_t(s.M * s.N)), bound(want.size());
  for (std::int64_t i = 0; i < s.M; ++i)
    for (std::int64_t j = 0; j < s.N; ++j) {
      double sum = bias != nullptr ? bias[j] : 0.0, size = std::abs(sum);
      for (std::int64_t k = 0; k < s.K; ++k) {
        const double p = double(x.as<float>()[i * ldx + k]) * double(w.as<float>()[j * ldw + k]);
        sum += p;
        size += std::abs(p);
      }
      want[std::size_t(i * s.N + j)] = sum;
      bound[std::size_t(i * s.N + j)] = 2 * double(s.K + 1) * std::ldexp(size, -24);
    }
  Tensor y({s.M, ldy}, DType::f32);
  test::for_each_isa_and_threads({1, 2}, [&](cpu::Isa, const std::string& where) {
    test::poison(y);
    std::vector<std::byte> ws(cpu::matmul_workspace_bytes(s.M, s.K, cpu::num_threads()));
    cpu::matmul_abt(s.M, s.N, s.K, x.as<float>(), ldx, w.as<float>(), ldw, bias, y.as<float>(), ldy,
                    {ws.data(), ws.size()});
    int reported = 0;
    for (std::int64_t i = 0; i < s.M; ++i)
      for (std::int64_t j = 0; j < ldy; ++j) {
        const double got = y.as<float>()[i * ldy + j];
        const bool ok = j < s.N ? std::abs(got - want[std::size_t(i * s.N + j)]) <= bound[std::size_t(i * s.N + j)]
                                : std::isnan(got);
        if (!ok && reported++ < 5)
          ADD_FAILURE() << where << " M=" << s.M << " N=" << s.N << " K=" << s.K << " y(" << i << ", " << j
                        << "): got " << got << (j < s.N ? ", want " + std::to_string(want[std::size_t(i * s.N + j)])
                                                        : std::string(", want the padding untouched"));
      }
  });
}

TEST(CpuMatmul, OddShapesAgainstDouble) {
  for (const Shape& s : {Shape{1, 1, 1}, Shape{1, 67, 300}, Shape{7, 1, 5}, Shape{97, 65, 257}, Shape{5, 130, 1},
                         Shape{200, 33, 513}, Shape{13, 129, 64}, Shape{4, 3, 0}})
    for (bool with_bias : {true, false}) check(s, with_bias);
}

// Many rows, few columns of W: the rows split into chunks so both threads get work.
TEST(CpuMatmul, TallAndNarrow) { check({700, 17, 40}, true); }

// A workspace for one thread serves a pool of two (the call uses the threads it covers); a
// smaller one is refused before anything is written.
TEST(CpuMatmul, WorkspaceForFewerThreadsAndTooSmall) {
  test::RestoreCpuSettings restore;
  cpu::set_num_threads(2);
  const Tensor x = test::randn({300, 40}, DType::f32), w = test::randn({150, 40}, DType::f32);
  Tensor y({300, 150}, DType::f32), want({300, 150}, DType::f32);
  std::vector<std::byte> big(cpu::matmul_workspace_bytes(300, 40, 2)), one(cpu::matmul_workspace_bytes(300, 40, 1));
  cpu::matmul_abt(300, 150, 40, x.as<float>(), 40, w.as<float>(), 40, nullptr, want.as<float>(), 150,
                  {big.data(), big.size()});
  test::poison(y);
  cpu::matmul_abt(300, 150, 40, x.as<float>(), 40, w.as<float>(), 40, nullptr, y.as<float>(), 150,
                  {one.data(), one.size()});
  EXPECT_EQ(test::max_abs_diff(y, want), 0.0);
  test::poison(y);
  EXPECT_THROW(cpu::matmul_abt(300, 150, 40, x.as<float>(), 40, w.as<float>(), 40, nullptr, y.as<float>(), 150,
                               {one.data(), one.size() - 1}),
               Error);
  for (std::int64_t i = 0; i < y.numel(); ++i) ASSERT_TRUE(std::isnan(y.as<float>()[i])) << "element " << i;
}

}  // namespace
}  // namespace attn
