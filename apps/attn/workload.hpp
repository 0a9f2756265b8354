// Attention problems the bench and the demo build: a shape, a mask pattern with the tensors it
// views, and fresh inputs with their outputs allocated.
//
// Shape letters: B batch, Sq/Sk query/key lengths, Hq/Hk heads, D/Dv head dims.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attn/attention.hpp"

namespace attn::cli {

struct Shape {
  int batch = 1;
  int seqlen_q = 0;
  int seqlen_k = 0;
  int heads_q = 1;
  int heads_kv = 1;
  int head_dim = 64;
  int head_dim_v = 64;
  DType dtype = DType::f32;

  /// Self-attention: Sq = Sk = s, Hq = Hk = h, D = Dv = d.
  static Shape square(int s, int h, int d, DType dtype = DType::f32) { return {1, s, s, h, h, d, d, dtype}; }
  /// "B1 S4096 H8 D128", with Sq/Sk, Hq/Hk and D/Dv spelled out only when they differ.
  std::string str() const;
};

/// A mask together with the tensors it views, so copies stay valid (Tensor storage is shared).
struct Pattern {
  std::string name;
  Mask mask;
  Tensor layout;   ///< u8 block layout, when the mask has one
  Tensor globals;  ///< i32 global positions, when the mask has them
};

Pattern full_pattern();
Pattern causal_pattern();
/// Sliding window of `left` keys back and `right` ahead.
Pattern window_pattern(int left, int right);
/// A causal window of `left` steps that keeps every (dilation+1)-th key.
Pattern dilated_pattern(int left, int dilation);
Pattern strided_pattern(int stride);
Pattern fixed_pattern(int stride, int summary);
/// BigBird-like layout in blocks of `block`: a band of one block either side of the diagonal
/// plus every `every`-th block column, shared by all heads.
Pattern block_sparse_pattern(const Shape& s, int block, int every);
/// A causal window of `left` plus Longformer global tokens at `positions`.
Pattern global_pattern(int left, std::initializer_list<std::int32_t> positions);

/// CPU tensors for one call: inputs filled with uniform values of unit variance (rounded to the
/// shape's dtype); outputs allocated (out and grads in `out_dtype`, lse in f32). The backward
/// tensors are left undefined unless `backward`.
struct Workload {
  Tensor q, k, v, out, lse, dout, dq, dk, dv;
  Tensor cu_seqlens_q, cu_seqlens_k;  ///< packed (varlen) workloads only

  ForwardArgs forward_args(const AttentionParams& params) const;
  BackwardArgs backward_args(const AttentionParams& params) const;
  /// Bytes of all its tensors.
  std::size_t nbytes() const;
  /// A copy with every tensor on `device` (the same tensors when they are already there).
  Workload on(Device device) const;
};

/// A CPU tensor of fresh uniform values of unit variance, rounded to `dtype` (f32, f16, bf16, f64).
Tensor random_input(std::initializer_list<std::int64_t> shape, DType dtype, std::uint64_t seed);

/// A copy of `t` on `device`, or `t` itself when it is already there (or undefined).
Tensor on_device(const Tensor& t, Device device);
Workload make_workload(const Shape& s, bool backward, std::uint64_t seed, DType out_dtype);
/// A packed batch: sequence b has lengths_q[b] queries and lengths_k[b] keys (s.batch and the
/// seqlens of `s` are ignored).
Workload make_varlen_workload(const Shape& s, const std::vector<int>& lengths_q, const std::vector<int>& lengths_k,
                              bool backward, std::uint64_t seed, DType out_dtype);

}  // namespace attn::cli
