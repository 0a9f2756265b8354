// DESIGN.md's mask table, one rule per line, on purpose independent of src/mask_eval.hpp.
#include <algorithm>

#include "attn/tensor.hpp"
#include "reference/reference.hpp"

namespace attn::reference {
namespace {

long long floor_mod(long long a, long long m) { return ((a % m) + m) % m; }

bool contains(const TensorView& positions, long long x) {
  for (std::int64_t n = 0; n < positions.numel(); ++n)
    if (positions.as<std::int32_t>()[n * positions.stride[0]] == x) return true;
  return false;
}

}  // namespace

bool mask_allows(const Mask& m, int i, int j, int seqlen_q, int seqlen_k, int head) {
  const long long p = (long long)i + seqlen_k - seqlen_q;  // bottom-right alignment
  bool allowed = true;
  if (m.causal) allowed = allowed && j <= p;
  if (m.dilation == 0 && m.has_window()) {
    if (m.window_left >= 0) allowed = allowed && p - m.window_left <= j;
    if (m.window_right >= 0) allowed = allowed && j <= p + m.window_right;
  }
  if (m.dilation > 0) {
    const long long g1 = m.dilation + 1;
    allowed = allowed && floor_mod(p - j, g1) == 0;
    if (m.window_left >= 0) allowed = allowed && p - (long long)m.window_left * g1 <= j;
    if (m.window_right >= 0) allowed = allowed && j <= p + (long long)m.window_right * g1;
  }
  if (m.strided > 0) {
    const long long l = m.strided;
    allowed = allowed && j <= p && (p - j <= l || (p - j) % l == 0);
  }
  if (m.fixed_stride > 0) {
    const long long l = m.fixed_stride, c = m.fixed_summary;
    allowed = allowed && j <= p && (j / l == p / l || j % l >= l - c);
  }
  if (m.block_layout.defined()) {
    const TensorView& L = m.block_layout;
    const std::int64_t h = L.ndim == 3 ? head : 0;
    const std::int64_t off = (L.ndim == 3 ? h * L.stride[0] : 0) + (i / m.block_q) * L.stride_of(-2) +
                             (j / m.block_k) * L.stride_of(-1);
    allowed = allowed && L.as<std::uint8_t>()[off] != 0;
  }
  if (m.global_tokens.defined()) {
    bool global = contains(m.global_tokens, p) || contains(m.global_tokens, j);
    if (m.causal) global = global && j <= p;
    allowed = allowed || global;
  }
  return allowed;
}

}  // namespace attn::reference
