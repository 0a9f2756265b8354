#include "counters.hpp"

#include <algorithm>

#include "mask_eval.hpp"
#include "validate.hpp"

namespace attn::cli {
namespace {

// Tiles let the count skip empty regions and take full ones whole, so counting a window of
// 256 at S = 16384 visits ~S*256 pairs at most instead of S*S.
constexpr int kTile = 64;

}  // namespace

std::int64_t allowed_pairs(const Shape& s, const Mask& mask) {
  const detail::MaskParams m = detail::resolve_mask(mask, s.heads_q, s.seqlen_q, s.seqlen_k, Device::cpu());
  // Only a per-head block layout makes heads differ; otherwise count one head and multiply.
  const int heads = mask.block_layout.defined() && mask.block_layout.ndim == 3 ? s.heads_q : 1;
  std::int64_t pairs = 0;
  for (int h = 0; h < heads; ++h) {
    const detail::MaskEval eval{&m, s.seqlen_q, s.seqlen_k, h};
    for (int i0 = 0; i0 < s.seqlen_q; i0 += kTile) {
      const int i1 = std::min(i0 + kTile, s.seqlen_q);
      int lo = 0, hi = 0;
      eval.key_range(i0, i1, lo, hi);
      for (int j0 = lo; j0 < hi; j0 += kTile) {
        const int j1 = std::min(j0 + kTile, hi);
        switch (eval.classify(i0, i1, j0, j1)) {
          case detail::TileKind::empty:
            break;
          case detail::TileKind::full:
            pairs += std::int64_t(i1 - i0) * (j1 - j0);
            break;
          case detail::TileKind::partial:
            for (int i = i0; i < i1; ++i)
              for (int j = j0; j < j1; ++j) pairs += eval.allows(i, j);
            break;
        }
      }
    }
  }
  return pairs * s.batch * (s.heads_q / heads);
}

double forward_flops(const Shape& s, std::int64_t pairs) { return 2.0 * (s.head_dim + s.head_dim_v) * double(pairs); }

double backward_flops(const Shape& s, std::int64_t pairs) { return 2.5 * forward_flops(s, pairs); }

double io_bytes(const Shape& s, bool backward) {
  const double e = double(dtype_size(s.dtype));
  const double q = double(s.batch) * s.seqlen_q * s.heads_q * s.head_dim;
  const double k = double(s.batch) * s.seqlen_k * s.heads_kv * s.head_dim;
  const double v = double(s.batch) * s.seqlen_k * s.heads_kv * s.head_dim_v;
  const double o = double(s.batch) * s.seqlen_q * s.heads_q * s.head_dim_v;
  const double lse = double(s.batch) * s.heads_q * s.seqlen_q * 4.0;
  const double forward = (q + k + v + o) * e + lse;
  return backward ? forward + (o + q + k + v) * e : forward;  // dout, dq, dk, dv
}

double score_matrix_bytes(const Shape& s, bool backward) {
  const double one = double(s.batch) * s.heads_q * s.seqlen_q * double(s.seqlen_k) * 4.0;
  return backward ? 2.0 * one : one;
}

double kv_read_bytes(const Shape& s) {
  return double(s.batch) * s.seqlen_k * s.heads_kv * (s.head_dim + s.head_dim_v) * double(dtype_size(s.dtype));
}

double mla_absorbed_flops(int batch, int context, int heads, int rank, int rope, int nope, int v_dim) {
  const double per_sequence = double(heads) * (double(nope) * rank + double(context) * (2.0 * rank + rope) +
                                               double(rank) * v_dim);
  return 2.0 * batch * per_sequence;
}

double mla_expanded_flops(int batch, int context, int heads, int rank, int rope, int nope, int v_dim) {
  const double expand = double(context) * heads * double(nope + v_dim) * rank;
  const double attend = double(heads) * context * double(nope + rope + v_dim);
  return 2.0 * batch * (expand + attend);
}

double linear_attention_flops(const Shape& s) {
  const double per_token_head = 2.0 * s.head_dim * s.head_dim_v + 2.0 * s.head_dim;
  return 2.0 * s.batch * s.seqlen_q * s.heads_q * per_token_head;
}

}  // namespace attn::cli
