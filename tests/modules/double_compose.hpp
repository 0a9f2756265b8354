// Whole layers recomputed in float64 from the same weights, independently of src/modules:
// projections, RoPE and norms are plain double loops here, attention is Backend::reference on
// f64 tensors. The f32 layers are checked against these.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/norm.hpp"
#include "attn/modules/rope.hpp"

namespace attn::test {

/// A row-major double matrix.
struct Mat {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> a;
  Mat() = default;
  Mat(std::int64_t r, std::int64_t c) : rows(r), cols(c), a(std::size_t(r * c), 0.0) {}
  double& operator()(std::int64_t r, std::int64_t c) { return a[std::size_t(r * cols + c)]; }
  double operator()(std::int64_t r, std::int64_t c) const { return a[std::size_t(r * cols + c)]; }
};

/// Any CPU float tensor, flattened to (numel / last, last).
Mat to_mat(const TensorView& t);
/// x W^T + b in double.
Mat linear64(const Mat& x, const modules::Linear& l);
/// LayerNorm / RMSNorm of each row in double.
Mat norm64(const Mat& x, const modules::Norm& n);
/// Columns [first, first + count) of x.
Mat cols(const Mat& x, std::int64_t first, std::int64_t count);
/// RoPE in double on rows laid out (tokens, heads * head_dim); token t sits at position start + t.
void rope64(Mat& x, int heads, int head_dim, std::int64_t start, const modules::RopeConfig& rope);
/// Attention via Backend::reference in f64: q (Sq, H * D), k (Sk, Hk * D), v (Sk, Hk * Dv) of one sequence.
Mat attention64(const Mat& q, const Mat& k, const Mat& v, int heads, int kv_heads, const AttentionParams& params);
/// max |a - b| / max |b| over all elements (a an f32 tensor, b its double counterpart).
double max_rel_err(const TensorView& a, const Mat& b);
/// Rounds every entry through storage `dtype` (f16 / bf16; f32 and f64 leave it exact), as a
/// low-precision cache or kernel input would: the "naive implementation in that dtype".
void round_to(Mat& x, DType dtype);
/// Rows [first, first + count) of sequence b of a (B, S, F) tensor, as a Mat.
Mat rows_of(const TensorView& t, int b, std::int64_t first, std::int64_t count);

/// Continuous batching against a float64 layer: at each step, steps[s][b] fresh tokens of width
/// `width` for sequence b go through forward(x packed, counts) at once; each sequence's outputs
/// must be within 2e-6 (relative) of reference(every token it has seen, index of the first
/// new one). `what` names the layer in failure messages.
void expect_packed_steps_match(
    std::int64_t width, const std::vector<std::vector<std::int64_t>>& steps,
    const std::function<Tensor(const Tensor& x, const std::vector<std::int64_t>& counts)>& forward,
    const std::function<Mat(const Mat& tokens, std::int64_t first_new)>& reference, const std::string& what);

}  // namespace attn::test
