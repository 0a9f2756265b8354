// MLA: expanded and absorbed paths against a float64 composition and against each other,
// decode after prefill against one pass over the whole sequence, and the cache footprint.
#include <cmath>

#include <gtest/gtest.h>

#include "attn/modules/mla.hpp"
#include "modules/double_compose.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using modules::Linear;
using modules::MLAConfig;
using modules::MLAPath;
using modules::MultiHeadLatentAttention;
using modules::Norm;
using modules::NormKind;
using test::Mat;

Linear random_linear(std::int64_t out, std::int64_t in, bool bias = false) {
  Linear l;
  l.weight = test::randn({out, in}, DType::f32, 1.0 / std::sqrt(double(in)));
  if (bias) l.bias = test::randn({out}, DType::f32, 0.3);
  return l;
}

Norm random_norm(NormKind kind, std::int64_t d) {
  Norm n;
  n.kind = kind;
  n.eps = 1e-6f;
  n.weight = test::randn({d}, DType::f32, 0.5);
  for (std::int64_t i = 0; i < d; ++i) n.weight.as<float>()[i] += 1.0f;
  if (kind == NormKind::layer_norm) n.bias = test::randn({d}, DType::f32, 0.2);
  return n;
}

MultiHeadLatentAttention random_mla(const MLAConfig& c) {
  const std::int64_t h = c.heads, m = c.d_model;
  modules::MLAWeights w;
  if (c.q_lora_rank == 0) {
    w.q = random_linear(h * c.qk_head_dim(), m, true);
  } else {
    w.q_down = random_linear(c.q_lora_rank, m);
    w.q_norm = random_norm(c.norm, c.q_lora_rank);
    w.q_up = random_linear(h * c.qk_head_dim(), c.q_lora_rank);
  }
  w.kv_down = random_linear(c.kv_lora_rank + c.qk_rope_head_dim, m, true);
  w.kv_norm = random_norm(c.norm, c.kv_lora_rank);
  w.k_up = random_linear(h * c.qk_nope_head_dim, c.kv_lora_rank);
  w.v_up = random_linear(h * c.v_head_dim, c.kv_lora_rank);
  w.o = random_linear(m, h * c.v_head_dim, true);
  return MultiHeadLatentAttention(c, w);
}

/// The absorbed form in double: q_lat,h = W_uk,h^T q_nope,h; MQA over [c_kv ; k_rope] with
/// values c_kv; o_h = W_uv,h o_lat,h.
Mat absorbed64(const MultiHeadLatentAttention& layer, const Mat& q, const Mat& q_rope, const Mat& c_kv,
               const Mat& k_rope, std::int64_t first, AttentionParams params, DType storage) {
  const MLAConfig& c = layer.config();
  const modules::MLAWeights& w = layer.weights();
  const int h = c.heads, n = c.qk_nope_head_dim, p = c.qk_rope_head_dim, dk = c.qk_head_dim(), r = c.kv_lora_rank;
  const Mat w_uk = test::to_mat(w.k_up.weight), w_uv = test::to_mat(w.v_up.weight);
  const std::int64_t rows = q.rows - first;
  Mat q_abs(rows, std::int64_t(h) * (r + p)), keys(c_kv.rows, r + p);
  for (std::int64_t t = 0; t < rows; ++t)
    for (int hh = 0; hh < h; ++hh) {
      for (int j = 0; j < r; ++j) {
        double s = 0;
        for (int i = 0; i < n; ++i) s += q(first + t, hh * dk + i) * w_uk(hh * n + i, j);
        q_abs(t, hh * (r + p) + j) = s;
      }
      for (int e = 0; e < p; ++e) q_abs(t, hh * (r + p) + r + e) = q_rope(first + t, hh * p + e);
    }
  for (std::int64_t t = 0; t < c_kv.rows; ++t) {
    for (int j = 0; j < r; ++j) keys(t, j) = c_kv(t, j);
    for (int e = 0; e < p; ++e) keys(t, r + e) = k_rope(t, e);
  }
  test::round_to(q_abs, storage);
  if (params.scale == 0.0f) params.scale = float(1.0 / std::sqrt(double(dk)));
  Mat o_lat = test::attention64(q_abs, keys, c_kv, h, 1, params);
  test::round_to(o_lat, storage);
  Mat o(rows, std::int64_t(h) * c.v_head_dim);
  for (std::int64_t t = 0; t < rows; ++t)
    for (int hh = 0; hh < h; ++hh)
      for (int e = 0; e < c.v_head_dim; ++e) {
        double s = 0;
        for (int j = 0; j < r; ++j) s += w_uv(hh * c.v_head_dim + e, j) * o_lat(t, hh * r + j);
        o(t, hh * c.v_head_dim + e) = s;
      }
  return test::linear64(o, w.o);
}

