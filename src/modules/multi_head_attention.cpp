#include "attn/modules/multi_head_attention.hpp"

#include <cmath>
#include <vector>

#include "modules/packed.hpp"
#include "modules/tensor_util.hpp"

namespace attn::modules {

void MHAConfig::check() const {
  ATTN_CHECK(d_model >= 1, "d_model: expected >= 1, got ", d_model);
  ATTN_CHECK(heads >= 1, "heads: expected >= 1, got ", heads);
  ATTN_CHECK(kv_heads >= 0 && (kv_heads == 0 || heads % kv_heads == 0),
             "kv_heads: expected a divisor of heads = ", heads, " (or 0 for heads), got ", kv_heads);
  ATTN_CHECK(head_dim >= 0, "head_dim: expected >= 1 (or 0 for d_model / heads), got ", head_dim);
  ATTN_CHECK(head_dim != 0 || d_model % heads == 0, "head_dim: 0 means d_model / heads, but heads = ", heads,
             " does not divide d_model = ", d_model);
  if (rope) rope->check("rope", resolved_head_dim());
}

MultiHeadAttention::MultiHeadAttention(MHAConfig config, MHAWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  config_.check();
  const std::int64_t m = config_.d_model, d = config_.resolved_head_dim();
  weights_.q.check("q", config_.heads * d, m);
  weights_.k.check("k", config_.resolved_kv_heads() * d, m);
  weights_.v.check("v", config_.resolved_kv_heads() * d, m);
  weights_.o.check("o", m, config_.heads * d);
  if (weights_.q_norm) {
    const std::int64_t dim = weights_.q_norm->dim();
    ATTN_CHECK(dim == d || dim == config_.heads * d, "q_norm.weight: expected ", d, " (per head) or ",
               config_.heads * d, " (whole projection) features, got ", dim);
    weights_.q_norm->check("q_norm", dim);
  }
  if (weights_.k_norm) {
    const std::int64_t dim = weights_.k_norm->dim();
    ATTN_CHECK(dim == d || dim == config_.resolved_kv_heads() * d, "k_norm.weight: expected ", d, " (per head) or ",
               config_.resolved_kv_heads() * d, " (whole projection) features, got ", dim);
    weights_.k_norm->check("k_norm", dim);
  }
}

namespace {

/// Normalises a projection (B, S, F) in rows of the norm's width: one head or the whole token.
Tensor normalise_projection(const Norm& norm, const Tensor& projected) {
  return apply_norm(norm, reshape(projected, {projected.numel() / norm.dim(), norm.dim()}));
}

}  // namespace

ContiguousKVCache MultiHeadAttention::make_cache(int batch, std::int64_t capacity, DType dtype) const {
  const int d = config_.resolved_head_dim();
  return ContiguousKVCache(batch, capacity, config_.resolved_kv_heads(), d, d, dtype);
}

MultiHeadAttention::Qkv MultiHeadAttention::project(const TensorView& x, std::span<const std::int64_t> positions) const {
  const std::int64_t tokens = x.numel() / config_.d_model;
  const int h = config_.heads, hk = config_.resolved_kv_heads(), d = config_.resolved_head_dim();
  Qkv p{linear(weights_.q, x), linear(weights_.k, x), linear(weights_.v, x)};
  if (weights_.q_norm) p.q = normalise_projection(*weights_.q_norm, p.q);
  if (weights_.k_norm) p.k = normalise_projection(*weights_.k_norm, p.k);
  if (config_.rope) {
    apply_rope(reshape(p.q, {tokens, h, d}), positions, *config_.rope);
    apply_rope(reshape(p.k, {tokens, hk, d}), positions, *config_.rope);
  }
  return p;
}

Tensor MultiHeadAttention::attend_cached(const TensorView& x, std::span<const std::int64_t> new_tokens,
                                         LayerKVCache& cache, const AttentionParams& params, Backend backend) const {
  const std::int64_t tokens = detail::packed_total(new_tokens, cache.batch_size());
  ATTN_CHECK(x.numel() / config_.d_model == tokens, "x: holds ", x.numel() / config_.d_model,
             " tokens, new_tokens add up to ", tokens);
  const int h = config_.heads, hk = config_.resolved_kv_heads(), d = config_.resolved_head_dim();
  const Qkv p = project(x, detail::new_token_positions(cache, new_tokens));
  cache.append(reshape(p.k, {tokens, hk, d}), reshape(p.v, {tokens, hk, d}), new_tokens);
  Tensor out({tokens, h, d}, DType::f32);
  try {
    cache.attend(reshape(p.q, {tokens, h, d}), out, new_tokens, params, backend);
  } catch (...) {
    cache.discard_last(new_tokens);
    throw;
  }
  return out;
}

Tensor MultiHeadAttention::forward(const TensorView& x, const AttentionParams& params, Backend backend,
                                   LayerKVCache* cache) const {
  detail::check_f32(x, "x", 3);
  ATTN_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
  detail::check_dim(x, "x", 2, config_.d_model, "d_model");
  const std::int64_t batch = x.size(0), seqlen = x.size(1), hd = std::int64_t(config_.heads) * config_.resolved_head_dim();
  if (cache != nullptr) {
    ATTN_CHECK(cache->batch_size() == batch, "cache: holds ", cache->batch_size(), " sequences, x has ", batch);
    const Tensor out = attend_cached(x, detail::uniform_new_tokens(batch, seqlen), *cache, params, backend);
    return linear(weights_.o, reshape(out, {batch, seqlen, hd}));
  }
  // No cache: one padded attention call over the whole batch.
  std::vector<std::int64_t> positions;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t s = 0; s < seqlen; ++s) positions.push_back(s);
  const Qkv p = project(x, positions);
  const int h = config_.heads, hk = config_.resolved_kv_heads(), d = config_.resolved_head_dim();
  Tensor out({batch, seqlen, h, d}, DType::f32);
  ForwardArgs args;
  args.q = reshape(p.q, {batch, seqlen, h, d});
  args.k = reshape(p.k, {batch, seqlen, hk, d});
  args.v = reshape(p.v, {batch, seqlen, hk, d});
  args.out = out;
  args.params = params;
  attention_forward(args, backend);
  return linear(weights_.o, reshape(out, {batch, seqlen, hd}));
}

