// The CUDA backward against the float64 reference (cases in backward_check.cpp), determinism,
// and the errors the backend must raise. Skips when no CUDA device is visible.
#include <gtest/gtest.h>

#include <ostream>
#include <random>

#include "attn/attention.hpp"
#include "cuda/backward_check.hpp"

namespace attn::test::cuda {
// Failure lines name the case instead of dumping its bytes.
void PrintTo(const BwdCase& c, std::ostream* os) { *os << c.name; }
}  // namespace attn::test::cuda

namespace attn {
namespace {

using test::cuda::BwdCase;

class CudaBackward : public ::testing::TestWithParam<BwdCase> {};

TEST_P(CudaBackward, MatchesReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::uint64_t seed = std::random_device{}();
  // Deterministic cases also run twice and compare bitwise.
  const test::cuda::CheckResult r = test::cuda::check_backward(GetParam(), seed, GetParam().deterministic);
  EXPECT_TRUE(r.passed) << r.detail << " (seed " << seed << ")";
}

INSTANTIATE_TEST_SUITE_P(All, CudaBackward, ::testing::ValuesIn(test::cuda::backward_cases()),
                         [](const ::testing::TestParamInfo<BwdCase>& info) { return info.param.name; });

struct BackwardInputs {
  Tensor q, k, v, out, dout, lse, dq, dk, dv;
  BackwardArgs args;
  BackwardInputs(DType dt, int d, int dv_dim) {
    q = Tensor({1, 16, 2, d}, dt, Device::cuda());
    k = Tensor({1, 16, 2, d}, dt, Device::cuda());
    v = Tensor({1, 16, 2, dv_dim}, dt, Device::cuda());
    out = Tensor({1, 16, 2, dv_dim}, dt, Device::cuda());
    dout = Tensor({1, 16, 2, dv_dim}, dt, Device::cuda());
    lse = Tensor({1, 2, 16}, DType::f32, Device::cuda());
    dq = Tensor({1, 16, 2, d}, dt, Device::cuda());
    dk = Tensor({1, 16, 2, d}, dt, Device::cuda());
    this->dv = Tensor({1, 16, 2, dv_dim}, dt, Device::cuda());
    args.q = q;
    args.k = k;
    args.v = v;
    args.out = out;
    args.dout = dout;
    args.lse = lse;
    args.dq = dq;
    args.dk = dk;
    args.dv = this->dv;
  }
};

TEST(CudaBackwardErrors, UnsupportedHeadDimNamesIt) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  BackwardInputs in(DType::bf16, 80, 80);
  try {
    attention_backward(in.args, Backend::cuda);
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
}

TEST(CudaBackwardErrors, F32IsAClearError) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  BackwardInputs in(DType::f32, 64, 64);
  try {
    attention_backward(in.args, Backend::cuda);
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f16 and bf16"), std::string::npos) << e.what();
  }
}

TEST(CudaBackwardErrors, TooSmallWorkspaceIsAnError) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  BackwardInputs in(DType::bf16, 64, 64);
  const std::size_t need = attention_backward_workspace_size(in.args, Backend::cuda);
  ASSERT_GT(need, 0u);
  Tensor ws({std::int64_t(need / 2)}, DType::u8, Device::cuda());
  EXPECT_THROW(attention_backward(in.args, Workspace{ws.data(), need / 2}, Backend::cuda), Error);
}

}  // namespace
}  // namespace attn