/// The layer in double, written from the header's equations: one sequence x (T, M), outputs of
/// tokens [first, T). `absorbed` attends over the latents as the absorbed path does; `storage`
/// f16 / bf16 rounds what a cache of that dtype rounds (the latents; for the absorbed path also
/// the latent-space query and output, which run in the cache's dtype).
Mat mla64(const MultiHeadLatentAttention& layer, const Mat& x, std::int64_t first, const AttentionParams& params,
          bool absorbed = false, DType storage = DType::f64) {
  const MLAConfig& c = layer.config();
  const modules::MLAWeights& w = layer.weights();
  const int h = c.heads, n = c.qk_nope_head_dim, p = c.qk_rope_head_dim, dk = c.qk_head_dim(), r = c.kv_lora_rank;
  const modules::RopeConfig rope{0, c.rope_base, c.rope_style};
  Mat q = c.q_lora_rank == 0 ? test::linear64(x, w.q)
                             : test::linear64(test::norm64(test::linear64(x, w.q_down), w.q_norm), w.q_up);
  Mat q_rope(x.rows, std::int64_t(h) * p);
  for (std::int64_t t = 0; t < x.rows; ++t)
    for (int hh = 0; hh < h; ++hh)
      for (int e = 0; e < p; ++e) q_rope(t, hh * p + e) = q(t, hh * dk + n + e);
  test::rope64(q_rope, h, p, 0, rope);
  const Mat latent = test::linear64(x, w.kv_down);
  Mat c_kv = test::norm64(test::cols(latent, 0, r), w.kv_norm);
  Mat k_rope = test::cols(latent, r, p);
  test::rope64(k_rope, 1, p, 0, rope);
  test::round_to(c_kv, storage);
  test::round_to(k_rope, storage);
  if (absorbed) return absorbed64(layer, q, q_rope, c_kv, k_rope, first, params, storage);
  const Mat k_nope = test::linear64(c_kv, w.k_up), v = test::linear64(c_kv, w.v_up);
  Mat k(x.rows, std::int64_t(h) * dk), q_new(x.rows - first, std::int64_t(h) * dk);
  for (std::int64_t t = 0; t < x.rows; ++t)
    for (int hh = 0; hh < h; ++hh) {
      for (int e = 0; e < n; ++e) k(t, hh * dk + e) = k_nope(t, hh * n + e);
      for (int e = 0; e < p; ++e) k(t, hh * dk + n + e) = k_rope(t, e);
    }
  for (std::int64_t t = first; t < x.rows; ++t)
    for (int hh = 0; hh < h; ++hh) {
      for (int e = 0; e < n; ++e) q_new(t - first, hh * dk + e) = q(t, hh * dk + e);
      for (int e = 0; e < p; ++e) q_new(t - first, hh * dk + n + e) = q_rope(t, hh * p + e);
    }
  return test::linear64(test::attention64(q_new, k, v, h, h, params), w.o);
}

/// Tokens [first, first + count) of every sequence of x (B, T, F), copied.
Tensor tokens(const Tensor& x, std::int64_t first, std::int64_t count) {
  const std::int64_t b = x.size(0), t = x.size(1), f = x.size(2);
  Tensor y({b, count, f}, DType::f32);
  for (std::int64_t s = 0; s < b; ++s)
    std::copy_n(x.as<float>() + (s * t + first) * f, count * f, y.as<float>() + s * count * f);
  return y;
}

struct MlaCase {
  int q_lora_rank;
  NormKind norm;
  modules::RopeStyle style;
};

class MlaPaths : public ::testing::TestWithParam<MlaCase> {};

