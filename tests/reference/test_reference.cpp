// The oracle checked against facts that need no oracle: uniform scores, hand-made masks,
// and finite differences of its own forward.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "attn/attention.hpp"
#include "reference/reference.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using test::randn;

TEST(ReferenceMask, DesignTable) {
  Mask causal = Mask::causal_mask();
  // seqlen_q 2, seqlen_k 4: row 0 sits at position 2.
  EXPECT_TRUE(reference::mask_allows(causal, 0, 2, 2, 4, 0));
  EXPECT_FALSE(reference::mask_allows(causal, 0, 3, 2, 4, 0));
  Mask win = Mask::window(1, 0);
  EXPECT_TRUE(reference::mask_allows(win, 3, 2, 4, 4, 0));
  EXPECT_FALSE(reference::mask_allows(win, 3, 1, 4, 4, 0));
  Mask dil = Mask::window(2, 0);
  dil.dilation = 1;  // keys p, p-2, p-4
  EXPECT_TRUE(reference::mask_allows(dil, 6, 2, 8, 8, 0));
  EXPECT_FALSE(reference::mask_allows(dil, 6, 3, 8, 8, 0));
  EXPECT_FALSE(reference::mask_allows(dil, 6, 0, 8, 8, 0));
  Mask strided;
  strided.strided = 3;
  EXPECT_TRUE(reference::mask_allows(strided, 9, 6, 10, 10, 0));   // p - j = 3 <= l
  EXPECT_TRUE(reference::mask_allows(strided, 9, 0, 10, 10, 0));   // 9 % 3 == 0
  EXPECT_FALSE(reference::mask_allows(strided, 9, 2, 10, 10, 0));  // 7
  Mask fixed;
  fixed.fixed_stride = 4;
  fixed.fixed_summary = 1;
  EXPECT_TRUE(reference::mask_allows(fixed, 9, 8, 10, 10, 0));   // same block
  EXPECT_TRUE(reference::mask_allows(fixed, 9, 3, 10, 10, 0));   // summary column
  EXPECT_FALSE(reference::mask_allows(fixed, 9, 2, 10, 10, 0));
  Tensor g = test::i32({1});
  Mask glob = Mask::causal_mask();
  glob.window_left = 0;
  glob.window_right = 0;
  glob.global_tokens = g;
  EXPECT_TRUE(reference::mask_allows(glob, 5, 1, 8, 8, 0));   // global key
  EXPECT_TRUE(reference::mask_allows(glob, 1, 0, 8, 8, 0));   // global query
  EXPECT_FALSE(reference::mask_allows(glob, 1, 3, 8, 8, 0));  // causal still holds
  EXPECT_FALSE(reference::mask_allows(glob, 5, 2, 8, 8, 0));
}

TEST(Reference, ZeroQueriesAverageTheAllowedValues) {
  const int B = 2, S = 5, H = 2, D = 8;
  Tensor q({B, S, H, D}, DType::f64);
  for (std::int64_t i = 0; i < q.numel(); ++i) q.as<double>()[i] = 0.0;
  Tensor k = randn({B, S, H, D}, DType::f64), v = randn({B, S, H, D}, DType::f64);
  Tensor out({B, S, H, D}, DType::f64), lse({B, H, S}, DType::f64);
  ForwardArgs a{q, k, v, out, lse, {}, {}, {}};
  a.params.mask = Mask::causal_mask();
  attention_forward(a, Backend::reference);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < S; ++i)
      for (int h = 0; h < H; ++h) {
        for (int e = 0; e < D; ++e) {
          double mean = 0;
          for (int j = 0; j <= i; ++j) mean += v.as<double>()[((b * S + j) * H + h) * D + e];
          mean /= i + 1;
          EXPECT_NEAR(out.as<double>()[((b * S + i) * H + h) * D + e], mean, 1e-12);
        }
        EXPECT_NEAR(lse.as<double>()[(b * H + h) * S + i], std::log(double(i + 1)), 1e-12);
      }
}

TEST(Reference, FullyMaskedRowsGiveZeroAndMinusInf) {
  // seqlen_q > seqlen_k with causal: the first rows sit at negative positions.
  Tensor q = randn({1, 6, 1, 8}, DType::f64), k = randn({1, 3, 1, 8}, DType::f64), v = randn({1, 3, 1, 8}, DType::f64);
  Tensor out({1, 6, 1, 8}, DType::f64), lse({1, 1, 6}, DType::f64);
  ForwardArgs a{q, k, v, out, lse, {}, {}, {}};
  a.params.mask = Mask::causal_mask();
  attention_forward(a, Backend::reference);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(lse.as<double>()[i], -std::numeric_limits<double>::infinity());
    for (int e = 0; e < 8; ++e) EXPECT_EQ(out.as<double>()[i * 8 + e], 0.0);
  }
  EXPECT_TRUE(std::isfinite(lse.as<double>()[3]));
}

