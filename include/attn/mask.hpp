// Attention masks (DESIGN.md, "Masks"). A mask is the AND of the parts that are set,
// with global tokens OR-ed on top.
//
// Positions: query row i in [0, seqlen_q), key column j in [0, seqlen_k); queries are aligned
// to the end of the keys, so row i sits at absolute position p = i + seqlen_k - seqlen_q.
#pragma once

#include "attn/tensor.hpp"

namespace attn {

struct Mask {
  /// j <= p.
  bool causal = false;
  /// p - left <= j <= p + right; -1 means unbounded on that side. (-1, -1) is no window.
  int window_left = -1;
  int window_right = -1;
  /// Dilation g >= 0 (with the window): (p - j) % (g + 1) == 0 and
  /// p - left*(g+1) <= j <= p + right*(g+1). 0 is an ordinary window.
  int dilation = 0;
  /// Strided sparse (Sparse Transformer), stride l >= 1; 0 = off. Causal by construction:
  /// j <= p and (p - j <= l or (p - j) % l == 0).
  int strided = 0;
  /// Fixed sparse, stride l >= 1 and summary 1 <= c <= l; fixed_stride 0 = off. Causal by
  /// construction: j <= p and (j / l == p / l or j % l >= l - c).
  int fixed_stride = 0;
  int fixed_summary = 0;
  /// Block-sparse layout: u8 (nbq, nbk) shared by all heads, or (heads_q, nbq, nbk) per head.
  /// Allows (i, j) when layout[i / block_q][j / block_k] != 0. Undefined = off.
  TensorView block_layout;
  int block_q = 0;
  int block_k = 0;
  /// Global tokens (Longformer): i32 absolute positions, strictly increasing. A query at a
  /// global position attends everywhere, every query attends to a global key (both still
  /// subject to `causal` when it is set). Undefined = none.
  TensorView global_tokens;

  bool has_window() const { return window_left >= 0 || window_right >= 0; }
  /// True when no part is set: every (i, j) is allowed.
  bool is_full() const {
    return !causal && !has_window() && dilation == 0 && strided == 0 && fixed_stride == 0 &&
           !block_layout.defined() && !global_tokens.defined();
  }
  static Mask causal_mask() {
    Mask m;
    m.causal = true;
    return m;
  }
  static Mask window(int left, int right) {
    Mask m;
    m.window_left = left;
    m.window_right = right;
    return m;
  }
};

}  // namespace attn
