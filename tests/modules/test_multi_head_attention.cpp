// MultiHeadAttention (MHA / GQA / MQA, RoPE styles, masks, caches) and the GQA conversion,
// against whole-layer float64 compositions.
#include <cmath>

#include <gtest/gtest.h>

#include "attn/modules/multi_head_attention.hpp"
#include "modules/double_compose.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using modules::Linear;
using modules::MHAConfig;
using modules::MultiHeadAttention;
using modules::RopeConfig;
using modules::RopeScaling;
using modules::RopeStyle;
using test::Mat;

Linear random_linear(std::int64_t out, std::int64_t in, bool bias) {
  Linear l;
  l.weight = test::randn({out, in}, DType::f32, 1.0 / std::sqrt(double(in)));
  if (bias) l.bias = test::randn({out}, DType::f32, 0.5);
  return l;
}

MultiHeadAttention random_layer(const MHAConfig& c, bool bias) {
  const int d = c.resolved_head_dim(), h = c.heads, hk = c.resolved_kv_heads();
  return MultiHeadAttention(c, {random_linear(std::int64_t(h) * d, c.d_model, bias),
                                random_linear(std::int64_t(hk) * d, c.d_model, bias),
                                random_linear(std::int64_t(hk) * d, c.d_model, bias),
                                random_linear(c.d_model, std::int64_t(h) * d, bias)});
}

/// The layer in double for one sequence x (T, M): outputs of tokens [first, T), keys over all T.
/// `storage` f16 / bf16 rounds attention's inputs and output as a cache of that dtype does.
Mat layer64(const MultiHeadAttention& layer, const Mat& x, std::int64_t first, const AttentionParams& params,
            DType storage = DType::f64) {
  const MHAConfig& c = layer.config();
  const int h = c.heads, hk = c.resolved_kv_heads(), d = c.resolved_head_dim();
  Mat q = test::linear64(x, layer.weights().q), k = test::linear64(x, layer.weights().k);
  const Mat v = test::linear64(x, layer.weights().v);
  // QK-norm over rows of the norm's width (a head, or the whole projection).
  for (auto [m, norm] : {std::pair{&q, &layer.weights().q_norm}, std::pair{&k, &layer.weights().k_norm}}) {
    if (!*norm) continue;
    const std::int64_t width = (*norm)->dim();
    Mat rows(m->rows * m->cols / width, width);
    rows.a = m->a;
    m->a = test::norm64(rows, **norm).a;
  }
  if (c.rope) {
    test::rope64(q, h, d, 0, *c.rope);
    test::rope64(k, hk, d, 0, *c.rope);
  }
  Mat q_new(x.rows - first, q.cols);
  for (std::int64_t r = first; r < x.rows; ++r)
    for (std::int64_t e = 0; e < q.cols; ++e) q_new(r - first, e) = q(r, e);
  Mat v_stored = v;
  for (Mat* m : {&q_new, &k, &v_stored}) test::round_to(*m, storage);
  Mat attended = test::attention64(q_new, k, v_stored, h, hk, params);
  test::round_to(attended, storage);
  return test::linear64(attended, layer.weights().o);
}

struct Case {
  int heads, kv_heads, head_dim;
  std::optional<RopeConfig> rope;
  bool bias;
};

class MHAvsDouble : public ::testing::TestWithParam<Case> {};