// Central differences of L = sum(out * dout) against the analytic backward.
void check_gradients(const Mask& mask, float softcap, int hq, int hk, int sq, int sk) {
  const int D = 8, Dv = 16;
  Tensor q = randn({1, sq, hq, D}, DType::f64), k = randn({1, sk, hk, D}, DType::f64);
  Tensor v = randn({1, sk, hk, Dv}, DType::f64), dout = randn({1, sq, hq, Dv}, DType::f64);
  Tensor out({1, sq, hq, Dv}, DType::f64), lse({1, hq, sq}, DType::f64);
  ForwardArgs f{q, k, v, out, lse, {}, {}, {}};
  f.params.mask = mask;
  f.params.softcap = softcap;
  f.params.scale = 0.7f;
  attention_forward(f, Backend::reference);
  Tensor dq({1, sq, hq, D}, DType::f64), dk({1, sk, hk, D}, DType::f64), dv({1, sk, hk, Dv}, DType::f64);
  BackwardArgs bw;
  bw.q = q; bw.k = k; bw.v = v; bw.out = out; bw.dout = dout; bw.lse = lse;
  bw.dq = dq; bw.dk = dk; bw.dv = dv; bw.params = f.params;
  attention_backward(bw, Backend::reference);

  auto loss = [&] {
    attention_forward(f, Backend::reference);
    double L = 0;
    for (std::int64_t i = 0; i < out.numel(); ++i) L += out.as<double>()[i] * dout.as<double>()[i];
    return L;
  };
  const double h = 1e-6;
  for (auto [x, g] : {std::pair{q, dq}, std::pair{k, dk}, std::pair{v, dv}}) {
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      double& xi = x.as<double>()[i];
      const double keep = xi;
      xi = keep + h;
      const double up = loss();
      xi = keep - h;
      const double down = loss();
      xi = keep;
      EXPECT_NEAR(g.as<double>()[i], (up - down) / (2 * h), 1e-6) << "element " << i;
    }
  }
}

TEST(Reference, BackwardMatchesFiniteDifferences) { check_gradients(Mask{}, 0.0f, 2, 2, 4, 5); }
TEST(Reference, BackwardCausalGqaGroup3) { check_gradients(Mask::causal_mask(), 0.0f, 3, 1, 5, 4); }
TEST(Reference, BackwardSoftcapWindow) { check_gradients(Mask::window(1, 1), 2.0f, 2, 1, 6, 6); }

TEST(Reference, VarlenEqualsSeparateCalls) {
  const int H = 2, D = 8;
  const std::vector<std::int32_t> lq = {3, 1, 4}, lk = {2, 5, 4};
  Tensor cq = test::i32({0, 3, 4, 8}), ck = test::i32({0, 2, 7, 11});
  Tensor q = randn({8, H, D}, DType::f64), k = randn({11, H, D}, DType::f64), v = randn({11, H, D}, DType::f64);
  Tensor out({8, H, D}, DType::f64), lse({H, 8}, DType::f64);
  ForwardArgs a{q, k, v, out, lse, cq, ck, {}};
  a.params.mask = Mask::causal_mask();
  attention_forward(a, Backend::reference);
  int oq = 0, ok = 0;
  for (std::size_t b = 0; b < lq.size(); ++b) {
    Tensor q1({1, lq[b], H, D}, DType::f64), k1({1, lk[b], H, D}, DType::f64), v1({1, lk[b], H, D}, DType::f64);
    std::copy_n(q.as<double>() + oq * H * D, lq[b] * H * D, q1.as<double>());
    std::copy_n(k.as<double>() + ok * H * D, lk[b] * H * D, k1.as<double>());
    std::copy_n(v.as<double>() + ok * H * D, lk[b] * H * D, v1.as<double>());
    Tensor o1({1, lq[b], H, D}, DType::f64), l1({1, H, lq[b]}, DType::f64);
    ForwardArgs a1{q1, k1, v1, o1, l1, {}, {}, a.params};
    attention_forward(a1, Backend::reference);
    for (int i = 0; i < lq[b] * H * D; ++i) EXPECT_EQ(o1.as<double>()[i], out.as<double>()[oq * H * D + i]);
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < lq[b]; ++i) EXPECT_EQ(l1.as<double>()[h * lq[b] + i], lse.as<double>()[h * 8 + oq + i]);
    oq += lq[b];
    ok += lk[b];
  }
}

TEST(Reference, RejectsBadShapesNamingTheArgument) {
  Tensor q = randn({1, 4, 2, 8}, DType::f32), k = randn({1, 4, 3, 8}, DType::f32), v = randn({1, 4, 3, 8}, DType::f32);
  Tensor out({1, 4, 2, 8}, DType::f32);
  ForwardArgs a{q, k, v, out, {}, {}, {}, {}};
  try {
    attention_forward(a, Backend::reference);
    FAIL() << "expected attn::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("heads_kv"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attn