TEST_P(MlaPaths, ExpandedAbsorbedAndDecodeMatchFloat64) {
  const MlaCase& cs = GetParam();
  const MLAConfig c{.d_model = 32, .heads = 4, .q_lora_rank = cs.q_lora_rank, .kv_lora_rank = 16,
                    .qk_nope_head_dim = 12, .qk_rope_head_dim = 4, .v_head_dim = 8, .norm = cs.norm,
                    .norm_eps = 1e-6f, .rope_base = 10000.0, .rope_style = cs.style};
  const MultiHeadLatentAttention layer = random_mla(c);
  const int B = 2, prompt = 6, total = 9;
  const Tensor x = test::randn({B, total, c.d_model}, DType::f32);
  AttentionParams params;
  params.mask = Mask::causal_mask();

  const Tensor expanded = layer.forward(x, params, Backend::reference, nullptr, MLAPath::expanded);
  const Tensor absorbed = layer.forward(x, params, Backend::reference, nullptr, MLAPath::absorbed);
  EXPECT_LT(test::max_rel_err(absorbed, test::to_mat(expanded)), 2e-6) << "absorbed == expanded";

  // Prefill expanded into the latent cache, then decode absorbed one token at a time.
  modules::ContiguousLatentCache cache = layer.make_cache(B, total);
  const Tensor pre = layer.forward(tokens(x, 0, prompt), params, Backend::reference, &cache, MLAPath::expanded);
  std::vector<Tensor> steps;
  for (int t = prompt; t < total; ++t)
    steps.push_back(layer.forward(tokens(x, t, 1), params, Backend::reference, &cache, MLAPath::absorbed));
  EXPECT_EQ(cache.seqlen(1), total);

  for (int b = 0; b < B; ++b) {
    const Mat want = mla64(layer, test::rows_of(x, b, 0, total), 0, params);
    for (const Tensor* got : {&expanded, &absorbed}) {
      Tensor g({total, c.d_model}, DType::f32);
      std::copy_n(got->as<float>() + b * total * c.d_model, total * c.d_model, g.as<float>());
      EXPECT_LT(test::max_rel_err(g, want), 2e-6) << (got == &expanded ? "expanded" : "absorbed") << " seq " << b;
    }
    Mat want_prompt(prompt, c.d_model);
    std::copy_n(want.a.begin(), prompt * c.d_model, want_prompt.a.begin());
    Tensor pb({prompt, c.d_model}, DType::f32);
    std::copy_n(pre.as<float>() + b * prompt * c.d_model, prompt * c.d_model, pb.as<float>());
    EXPECT_LT(test::max_rel_err(pb, want_prompt), 2e-6) << "prefill seq " << b;
    for (int s = 0; s < total - prompt; ++s) {
      Mat want_step(1, c.d_model);
      std::copy_n(want.a.begin() + (prompt + s) * c.d_model, c.d_model, want_step.a.begin());
      Tensor sb({1, c.d_model}, DType::f32);
      std::copy_n(steps[std::size_t(s)].as<float>() + b * c.d_model, c.d_model, sb.as<float>());
      EXPECT_LT(test::max_rel_err(sb, want_step), 2e-6) << "decode step " << s << " seq " << b;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, MlaPaths,
                         ::testing::Values(MlaCase{0, NormKind::rms_norm, modules::RopeStyle::interleaved},
                                           MlaCase{24, NormKind::rms_norm, modules::RopeStyle::neox},
                                           MlaCase{20, NormKind::layer_norm, modules::RopeStyle::interleaved}),
                         [](const ::testing::TestParamInfo<MlaCase>& info) {
                           return "qlora" + std::to_string(info.param.q_lora_rank) +
                                  (info.param.norm == NormKind::rms_norm ? "_rms" : "_layernorm") +
                                  (info.param.style == modules::RopeStyle::neox ? "_neox" : "_interleaved");
                         });

TEST(Mla, ChunkedPrefillBothPathsWithWindowMask) {
  const MLAConfig c{.d_model = 24, .heads = 2, .q_lora_rank = 0, .kv_lora_rank = 8, .qk_nope_head_dim = 8,
                    .qk_rope_head_dim = 8, .v_head_dim = 8};
  const MultiHeadLatentAttention layer = random_mla(c);
  const Tensor x = test::randn({1, 10, 24}, DType::f32);
  AttentionParams params;
  params.mask = Mask::window(4, 0);
  params.mask.causal = true;
  params.softcap = 5.0f;
  const Mat want = mla64(layer, test::rows_of(x, 0, 0, 10), 4, params);
  for (MLAPath path : {MLAPath::expanded, MLAPath::absorbed, MLAPath::automatic}) {
    modules::ContiguousLatentCache cache = layer.make_cache(1, 10);
    layer.forward(tokens(x, 0, 4), params, Backend::reference, &cache, path);
    const Tensor second = layer.forward(tokens(x, 4, 6), params, Backend::reference, &cache, path);
    EXPECT_LT(test::max_rel_err(second, want), 2e-6) << "path " << int(path);
  }
}

TEST(Mla, AbsorbedFormInDoubleEqualsExpandedFormInDouble) {
  const MLAConfig c{.d_model = 24, .heads = 3, .q_lora_rank = 16, .kv_lora_rank = 12, .qk_nope_head_dim = 6,
                    .qk_rope_head_dim = 4, .v_head_dim = 5};
  const MultiHeadLatentAttention layer = random_mla(c);
  const Mat x = test::rows_of(test::randn({1, 7, 24}, DType::f32), 0, 0, 7);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  // AttentionParams::scale is a float: give both forms the same one, else they differ by its rounding.
  params.scale = float(1.0 / std::sqrt(double(c.qk_head_dim())));
  const Mat expanded = mla64(layer, x, 2, params), absorbed = mla64(layer, x, 2, params, true);
  for (std::size_t i = 0; i < expanded.a.size(); ++i) EXPECT_NEAR(absorbed.a[i], expanded.a[i], 1e-12);
}

TEST(Mla, LowPrecisionLatentCachesStayWithinTwiceTheNaiveError) {
  const MLAConfig c{.d_model = 32, .heads = 4, .q_lora_rank = 0, .kv_lora_rank = 16, .qk_nope_head_dim = 12,
                    .qk_rope_head_dim = 4, .v_head_dim = 8};
  const MultiHeadLatentAttention layer = random_mla(c);
  const Tensor x = test::randn({1, 8, 32}, DType::f32);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  const Mat seq = test::rows_of(x, 0, 0, 8), exact = mla64(layer, seq, 5, params);
  for (DType dtype : {DType::f16, DType::bf16})
    for (MLAPath path : {MLAPath::expanded, MLAPath::absorbed}) {
      modules::ContiguousLatentCache cache = layer.make_cache(1, 8, dtype);
      layer.forward(tokens(x, 0, 5), params, Backend::reference, &cache, path);
      const Tensor y = layer.forward(tokens(x, 5, 3), params, Backend::reference, &cache, path);
      const Mat naive64 = mla64(layer, seq, 5, params, path == MLAPath::absorbed, dtype);
      Tensor naive({3, 32}, DType::f32);
      for (std::int64_t i = 0; i < naive.numel(); ++i) naive.as<float>()[i] = float(naive64.a[std::size_t(i)]);
      const double naive_err = test::max_rel_err(naive, exact);
      EXPECT_GT(naive_err, 1e-5) << "the rounding must be visible";
      EXPECT_LT(test::max_rel_err(y, exact), 2 * naive_err + 1e-5)
          << dtype_name(dtype) << (path == MLAPath::absorbed ? " absorbed" : " expanded");
    }
}

TEST(Mla, PackedBatchesMixPromptsAndDecodeSteps) {
  const MLAConfig c{.d_model = 32, .heads = 4, .q_lora_rank = 24, .kv_lora_rank = 16, .qk_nope_head_dim = 12,
                    .qk_rope_head_dim = 4, .v_head_dim = 8};
  const MultiHeadLatentAttention layer = random_mla(c);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  for (MLAPath path : {MLAPath::expanded, MLAPath::absorbed}) {
    modules::ContiguousLatentCache cache = layer.make_cache(3, 16);
    test::expect_packed_steps_match(
        32, {{4, 0, 2}, {1, 3, 0}, {1, 1, 1}},
        [&](const Tensor& x, const std::vector<std::int64_t>& counts) {
          return layer.forward_packed(x, counts, cache, params, Backend::reference, path);
        },
        [&](const Mat& tokens, std::int64_t first_new) { return mla64(layer, tokens, first_new, params); },
        path == MLAPath::absorbed ? "absorbed" : "expanded");
  }
}

TEST(Mla, DeepSeekHeadDimsWithFewHeads) {
  // DeepSeek's per-head dims (R 512, N 128, P 64, V 128: attention at 192 / 128 expanded,
  // 576 / 512 absorbed) with 2 heads and a narrow model, to keep the float64 check fast.
  MLAConfig c = MLAConfig::deepseek_v2_lite();
  c.d_model = 64;
  c.heads = 2;
  const MultiHeadLatentAttention layer = random_mla(c);
  const Tensor x = test::randn({1, 5, 64}, DType::f32);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  const Mat want = mla64(layer, test::rows_of(x, 0, 0, 5), 0, params);
  for (MLAPath path : {MLAPath::expanded, MLAPath::absorbed})
    EXPECT_LT(test::max_rel_err(layer.forward(x, params, Backend::reference, nullptr, path), want), 2e-6)
        << (path == MLAPath::absorbed ? "absorbed" : "expanded");
}

TEST(Mla, CacheBytesPerTokenOfDeepSeekV3) {
  const MLAConfig v3 = MLAConfig::deepseek_v3();
  const modules::CacheBytesPerToken bytes = modules::mla_cache_bytes_per_token(v3, 61, DType::bf16, 8);
  EXPECT_EQ(bytes.mla, 61 * (512 + 64) * 2);
  EXPECT_EQ(bytes.mha, std::int64_t(61) * 128 * (192 + 128) * 2);
  EXPECT_EQ(bytes.gqa, std::int64_t(61) * 8 * (192 + 128) * 2);
  EXPECT_EQ(modules::kv_cache_bytes_per_token(32, 8, 128, 128, DType::f16), 32 * 8 * 256 * 2);
  EXPECT_THROW(modules::mla_cache_bytes_per_token(v3, 61, DType::bf16, 3), Error);
}

TEST(Mla, SplitKvBProjTakesEachHeadsKeyThenValueRows) {
  const MLAConfig c{.d_model = 16, .heads = 3, .q_lora_rank = 0, .kv_lora_rank = 4, .qk_nope_head_dim = 2,
                    .qk_rope_head_dim = 2, .v_head_dim = 3};
  const Linear kv_b = random_linear(3 * (2 + 3), 4);
  const modules::SplitKvUp split = modules::split_kv_b_proj(kv_b, c);
  for (int h = 0; h < 3; ++h)
    for (int col = 0; col < 4; ++col) {
      for (int i = 0; i < 2; ++i)
        EXPECT_EQ(split.k_up.weight.as<float>()[(h * 2 + i) * 4 + col], kv_b.weight.as<float>()[(h * 5 + i) * 4 + col]);
      for (int i = 0; i < 3; ++i)
        EXPECT_EQ(split.v_up.weight.as<float>()[(h * 3 + i) * 4 + col],
                  kv_b.weight.as<float>()[(h * 5 + 2 + i) * 4 + col]);
    }
  EXPECT_THROW(modules::split_kv_b_proj(random_linear(14, 4), c), Error);
}

TEST(Mla, BadConfigsAndWeightsNameTheArgument) {
  MLAConfig c = MLAConfig::deepseek_v2_lite();
  c.qk_rope_head_dim = 3;
  EXPECT_NE(test::error_of([&] { c.check(); }).find("qk_rope_head_dim"), std::string::npos);
  c = MLAConfig::deepseek_v2_lite();
  c.kv_lora_rank = 0;
  EXPECT_NE(test::error_of([&] { c.check(); }).find("kv_lora_rank"), std::string::npos);
  c = MLAConfig::deepseek_v2_lite();
  c.q_lora_rank = -1;
  EXPECT_NE(test::error_of([&] { c.check(); }).find("q_lora_rank"), std::string::npos);

  const MLAConfig small{.d_model = 16, .heads = 2, .q_lora_rank = 0, .kv_lora_rank = 8, .qk_nope_head_dim = 8,
                        .qk_rope_head_dim = 4, .v_head_dim = 8};
  modules::MLAWeights w = random_mla(small).weights();
  w.k_up.bias = test::randn({16}, DType::f32);
  EXPECT_NE(test::error_of([&] { MultiHeadLatentAttention(small, w); }).find("k_up.bias"), std::string::npos);
  w = random_mla(small).weights();
  w.v_up = random_linear(8, 8);
  EXPECT_NE(test::error_of([&] { MultiHeadLatentAttention(small, w); }).find("v_up.weight"), std::string::npos);
  const MultiHeadLatentAttention layer = random_mla(small);
  modules::ContiguousLatentCache wrong(1, 8, 16, 4);
  const Tensor x = test::randn({1, 2, 16}, DType::f32);
  EXPECT_NE(test::error_of([&] { layer.forward(x, {}, Backend::reference, &wrong); }).find("cache"), std::string::npos);
  modules::ContiguousLatentCache cache = layer.make_cache(1, 8);
  AttentionParams bad;
  bad.mask.dilation = -1;
  for (MLAPath path : {MLAPath::expanded, MLAPath::absorbed}) {
    EXPECT_NE(test::error_of([&] { layer.forward(x, bad, Backend::reference, &cache, path); }).find("dilation"),
              std::string::npos);
    EXPECT_EQ(cache.seqlen(0), 0) << "a failed call leaves the cache as it was";
  }
}

}  // namespace
}  // namespace attn
