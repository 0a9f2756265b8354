// The SIMD layer of every ISA this CPU supports: gemm against plain loops, exp2 accuracy,
// ISA selection and the thread pool.
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "attn/error.hpp"
#include "attn/half.hpp"
#include "cpu/isa.hpp"
#include "cpu/kernels.hpp"
#include "cpu/thread_pool.hpp"
#include "support/random.hpp"

namespace attn::cpu {
namespace {

std::vector<float> random_floats(std::size_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = nd(test::rng());
  return v;
}

void check_gemm(Isa isa, int M, int N, int K, bool accumulate, bool transpose_a) {
  const Kernels& k = kernels_for(isa);
  ASSERT_EQ(N % k.gemm_panel, 0);
  const int lda = (transpose_a ? M : K) + 3, ldb = N + 5, ldc = N + 7;  // strides wider than the rows
  const std::vector<float> A = random_floats(std::size_t(transpose_a ? K : M) * lda + 1);
  const std::vector<float> B = random_floats(std::size_t(K) * ldb + 1);
  std::vector<float> C = random_floats(std::size_t(M) * ldc + 1);
  const std::vector<float> C0 = C;
  k.gemm(M, N, K, A.data(), lda, B.data(), ldb, C.data(), ldc, accumulate, transpose_a);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < ldc; ++j) {
      if (j >= N) {
        ASSERT_EQ(C[i * ldc + j], C0[i * ldc + j]) << "wrote past column N";
        continue;
      }
      double want = accumulate ? C0[i * ldc + j] : 0.0, magnitude = std::abs(want);
      for (int e = 0; e < K; ++e) {
        const double a = transpose_a ? A[std::size_t(e) * lda + i] : A[std::size_t(i) * lda + e];
        want += a * B[std::size_t(e) * ldb + j];
        magnitude += std::abs(a * B[std::size_t(e) * ldb + j]);
      }
      ASSERT_NEAR(C[i * ldc + j], want, 1e-6 * magnitude + 1e-30)
          << isa_name(isa) << " M=" << M << " N=" << N << " K=" << K << " at " << i << "," << j;
    }
}

TEST(CpuSimd, GemmMatchesLoopsOnEveryIsa) {
  for (Isa isa : supported_isas()) {
    const int panel = kernels_for(isa).gemm_panel;
    for (bool acc : {false, true})
      for (bool ta : {false, true})
        for (int M : {1, 5, 6, 7, 13, 64})
          for (int K : {0, 1, 8, 64, 129}) check_gemm(isa, M, 2 * panel, K, acc, ta);
    check_gemm(isa, 64, 64, 128, false, false);
    check_gemm(isa, 63, 256, 64, true, true);
  }
}

TEST(CpuSimd, Exp2IsAccurateAndSafeOnEveryIsa) {
  std::vector<float> x;
  for (float v = -130.0f; v <= 20.0f; v += 0.0137f) x.push_back(v);
  const float inf = std::numeric_limits<float>::infinity();
  x.insert(x.end(), {-inf, -1e30f, -200.0f, 0.0f, -0.0f, 1e-8f, -1e-8f});
  for (Isa isa : supported_isas()) {
    std::vector<float> y(x.size(), std::numeric_limits<float>::quiet_NaN());
    kernels_for(isa).exp2(x.data(), y.data(), std::int64_t(x.size()));
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double want = std::exp2(double(x[i]));
      if (x[i] < -126.0f) {
        // Results below the smallest normal float may flush to 0.
        EXPECT_LE(y[i], 1.2e-38f) << isa_name(isa) << " x=" << x[i];
        EXPECT_GE(y[i], 0.0f) << isa_name(isa) << " x=" << x[i];
      } else {
        EXPECT_NEAR(y[i] / want, 1.0, 3e-7) << isa_name(isa) << " x=" << x[i];
      }
    }
  }
}

