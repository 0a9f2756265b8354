// The CUDA MLA absorbed decode (head dims 576 / 512) against the float64 reference (cases in
// mla_check.cpp), plus the errors it must raise. Skips when no CUDA device is visible.
#include <gtest/gtest.h>

#include <ostream>
#include <random>
#include <string>

#include "attn/attention.hpp"
#include "cuda/mla_check.hpp"

namespace attn::test::cuda {
// Failure lines name the case instead of dumping its bytes.
void PrintTo(const MlaCase& c, std::ostream* os) { *os << c.name; }
}  // namespace attn::test::cuda

namespace attn {
namespace {

using test::cuda::MlaCase;

class CudaMla : public ::testing::TestWithParam<MlaCase> {};

TEST_P(CudaMla, MatchesReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::uint64_t seed = std::random_device{}();
  const test::cuda::CheckResult r = test::cuda::check_mla(GetParam(), seed);
  EXPECT_TRUE(r.passed) << r.detail << " (seed " << seed << ")";
}

INSTANTIATE_TEST_SUITE_P(All, CudaMla, ::testing::ValuesIn(test::cuda::mla_cases()),
                         [](const ::testing::TestParamInfo<MlaCase>& info) { return info.param.name; });

/// A padded latent cache (1, 70, 1, 576) with v its first 512 channels, one query of 16 heads.
struct MlaInputs {
  Tensor q, cache, other, out;
  ForwardArgs args;
  explicit MlaInputs(DType dt = DType::bf16) {
    q = Tensor({1, 1, 16, 576}, dt, Device::cuda());
    cache = Tensor({1, 70, 1, 576}, dt, Device::cuda());
    other = Tensor({1, 70, 1, 512}, dt, Device::cuda());
    out = Tensor({1, 1, 16, 512}, dt, Device::cuda());
    args.q = q;
    args.k = cache;
    TensorView v = cache.view();
    v.shape[3] = 512;
    args.v = v;
    args.out = out;
  }
};

void expect_error_naming(const ForwardArgs& args, const std::string& word) {
  try {
    attention_forward(args, Backend::cuda);
    FAIL() << "expected attn::Error naming " << word;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

TEST(CudaMlaErrors, ValuesMustBeAViewOfTheKeys) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  MlaInputs in;
  in.args.v = in.other;
  expect_error_naming(in.args, "v: ");
}

TEST(CudaMlaErrors, UnsupportedMasksAndSoftcap) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  MlaInputs in;
  in.args.params.mask.window_left = 8;
  expect_error_naming(in.args, "mask: ");
  in.args.params.mask.window_left = -1;
  in.args.params.softcap = 30.0f;
  expect_error_naming(in.args, "softcap: ");
}

TEST(CudaMlaErrors, F32IsAClearError) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  MlaInputs in(DType::f32);
  expect_error_naming(in.args, "f16 and bf16");
}

}  // namespace
}  // namespace attn
