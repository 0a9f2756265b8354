// The CUDA forward against the float64 reference (cases in forward_check.cpp), plus the
// errors the backend must raise. Skips when no CUDA device is visible.
#include <gtest/gtest.h>

#include <ostream>
#include <random>

#include "attn/attention.hpp"
#include "cuda/backend.hpp"
#include "cuda/forward_check.hpp"

namespace attn::test::cuda {
// Failure lines name the case instead of dumping its bytes.
void PrintTo(const FwdCase& c, std::ostream* os) { *os << c.name; }
}  // namespace attn::test::cuda

namespace attn {
namespace {

using test::cuda::FwdCase;

class CudaForward : public ::testing::TestWithParam<FwdCase> {};

TEST_P(CudaForward, MatchesReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::uint64_t seed = std::random_device{}();
  const test::cuda::CheckResult r = test::cuda::check_forward(GetParam(), seed);
  EXPECT_TRUE(r.passed) << r.detail << " (seed " << seed << ")";
}

INSTANTIATE_TEST_SUITE_P(All, CudaForward, ::testing::ValuesIn(test::cuda::forward_cases()),
                         [](const ::testing::TestParamInfo<FwdCase>& info) { return info.param.name; });

struct DeviceInputs {
  Tensor q, k, v, out;
  ForwardArgs args;
  explicit DeviceInputs(DType dt, int d = 64) {
    q = Tensor({1, 16, 2, d}, dt, Device::cuda());
    k = Tensor({1, 16, 2, d}, dt, Device::cuda());
    v = Tensor({1, 16, 2, d}, dt, Device::cuda());
    out = Tensor({1, 16, 2, d}, dt, Device::cuda());
    args.q = q;
    args.k = k;
    args.v = v;
    args.out = out;
  }
};

TEST(CudaForwardErrors, F32IsAClearError) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  DeviceInputs in(DType::f32);
  try {
    attention_forward(in.args, Backend::cuda);
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f16 and bf16"), std::string::npos) << e.what();
  }
}

TEST(CudaForwardErrors, UnsupportedHeadDim) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  DeviceInputs in(DType::bf16, 80);
  EXPECT_THROW(attention_forward(in.args, Backend::cuda), Error);
}

TEST(CudaForwardErrors, MisalignedRowsAreAnError) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  DeviceInputs in(DType::bf16);
  // A token stride of 130 elements is legal but leaves rows off the 16-byte grid.
  Tensor big({1, 16, 130}, DType::bf16, Device::cuda());
  TensorView q = in.args.q;
  q.data = big.data();
  q.stride = {16 * 130, 130, 64, 1};
  in.args.q = q;
  EXPECT_THROW(attention_forward(in.args, Backend::cuda), Error);
}

#if defined(ATTN_WITH_CUDA)
TEST(CudaForwardErrors, BackwardIsNotThereYet) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  detail::BackwardProblem p;
  EXPECT_EQ(cuda::backward_workspace_size(p), 0u);
  EXPECT_THROW(cuda::backward(p, Workspace{}), Error);
}
#endif

}  // namespace
}  // namespace attn