Tensor MultiHeadAttention::forward_packed(const TensorView& x, std::span<const std::int64_t> new_tokens,
                                          LayerKVCache& cache, const AttentionParams& params, Backend backend) const {
  detail::check_f32(x, "x", 2);
  ATTN_CHECK(x.is_contiguous(), "x: expected a contiguous tensor");
  detail::check_dim(x, "x", 1, config_.d_model, "d_model");
  const Tensor out = attend_cached(x, new_tokens, cache, params, backend);
  return linear(weights_.o, reshape(out, {x.size(0), std::int64_t(config_.heads) * config_.resolved_head_dim()}));
}

namespace {

/// Mean of `group` consecutive blocks of `rows` rows each: (groups * group * rows, cols) ->
/// (groups * rows, cols). A bias is the cols == 1 case.
Tensor pool_heads(const Tensor& t, int group, std::int64_t rows_per_head) {
  const std::int64_t cols = t.view().ndim == 2 ? t.size(1) : 1;
  const std::int64_t out_heads = t.size(0) / rows_per_head / group;
  Tensor pooled = t.view().ndim == 2 ? Tensor({out_heads * rows_per_head, cols}, DType::f32)
                                     : Tensor({out_heads * rows_per_head}, DType::f32);
  const float* src = t.as<float>();
  float* dst = pooled.as<float>();
  for (std::int64_t g = 0; g < out_heads; ++g)
    for (std::int64_t r = 0; r < rows_per_head; ++r)
      for (std::int64_t c = 0; c < cols; ++c) {
        // Sum in double so pooling equal heads returns them bit for bit.
        double sum = 0;
        for (int j = 0; j < group; ++j) sum += src[((g * group + j) * rows_per_head + r) * cols + c];
        dst[(g * rows_per_head + r) * cols + c] = float(sum / group);
      }
  return pooled;
}

Linear pool_linear(const Linear& l, int group, std::int64_t rows_per_head) {
  Linear out;
  out.weight = pool_heads(l.weight, group, rows_per_head);
  if (l.bias.defined()) out.bias = pool_heads(l.bias, group, rows_per_head);
  return out;
}

}  // namespace

MultiHeadAttention convert_kv_heads(const MultiHeadAttention& layer, int kv_heads) {
  const int from = layer.config().resolved_kv_heads();
  ATTN_CHECK(kv_heads >= 1 && from % kv_heads == 0, "kv_heads: expected a divisor of the layer's ", from,
             " kv heads, got ", kv_heads);
  const int group = from / kv_heads, d = layer.config().resolved_head_dim();
  MHAConfig config = layer.config();
  config.kv_heads = kv_heads;
  MHAWeights w = layer.weights();
  w.k = pool_linear(w.k, group, d);
  w.v = pool_linear(w.v, group, d);
  return MultiHeadAttention(config, w);
}

double output_rel_l2(const MultiHeadAttention& converted, const MultiHeadAttention& original, const TensorView& x,
                     const AttentionParams& params, Backend backend) {
  const Tensor a = converted.forward(x, params, backend), b = original.forward(x, params, backend);
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double diff = double(a.as<float>()[i]) - double(b.as<float>()[i]);
    num += diff * diff;
    den += double(b.as<float>()[i]) * double(b.as<float>()[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace attn::modules