TEST_P(MHAvsDouble, WholeSequenceAndDecodeMatchFloat64) {
  const Case& cs = GetParam();
  MHAConfig c{.d_model = 48, .heads = cs.heads, .kv_heads = cs.kv_heads, .head_dim = cs.head_dim, .rope = cs.rope};
  const MultiHeadAttention layer = random_layer(c, cs.bias);
  const int B = 2, prompt = 7, decode = 3, total = prompt + decode;
  const Tensor x = test::randn({B, total, c.d_model}, DType::f32);
  AttentionParams params;
  params.mask = Mask::causal_mask();

  // One call over the whole sequence, no cache.
  const Tensor full = layer.forward(x, params, Backend::reference);
  // Prefill the prompt into a cache, then decode token by token.
  modules::ContiguousKVCache cache = layer.make_cache(B, total);
  Tensor x_prompt({B, prompt, c.d_model}, DType::f32);
  for (int b = 0; b < B; ++b)
    std::copy_n(x.as<float>() + b * total * c.d_model, prompt * c.d_model, x_prompt.as<float>() + b * prompt * c.d_model);
  const Tensor pre = layer.forward(x_prompt, params, Backend::reference, &cache);
  std::vector<Tensor> steps;
  for (int t = prompt; t < total; ++t) {
    Tensor xt({B, 1, c.d_model}, DType::f32);
    for (int b = 0; b < B; ++b)
      std::copy_n(x.as<float>() + (b * total + t) * c.d_model, c.d_model, xt.as<float>() + b * c.d_model);
    steps.push_back(layer.forward(xt, params, Backend::reference, &cache));
  }
  EXPECT_EQ(cache.seqlen(0), total);

  for (int b = 0; b < B; ++b) {
    const Mat want = layer64(layer, test::rows_of(x, b, 0, total), 0, params);
    Mat want_prompt(prompt, c.d_model);
    std::copy_n(want.a.begin(), prompt * c.d_model, want_prompt.a.begin());
    Tensor fb({total, c.d_model}, DType::f32);
    std::copy_n(full.as<float>() + b * total * c.d_model, total * c.d_model, fb.as<float>());
    EXPECT_LT(test::max_rel_err(fb, want), 2e-6) << "whole sequence, sequence " << b;
    Tensor pb({prompt, c.d_model}, DType::f32);
    std::copy_n(pre.as<float>() + b * prompt * c.d_model, prompt * c.d_model, pb.as<float>());
    EXPECT_LT(test::max_rel_err(pb, want_prompt), 2e-6) << "prefill, sequence " << b;
    for (int s = 0; s < decode; ++s) {
      Mat want_step(1, c.d_model);
      std::copy_n(want.a.begin() + (prompt + s) * c.d_model, c.d_model, want_step.a.begin());
      Tensor sb({1, c.d_model}, DType::f32);
      std::copy_n(steps[std::size_t(s)].as<float>() + b * c.d_model, c.d_model, sb.as<float>());
      EXPECT_LT(test::max_rel_err(sb, want_step), 2e-6) << "decode step " << s << ", sequence " << b;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, MHAvsDouble,
    ::testing::Values(Case{4, 0, 0, std::nullopt, true},                                 // MHA, biases, no RoPE
                      Case{4, 2, 16, RopeConfig{0, 10000.0, RopeStyle::neox}, false},    // GQA, NeoX
                      Case{6, 1, 8, RopeConfig{0, 500000.0, RopeStyle::interleaved}, true},  // MQA, GPT-J
                      Case{4, 2, 12, RopeConfig{4, 10000.0, RopeStyle::neox}, true},     // partial rotary
                      Case{4, 4, 12, RopeConfig{8, 1000.0, RopeStyle::interleaved}, false},
                      // Scaled frequencies: for D 16, base 1e4 and L 512 the pairs fall in all three
                      // llama3 regimes (kept, blended, divided).
                      Case{4, 2, 16, RopeConfig{0, 10000.0, RopeStyle::neox, {RopeScaling::Kind::linear, 4.0}}, false},
                      Case{4, 2, 16,
                           RopeConfig{0, 10000.0, RopeStyle::neox, {RopeScaling::Kind::llama3, 8.0, 1.0, 4.0, 512}},
                           true}),
    [](const ::testing::TestParamInfo<Case>& info) {
      const Case& c = info.param;
      std::string name = "H" + std::to_string(c.heads) + "_Hk" + std::to_string(c.kv_heads) + "_D" +
                         std::to_string(c.head_dim) + (c.bias ? "_bias" : "");
      if (c.rope) {
        name += c.rope->style == RopeStyle::neox ? "_neox" : "_interleaved";
        name += std::to_string(c.rope->rotary_dim);
        if (c.rope->scaling.kind == RopeScaling::Kind::linear) name += "_linear";
        if (c.rope->scaling.kind == RopeScaling::Kind::llama3) name += "_llama3";
      }
      return name;
    });

TEST(MultiHeadAttention, WindowMaskWithChunkedPrefillMatchesFloat64) {
  MHAConfig c{.d_model = 32, .heads = 4, .kv_heads = 2, .rope = RopeConfig{}};
  const MultiHeadAttention layer = random_layer(c, true);
  AttentionParams params;
  params.mask = Mask::window(3, 0);
  params.mask.causal = true;
  const Tensor x = test::randn({1, 9, 32}, DType::f32);
  modules::ContiguousKVCache cache = layer.make_cache(1, 16);
  // Chunks of 4 and 5 tokens: the second attends over 9 keys with 5 queries.
  Tensor a({1, 4, 32}, DType::f32), b({1, 5, 32}, DType::f32);
  std::copy_n(x.as<float>(), 4 * 32, a.as<float>());
  std::copy_n(x.as<float>() + 4 * 32, 5 * 32, b.as<float>());
  layer.forward(a, params, Backend::reference, &cache);
  const Tensor second = layer.forward(b, params, Backend::reference, &cache);
  const Mat want = layer64(layer, test::rows_of(x, 0, 0, 9), 4, params);
  EXPECT_LT(test::max_rel_err(second, want), 2e-6);
}

TEST(MultiHeadAttention, SequencesOfDifferentLengthsInOneBatch) {
  MHAConfig c{.d_model = 32, .heads = 4, .kv_heads = 2, .rope = RopeConfig{}};
  const MultiHeadAttention layer = random_layer(c, false);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  // Both slots hold 6 tokens; slot 0 is then reused for a new sequence, so the next 3 tokens
  // sit at positions 0..2 in slot 0 and 6..8 in slot 1.
  modules::ContiguousKVCache cache = layer.make_cache(2, 12);
  const Tensor first = test::randn({2, 6, 32}, DType::f32), next = test::randn({2, 3, 32}, DType::f32);
  layer.forward(first, params, Backend::reference, &cache);
  cache.reset(0);
  const Tensor y = layer.forward(next, params, Backend::reference, &cache);
  EXPECT_EQ(cache.seqlen(0), 3);
  EXPECT_EQ(cache.seqlen(1), 9);
  Mat seq1(9, 32);
  for (int t = 0; t < 9; ++t)
    for (int e = 0; e < 32; ++e)
      seq1(t, e) = t < 6 ? first.as<float>()[(6 + t) * 32 + e] : next.as<float>()[(3 + t - 6) * 32 + e];
  Tensor y0({3, 32}, DType::f32), y1({3, 32}, DType::f32);
  std::copy_n(y.as<float>(), 96, y0.as<float>());
  std::copy_n(y.as<float>() + 96, 96, y1.as<float>());
  EXPECT_LT(test::max_rel_err(y0, layer64(layer, test::rows_of(next, 0, 0, 3), 0, params)), 2e-6);
  EXPECT_LT(test::max_rel_err(y1, layer64(layer, seq1, 6, params)), 2e-6);
}

TEST(MultiHeadAttention, HalfAndBfloat16CachesStayWithinTwiceTheNaiveError) {
  MHAConfig c{.d_model = 32, .heads = 4, .kv_heads = 2, .rope = RopeConfig{}};
  const MultiHeadAttention layer = random_layer(c, true);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  const Tensor x = test::randn({1, 10, 32}, DType::f32);
  const Mat exact = layer64(layer, test::rows_of(x, 0, 0, 10), 6, params);
  for (DType dtype : {DType::f16, DType::bf16}) {
    modules::ContiguousKVCache cache = layer.make_cache(1, 10, dtype);
    Tensor prompt({1, 6, 32}, DType::f32), rest({1, 4, 32}, DType::f32);
    std::copy_n(x.as<float>(), 6 * 32, prompt.as<float>());
    std::copy_n(x.as<float>() + 6 * 32, 4 * 32, rest.as<float>());
    layer.forward(prompt, params, Backend::reference, &cache);
    const Tensor y = layer.forward(rest, params, Backend::reference, &cache);
    Tensor naive({4, 32}, DType::f32);
    const Mat naive64 = layer64(layer, test::rows_of(x, 0, 0, 10), 6, params, dtype);
    for (std::int64_t i = 0; i < naive.numel(); ++i) naive.as<float>()[i] = float(naive64.a[std::size_t(i)]);
    const double naive_err = test::max_rel_err(naive, exact);
    EXPECT_GT(naive_err, 1e-5) << "the rounding must be visible, else the check proves nothing";
    EXPECT_LT(test::max_rel_err(y, exact), 2 * naive_err + 1e-5) << dtype_name(dtype);
  }
}

TEST(MultiHeadAttention, QkNormPerHeadAndWholeProjectionMatchFloat64) {
  MHAConfig c{.d_model = 32, .heads = 4, .kv_heads = 2, .rope = RopeConfig{}};
  AttentionParams params;
  params.mask = Mask::causal_mask();
  const Tensor x = test::randn({2, 5, 32}, DType::f32);
  for (const auto& [q_width, k_width] : {std::pair{8, 8}, std::pair{32, 16}}) {
    modules::MHAWeights w = random_layer(c, true).weights();
    w.q_norm = modules::Norm{modules::NormKind::rms_norm, test::randn({q_width}, DType::f32), {}, 1e-6f};
    w.k_norm = modules::Norm{modules::NormKind::rms_norm, test::randn({k_width}, DType::f32), {}, 1e-6f};
    const MultiHeadAttention layer(c, w);
    const Tensor y = layer.forward(x, params, Backend::reference);
    for (int b = 0; b < 2; ++b) {
      Tensor yb({5, 32}, DType::f32);
      std::copy_n(y.as<float>() + b * 5 * 32, 5 * 32, yb.as<float>());
      EXPECT_LT(test::max_rel_err(yb, layer64(layer, test::rows_of(x, b, 0, 5), 0, params)), 2e-6)
          << "q_norm width " << q_width;
    }
  }
  modules::MHAWeights w = random_layer(c, false).weights();
  w.k_norm = modules::Norm{modules::NormKind::rms_norm, test::randn({12}, DType::f32), {}, 1e-6f};
  try {
    MultiHeadAttention(c, w);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k_norm.weight"), std::string::npos) << e.what();
  }
}

TEST(MultiHeadAttention, PackedBatchesMixPromptsAndDecodeSteps) {
  MHAConfig c{.d_model = 32, .heads = 4, .kv_heads = 2, .rope = RopeConfig{}};
  const MultiHeadAttention layer = random_layer(c, true);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  modules::ContiguousKVCache cache = layer.make_cache(3, 16);
  // Step 1: a prompt, a one-token prompt, an idle slot; then mixes of decode and prompts.
  test::expect_packed_steps_match(
      32, {{5, 1, 0}, {0, 2, 3}, {1, 1, 1}},
      [&](const Tensor& x, const std::vector<std::int64_t>& counts) {
        return layer.forward_packed(x, counts, cache, params, Backend::reference);
      },
      [&](const Mat& tokens, std::int64_t first_new) { return layer64(layer, tokens, first_new, params); }, "mha");
  EXPECT_EQ(cache.seqlen(0), 6);
  EXPECT_EQ(cache.seqlen(1), 4);
  EXPECT_EQ(cache.seqlen(2), 4);
  const std::vector<std::int64_t> wrong{1, 1};
  EXPECT_THROW(layer.forward_packed(test::randn({2, 32}, DType::f32), wrong, cache, params, Backend::reference), Error);
}

TEST(MultiHeadAttention, FullyMaskedRowsGiveTheOutputBiasAlone) {
  MHAConfig c{.d_model = 16, .heads = 2, .kv_heads = 1, .rope = RopeConfig{}};
  const MultiHeadAttention layer = random_layer(c, true);
  // Block-sparse layout (2 x 2 blocks of 4): the second query block sees no key block.
  Tensor layout({2, 2}, DType::u8);
  const std::uint8_t blocks[4] = {1, 0, 0, 0};
  std::copy_n(blocks, 4, layout.as<std::uint8_t>());
  AttentionParams params;
  params.mask.block_layout = layout;
  params.mask.block_q = 4;
  params.mask.block_k = 4;
  const Tensor x = test::randn({1, 8, 16}, DType::f32);
  const Tensor y = layer.forward(x, params, Backend::reference);
  EXPECT_LT(test::max_rel_err(y, layer64(layer, test::rows_of(x, 0, 0, 8), 0, params)), 2e-6);
  for (int t = 4; t < 8; ++t)
    for (int e = 0; e < 16; ++e) EXPECT_EQ(y.as<float>()[t * 16 + e], layer.weights().o.bias.as<float>()[e]);
}

TEST(MultiHeadAttention, BadConfigsNameTheArgument) {
  const auto message = [](const MHAConfig& c) {
    try {
      c.check();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({.d_model = 32, .heads = 0, .rope = {}}).find("heads"), std::string::npos);
  EXPECT_NE(message({.d_model = 32, .heads = 4, .kv_heads = 3, .rope = {}}).find("kv_heads"), std::string::npos);
  EXPECT_NE(message({.d_model = 30, .heads = 4, .rope = {}}).find("head_dim"), std::string::npos);
  EXPECT_NE(message({.d_model = 32, .heads = 4, .rope = RopeConfig{5}}).find("rope.rotary_dim"), std::string::npos);
  EXPECT_NE(message({.d_model = 32, .heads = 4, .rope = RopeConfig{16}}).find("rope.rotary_dim"), std::string::npos);
  MHAConfig c{.d_model = 32, .heads = 4, .kv_heads = 2, .rope = {}};
  try {
    MultiHeadAttention(c, {random_linear(32, 32, false), random_linear(32, 32, false), random_linear(16, 32, false),
                           random_linear(32, 32, false)});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k.weight"), std::string::npos) << e.what();
  }
  const MultiHeadAttention layer = random_layer(c, false);
  modules::ContiguousKVCache cache = layer.make_cache(1, 4);
  const Tensor x = test::randn({1, 5, 32}, DType::f32);
  try {
    layer.forward(x, {}, Backend::reference, &cache);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.seqlen(0), 0) << "a failed append leaves the cache as it was";
  AttentionParams bad;
  bad.mask.dilation = -1;
  try {
    layer.forward(test::randn({1, 2, 32}, DType::f32), bad, Backend::reference, &cache);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dilation"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.seqlen(0), 0) << "a failed attention takes its keys back out of the cache";
}

TEST(GqaConversion, EqualHeadsWithinGroupsConvertExactly) {
  MHAConfig c{.d_model = 32, .heads = 8, .rope = RopeConfig{}};
  MultiHeadAttention mha = random_layer(c, true);
  // Make K and V heads equal within groups of 4 (kv_heads = 2 after conversion).
  modules::MHAWeights w = mha.weights();
  const int d = c.resolved_head_dim();
  for (Linear* l : {&w.k, &w.v})
    for (int h = 0; h < 8; ++h) {
      const int src = h / 4 * 4;
      std::copy_n(l->weight.as<float>() + src * d * 32, d * 32, l->weight.as<float>() + h * d * 32);
      std::copy_n(l->bias.as<float>() + src * d, d, l->bias.as<float>() + h * d);
    }
  mha = MultiHeadAttention(c, w);
  const MultiHeadAttention gqa = modules::convert_kv_heads(mha, 2);
  EXPECT_EQ(gqa.config().resolved_kv_heads(), 2);
  const Tensor x = test::randn({2, 6, 32}, DType::f32);
  AttentionParams params;
  params.mask = Mask::causal_mask();
  EXPECT_EQ(modules::output_rel_l2(gqa, mha, x, params, Backend::reference), 0.0);
}

TEST(GqaConversion, PooledWeightsAreGroupMeansAndTheErrorIsReported) {
  MHAConfig c{.d_model = 24, .heads = 6, .rope = RopeConfig{}};
  const MultiHeadAttention mha = random_layer(c, true);
  const Tensor x = test::randn({1, 5, 24}, DType::f32);
  for (int kv : {6, 3, 2, 1}) {
    const MultiHeadAttention conv = modules::convert_kv_heads(mha, kv);
    const int group = 6 / kv, d = 4;
    for (int g = 0; g < kv; ++g)
      for (int r = 0; r < d; ++r) {
        double mean = 0;
        for (int j = 0; j < group; ++j) mean += mha.weights().v.bias.as<float>()[(g * group + j) * d + r];
        EXPECT_NEAR(conv.weights().v.bias.as<float>()[g * d + r], mean / group, 1e-6);
        for (int col = 0; col < 24; ++col) {
          double wm = 0;
          for (int j = 0; j < group; ++j) wm += mha.weights().k.weight.as<float>()[((g * group + j) * d + r) * 24 + col];
          EXPECT_NEAR(conv.weights().k.weight.as<float>()[(g * d + r) * 24 + col], wm / group, 1e-6);
        }
      }
    const double err = modules::output_rel_l2(conv, mha, x, {}, Backend::reference);
    if (kv == 6) EXPECT_EQ(err, 0.0);
    else EXPECT_GT(err, 1e-3) << "random heads are not equal: pooling must change the output";
  }
  EXPECT_THROW(modules::convert_kv_heads(mha, 4), Error);
}

}  // namespace
}  // namespace attn
