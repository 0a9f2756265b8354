// Bad input gets attn::Error naming the argument, before any work (DESIGN.md, "Errors").
#include <string>

#include <gtest/gtest.h>

#include "attn/attention.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using test::randn;

struct Case {
  Tensor q, k, v, out, lse;
  ForwardArgs args() const { return ForwardArgs{q, k, v, out, lse, {}, {}, {}}; }
};

Case make(int B = 1, int Sq = 4, int Sk = 5, int Hq = 4, int Hk = 2, int D = 16, int Dv = 16) {
  Case c;
  c.q = randn({B, Sq, Hq, D}, DType::f32);
  c.k = randn({B, Sk, Hk, D}, DType::f32);
  c.v = randn({B, Sk, Hk, Dv}, DType::f32);
  c.out = Tensor({B, Sq, Hq, Dv}, DType::f32);
  c.lse = Tensor({B, Hq, Sq}, DType::f32);
  return c;
}

// Runs the validation only (the reference backend validates like every backend, then computes).
void expect_error(const ForwardArgs& a, const std::string& needle, Backend backend = Backend::reference) {
  try {
    attention_forward(a, backend);
    ADD_FAILURE() << "expected attn::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("attn: ", 0), 0u) << e.what();
  }
}

TEST(Validate, Shapes) {
  Case c = make();
  ForwardArgs a = c.args();
  a.q = TensorView{};
  expect_error(a, "q: required");
  Tensor q3 = randn({4, 4, 16}, DType::f32);
  a = c.args();
  a.q = q3;
  expect_error(a, "q: expected 4 dimensions");
  Case bad_heads = make(1, 4, 5, 4, 3);
  expect_error(bad_heads.args(), "heads_kv");
  Case c2 = make();
  a = c2.args();
  Tensor k_wrong_d = randn({1, 5, 2, 8}, DType::f32);
  a.k = k_wrong_d;
  expect_error(a, "k: expected head_dim");
  Tensor out_wrong = Tensor({1, 3, 4, 16}, DType::f32);
  a = c2.args();
  a.out = out_wrong;
  expect_error(a, "out: expected seqlen_q");
  Tensor lse_wrong = Tensor({1, 4, 5}, DType::f32);
  a = c2.args();
  a.lse = lse_wrong;
  expect_error(a, "lse: expected shape");
}

TEST(Validate, DtypesAndStrides) {
  Case c = make();
  ForwardArgs a = c.args();
  Tensor k16 = randn({1, 5, 2, 16}, DType::f16);
  a.k = k16;
  expect_error(a, "k: expected dtype f32");
  a = c.args();
  TensorView strided = c.q.view();
  strided.stride[3] = 2;
  strided.shape[3] = 8;
  a.q = strided;
  expect_error(a, "unit stride");
}

TEST(Validate, HeadDimLimitsPerBackend) {
  Case c = make(1, 4, 5, 2, 2, 12, 12);
  expect_error(c.args(), "multiple of 8", Backend::cpu);
}

TEST(Validate, MaskParameters) {
  Case c = make();
  ForwardArgs a = c.args();
  a.params.mask.window_left = -2;
  expect_error(a, "window");
  a = c.args();
  a.params.mask.fixed_stride = 4;
  a.params.mask.fixed_summary = 5;
  expect_error(a, "fixed");
  a = c.args();
  Tensor layout({1, 1}, DType::u8);
  a.params.mask.block_layout = layout;
  a.params.mask.block_q = 2;
  a.params.mask.block_k = 2;
  expect_error(a, "block_layout: expected at least");
  a = c.args();
  Tensor g = test::i32({3, 1});
  a.params.mask.global_tokens = g;
  expect_error(a, "strictly increasing");
  a = c.args();
  a.params.softcap = -1.0f;
  expect_error(a, "softcap");
}

TEST(Validate, CuSeqlens) {
  Tensor q = randn({6, 2, 8}, DType::f32), k = randn({7, 2, 8}, DType::f32), v = randn({7, 2, 8}, DType::f32);
  Tensor out({6, 2, 8}, DType::f32);
  Tensor cq = test::i32({0, 4, 3}), ck = test::i32({0, 3, 7});
  ForwardArgs a{q, k, v, out, {}, cq, ck, {}};
  expect_error(a, "cu_seqlens_q: expected non-decreasing");
  Tensor cq2 = test::i32({0, 4, 9});
  a.cu_seqlens_q = cq2;
  expect_error(a, "cu_seqlens_q: last offset");
  a.cu_seqlens_k = TensorView{};
  a.cu_seqlens_q = test::i32({0, 6});
  expect_error(a, "both cu_seqlens_q and cu_seqlens_k");
}

TEST(Validate, BackwardNeedsLse) {
  Case c = make();
  BackwardArgs b;
  b.q = c.q; b.k = c.k; b.v = c.v; b.out = c.out; b.dout = c.out;
  Tensor dq({1, 4, 4, 16}, DType::f32), dk({1, 5, 2, 16}, DType::f32), dv({1, 5, 2, 16}, DType::f32);
  b.dq = dq; b.dk = dk; b.dv = dv;
  try {
    attention_backward(b, Backend::reference);
    ADD_FAILURE() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lse"), std::string::npos) << e.what();
  }
}

TEST(Validate, CudaWithoutCudaIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  Case c = make();
  try {
    attention_forward(c.args(), Backend::cuda);
    ADD_FAILURE() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attn