// Vec's f16 / bf16 loads and stores agree bit for bit with half.hpp's round-to-nearest-even
// conversions, ties, subnormals, overflow and infinities included (NaN excluded: kernels never
// produce it).
TEST(CpuSimd, StorageConversionsRoundToNearestEvenOnEveryIsa) {
  std::vector<float> x = random_floats(1000);
  for (float& v : x) v *= 100.0f;
  const float inf = std::numeric_limits<float>::infinity();
  x.insert(x.end(), {0.0f, -0.0f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256,
                     65504.0f, 65520.0f, 70000.0f, -1e9f, 6e-8f, 3e-8f, 1e-6f, -2.5e-5f, 1e-40f, inf, -inf,
                     3.3895314e38f});
  for (int extra = 0; extra < 7; ++extra) x.push_back(std::ldexp(1.0f + float(extra) / 7, -20 + extra));  // odd tail
  const std::int64_t n = std::int64_t(x.size());
  for (Isa isa : supported_isas()) {
    const Kernels& k = kernels_for(isa);
    std::vector<half_t> h(x.size());
    std::vector<bfloat16_t> b(x.size());
    std::vector<float> back_h(x.size()), back_b(x.size());
    k.f32_to_f16(x.data(), h.data(), n);
    k.f32_to_bf16(x.data(), b.data(), n);
    k.f16_to_f32(h.data(), back_h.data(), n);
    k.bf16_to_f32(b.data(), back_b.data(), n);
    for (std::size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(h[i].bits, to_half(x[i]).bits) << isa_name(isa) << " f16 of " << x[i];
      ASSERT_EQ(b[i].bits, to_bfloat16(x[i]).bits) << isa_name(isa) << " bf16 of " << x[i];
      ASSERT_EQ(float_bits(back_h[i]), float_bits(to_float(h[i]))) << isa_name(isa) << " f16 -> f32";
      ASSERT_EQ(float_bits(back_b[i]), float_bits(to_float(b[i]))) << isa_name(isa) << " bf16 -> f32";
    }
  }
}

TEST(CpuIsa, SelectsOnlySupportedSets) {
  const Isa before = active_isa();
  const std::vector<Isa> isas = supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::scalar);
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (cpu_supports(isa)) {
      set_isa(isa);
      EXPECT_EQ(active_isa(), isa);
    } else {
      EXPECT_THROW(set_isa(isa), Error);
    }
    EXPECT_EQ(parse_isa(isa_name(isa)), isa);
  }
  EXPECT_THROW(parse_isa("sse9"), Error);
  set_isa(before);
}

TEST(CpuThreadPool, VisitsEveryIndexOnceAndPropagatesExceptions) {
  const int before = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    EXPECT_EQ(num_threads(), threads);
    std::vector<std::atomic<int>> seen(1000);
    std::atomic<int> bad_thread{0};
    parallel_for(1000, [&](std::int64_t i, int t) {
      seen[std::size_t(i)].fetch_add(1);
      if (t < 0 || t >= threads) bad_thread.fetch_add(1);
      // A nested loop runs inline instead of deadlocking.
      parallel_for(3, [](std::int64_t, int) {});
    });
    for (auto& s : seen) EXPECT_EQ(s.load(), 1);
    EXPECT_EQ(bad_thread.load(), 0);
    EXPECT_THROW(parallel_for(100,
                              [](std::int64_t i, int) {
                                if (i == 37) throw std::runtime_error("task failed");
                              }),
                 std::runtime_error);
    // The pool still works after an exception.
    std::atomic<std::int64_t> sum{0};
    parallel_for(10, [&](std::int64_t i, int) { sum += i; });
    EXPECT_EQ(sum.load(), 45);
  }
  EXPECT_THROW(set_num_threads(0), Error);
  set_num_threads(before);
}

// Resizing between loops: every index of every loop visited once. (The hang fixed in
// thread_pool.cpp, a new worker taking the last loop's generation for a new one, needs a
// preemption inside a few instructions and does not show here reliably; `test_cpu
// --gtest_filter='CpuForward.DecodeSplitsKeys:CpuForward.GroupSizes' --gtest_repeat=150` hung
// within 12 rounds before the fix.)
TEST(CpuThreadPool, LoopsRightAfterResizingNeitherHangNorMiss) {
  const int before = num_threads();
  parallel_for(8, [](std::int64_t, int) {});  // a generation for new workers to see
  for (int round = 0; round < 600; ++round) {
    set_num_threads(1 + round % 3);
    // A varying pause lets the new workers start at every point of the next loop's set-up.
    std::this_thread::sleep_for(std::chrono::microseconds(round % 150));
    std::atomic<int> visits{0};
    parallel_for(64, [&](std::int64_t, int) { visits.fetch_add(1); });
    ASSERT_EQ(visits.load(), 64) << "round " << round;
  }
  set_num_threads(before);
}

}  // namespace
}  // namespace attn::cpu
