#include "modules/double_compose.hpp"

#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "attn/half.hpp"
#include "support/random.hpp"

namespace attn::test {

Mat to_mat(const TensorView& t) {
  const std::int64_t last = t.size(-1);
  Mat m(t.numel() / last, last);
  for (std::int64_t i = 0; i < t.numel(); ++i) m.a[std::size_t(i)] = read_element(t, i);
  return m;
}

Mat linear64(const Mat& x, const modules::Linear& l) {
  const Mat w = to_mat(l.weight);
  Mat y(x.rows, w.rows);
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t o = 0; o < w.rows; ++o) {
      double s = l.bias.defined() ? double(l.bias.as<float>()[o]) : 0.0;
      for (std::int64_t i = 0; i < x.cols; ++i) s += x(r, i) * w(o, i);
      y(r, o) = s;
    }
  return y;
}

Mat norm64(const Mat& x, const modules::Norm& n) {
  Mat y(x.rows, x.cols);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    double mean = 0, ms = 0;
    if (n.kind == modules::NormKind::layer_norm) {
      for (std::int64_t c = 0; c < x.cols; ++c) mean += x(r, c);
      mean /= double(x.cols);
    }
    for (std::int64_t c = 0; c < x.cols; ++c) ms += (x(r, c) - mean) * (x(r, c) - mean);
    const double inv = 1.0 / std::sqrt(ms / double(x.cols) + double(n.eps));
    for (std::int64_t c = 0; c < x.cols; ++c)
      y(r, c) = (x(r, c) - mean) * inv * n.weight.as<float>()[c] + (n.bias.defined() ? n.bias.as<float>()[c] : 0.0);
  }
  return y;
}

Mat cols(const Mat& x, std::int64_t first, std::int64_t count) {
  Mat y(x.rows, count);
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t c = 0; c < count; ++c) y(r, c) = x(r, first + c);
  return y;
}

namespace {

/// The scalings written the way Llama 3.1's reference code states them, by wavelength.
double scaled_frequency(double f, const modules::RopeScaling& sc) {
  if (sc.kind == modules::RopeScaling::Kind::linear) return f / sc.factor;
  if (sc.kind != modules::RopeScaling::Kind::llama3) return f;
  const double wavelength = 2 * M_PI / f;
  if (wavelength < sc.original_max_positions / sc.high_freq_factor) return f;
  if (wavelength > sc.original_max_positions / sc.low_freq_factor) return f / sc.factor;
  const double smooth =
      (sc.original_max_positions / wavelength - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor);
  return (1 - smooth) * f / sc.factor + smooth * f;
}

}  // namespace

void rope64(Mat& x, int heads, int head_dim, std::int64_t start, const modules::RopeConfig& rope) {
  const int rot = rope.rotary_dim == 0 ? head_dim : rope.rotary_dim;
  for (std::int64_t t = 0; t < x.rows; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < rot / 2; ++i) {
        const double angle = double(start + t) * scaled_frequency(std::pow(rope.base, -2.0 * i / rot), rope.scaling);
        const int a = h * head_dim + (rope.style == modules::RopeStyle::neox ? i : 2 * i);
        const int b = rope.style == modules::RopeStyle::neox ? a + rot / 2 : a + 1;
        const double x0 = x(t, a), x1 = x(t, b);
        x(t, a) = x0 * std::cos(angle) - x1 * std::sin(angle);
        x(t, b) = x0 * std::sin(angle) + x1 * std::cos(angle);
      }
}

Mat attention64(const Mat& q, const Mat& k, const Mat& v, int heads, int kv_heads, const AttentionParams& params) {
  const std::int64_t d = q.cols / heads, dv = v.cols / kv_heads;
  Tensor tq({1, q.rows, heads, d}, DType::f64), tk({1, k.rows, kv_heads, d}, DType::f64);
  Tensor tv({1, v.rows, kv_heads, dv}, DType::f64), out({1, q.rows, heads, dv}, DType::f64);
  std::copy(q.a.begin(), q.a.end(), tq.as<double>());
  std::copy(k.a.begin(), k.a.end(), tk.as<double>());
  std::copy(v.a.begin(), v.a.end(), tv.as<double>());
  ForwardArgs args;
  args.q = tq;
  args.k = tk;
  args.v = tv;
  args.out = out;
  args.params = params;
  attention_forward(args, Backend::reference);
  return to_mat(modules::reshape(out, {q.rows, heads * dv}));
}

double max_rel_err(const TensorView& a, const Mat& b) {
  EXPECT_EQ(a.numel(), std::int64_t(b.a.size()));
  double err = 0, scale = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double x = read_element(a, i), y = b.a[std::size_t(i)];
    if (!std::isfinite(x)) return INFINITY;
    err = std::max(err, std::abs(x - y));
    scale = std::max(scale, std::abs(y));
  }
  return err / std::max(scale, 1e-300);
}

void round_to(Mat& x, DType dtype) {
  for (double& e : x.a) {
    if (dtype == DType::f16) e = round_to_f16(float(e));
    if (dtype == DType::bf16) e = round_to_bf16(float(e));
  }
}

Mat rows_of(const TensorView& t, int b, std::int64_t first, std::int64_t count) {
  const std::int64_t f = t.size(-1);
  Mat m(count, f);
  for (std::int64_t r = 0; r < count; ++r)
    for (std::int64_t c = 0; c < f; ++c) m(r, c) = read_element(t, (b * t.size(1) + first + r) * f + c);
  return m;
}

void expect_packed_steps_match(
    std::int64_t width, const std::vector<std::vector<std::int64_t>>& steps,
    const std::function<Tensor(const Tensor& x, const std::vector<std::int64_t>& counts)>& forward,
    const std::function<Mat(const Mat& tokens, std::int64_t first_new)>& reference, const std::string& what) {
  std::vector<std::vector<double>> history;  // every token each sequence has seen, (L, width)
  for (const std::vector<std::int64_t>& counts : steps) {
    history.resize(std::max(history.size(), counts.size()));
    std::int64_t total = 0;
    for (std::int64_t n : counts) total += n;
    const Tensor x = randn({total, width}, DType::f32);
    const Tensor y = forward(x, counts);
    std::int64_t first = 0;
    for (std::size_t b = 0; b < counts.size(); ++b) {
      const std::int64_t n = counts[b];
      for (std::int64_t i = 0; i < n * width; ++i) history[b].push_back(x.as<float>()[first * width + i]);
      if (n > 0) {
        Mat seq(std::int64_t(history[b].size()) / width, width);
        seq.a = history[b];
        Tensor got({n, width}, DType::f32);
        std::copy_n(y.as<float>() + first * width, n * width, got.as<float>());
        EXPECT_LT(max_rel_err(got, reference(seq, seq.rows - n)), 2e-6) << what << " sequence " << b;
      }
      first += n;
    }
  }
}

}  // namespace attn::test
