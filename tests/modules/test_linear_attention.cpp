// Linear attention three ways (non-causal, causal prefix sums, recurrent state) against the
// float64 quadratic form.
#include <gtest/gtest.h>

#include "attn/modules/linear_attention.hpp"
#include "reference/linear_attention.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

Tensor quadratic64(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  Tensor out({q.size(0), q.size(1), q.size(2), v.size(3)}, DType::f64);
  test::poison(out);
  reference::linear_attention(test::to_f64(q), test::to_f64(k), test::to_f64(v), out, causal);
  return out;
}

struct Shape {
  int batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, head_dim_v;
};

class LinearAttention : public ::testing::TestWithParam<Shape> {};

TEST_P(LinearAttention, ParallelFormsMatchTheQuadraticForm) {
  const Shape s = GetParam();
  const Tensor q = test::randn({s.batch, s.seqlen_q, s.heads, s.head_dim}, DType::f32);
  const Tensor k = test::randn({s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, DType::f32);
  const Tensor v = test::randn({s.batch, s.seqlen_k, s.heads_kv, s.head_dim_v}, DType::f32);
  for (bool causal : {false, true}) {
    Tensor out({s.batch, s.seqlen_q, s.heads, s.head_dim_v}, DType::f32);
    test::poison(out);
    modules::linear_attention(q, k, v, out, causal);
    EXPECT_LT(test::max_abs_diff(out, quadratic64(q, k, v, causal)), 2e-5) << (causal ? "causal" : "non-causal");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearAttention,
                         ::testing::Values(Shape{2, 33, 33, 2, 2, 16, 8}, Shape{1, 20, 20, 4, 1, 8, 12},
                                           Shape{2, 5, 17, 6, 3, 12, 4},    // decode-like: Sq < Sk
                                           Shape{1, 9, 4, 2, 2, 8, 8}));    // Sq > Sk: first rows see no key

TEST(LinearAttentionState, RecurrentDecodeMatchesTheCausalQuadraticForm) {
  const int B = 2, S = 24, H = 4, Hk = 2, D = 8, Dv = 12;
  const Tensor q = test::randn({B, S, H, D}, DType::f32), k = test::randn({B, S, Hk, D}, DType::f32);
  const Tensor v = test::randn({B, S, Hk, Dv}, DType::f32);
  const Tensor want = quadratic64(q, k, v, true);
  modules::LinearAttentionState state(B, Hk, D, Dv);
  Tensor out({B, S, H, Dv}, DType::f32);
  test::poison(out);
  // Chunks of 1, 5 and the rest: the state is the same whatever the chunking.
  int first = 0;
  for (int len : {1, 5, S - 6}) {
    const auto slice = [&](const Tensor& t) {
      TensorView view = t.view();
      view.data = t.as<float>() + first * view.stride[1];
      view.shape[1] = len;
      return view;
    };
    state.step(slice(q), slice(k), slice(v), slice(out));
    first += len;
  }
  EXPECT_LT(test::max_abs_diff(out, want), 2e-5);
  EXPECT_EQ(state.bytes_per_sequence(), std::int64_t(Hk) * (D * Dv + D) * 4);
  state.reset(0);
  Tensor one({B, 1, H, Dv}, DType::f32);
  TensorView q0 = q.view(), k0 = k.view(), v0 = v.view();
  q0.shape[1] = k0.shape[1] = v0.shape[1] = 1;
  state.step(q0, k0, v0, one);
  // Sequence 0 restarted: its first output is v_0 again (one key, weight 1).
  for (int h = 0; h < H; ++h)
    for (int e = 0; e < Dv; ++e) EXPECT_NEAR(one.as<float>()[h * Dv + e], v.as<float>()[(h / 2) * Dv + e], 1e-6);
}

TEST(LinearAttention, BadShapesNameTheArgument) {
  const Tensor q = test::randn({1, 4, 3, 8}, DType::f32), k = test::randn({1, 4, 2, 8}, DType::f32);
  const Tensor v = test::randn({1, 4, 2, 8}, DType::f32);
  Tensor out({1, 4, 3, 8}, DType::f32);
  try {
    modules::linear_attention(q, k, v, out, true);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("heads_kv"), std::string::npos) << e.what();
  }
  const Tensor k_bad = test::randn({1, 4, 3, 6}, DType::f32), v3 = test::randn({1, 4, 3, 8}, DType::f32);
  try {
    modules::linear_attention(q, k_bad, v3, out, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k:"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attn
