#include "cpu/strided_split.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/thread_pool.hpp"

namespace attn::cpu {
namespace {

using detail::AttentionProblem;
using detail::BackwardProblem;
using detail::TokenLayout;
using detail::MaskParams;

constexpr std::size_t kAlign = 64;
constexpr std::size_t align_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

/// The causal band d = p - j in [0, l].
template <class Problem>
Problem band_problem(const Problem& p) {
  Problem a = p;
  a.mask = MaskParams{};
  a.mask.causal = true;
  a.mask.window_left = p.mask.strided;
  return a;
}

/// Residue class c: queries at positions p = c + a l for a in [a_lo, a_lo + nq) (query rows
/// i = p - (Sk - Sq)), keys c + b l for b in [0, nk). A query sees keys b <= a - 2 (d = p - j a
/// multiple of l beyond the band): with nk = a_hi - 2 that is bottom-right causal.
struct ClassRows {
  int a_lo = 0, nq = 0, nk = 0;
  int first_row(const AttentionProblem& p, int c) const {
    return c + a_lo * p.mask.strided - (p.seqlen_k - p.seqlen_q);
  }
};
ClassRows class_rows(const AttentionProblem& p, int c) {
  const int l = p.mask.strided, off = p.seqlen_k - p.seqlen_q;
  ClassRows r;
  const int a_hi = c < p.seqlen_k ? (p.seqlen_k - c + l - 1) / l : 0;  // positions c + a l <= Sk - 1
  r.a_lo = off > c ? (off - c + l - 1) / l : 0;                        // positions >= off
  r.nq = std::max(0, a_hi - r.a_lo);
  r.nk = std::max(0, a_hi - 2);
  return r;
}

/// A tensor of rows (query or key) restricted to the rows first, first + l, ...: pointer and
/// token stride; the other strides stay.
template <class Ptr>
void every_lth_row(Ptr& data, detail::TokenLayout& layout, std::int64_t first, int l) {
  if (data != nullptr) data = data + first * layout.token_stride;
  layout.token_stride *= l;
}

/// Class c's inputs as strided views of p's (q and, for the backward, out / dout / lse by query
/// row; k and v by key row), with the class's causal mask and lengths.
template <class Problem>
Problem class_inputs(const Problem& p, int c, const ClassRows& r) {
  const int l = p.mask.strided;
  const std::int64_t row = r.first_row(p, c);
  Problem q = p;
  q.mask = MaskParams{};
  q.mask.causal = true;
  q.seqlen_q = r.nq;
  q.seqlen_k = r.nk;
  const float* qp = static_cast<const float*>(p.q);
  every_lth_row(qp, q.q_layout, row, l);
  q.q = qp;
  const float* kp = static_cast<const float*>(p.k);
  every_lth_row(kp, q.k_layout, c, l);
  q.k = kp;
  const float* vp = static_cast<const float*>(p.v);
  every_lth_row(vp, q.v_layout, c, l);
  q.v = vp;
  return q;
}

/// Class c's forward; its output and lse go to o_b and lse_b (laid out as (B, Sq, Hq, Dv) and
/// (B, Hq, Sq)).
AttentionProblem class_problem(const AttentionProblem& p, int c, const ClassRows& r, float* o_b, float* lse_b) {
  const int l = p.mask.strided;
  const std::int64_t row = r.first_row(p, c);
  AttentionProblem q = class_inputs(p, c, r);
  const std::int64_t Hq = p.heads_q, Dv = p.head_dim_v, Sq = p.seqlen_q;
  q.out = o_b != nullptr ? o_b + row * Hq * Dv : nullptr;  // nullptr: sizing only
  q.out_layout = {};
  q.out_layout.batch_stride = Sq * Hq * Dv;
  q.out_layout.token_stride = l * Hq * Dv;
  q.out_layout.head_stride = Dv;
  q.lse = lse_b != nullptr ? lse_b + row : nullptr;
  q.lse_layout = {};
  q.lse_layout.batch_stride = Hq * Sq;
  q.lse_layout.head_stride = Sq;
  q.lse_layout.token_stride = l;
  return q;
}

struct Scratch {
  std::size_t o_b = 0, lse = 0;  // bytes of o_b, and of each lse buffer
};
Scratch scratch_of(const AttentionProblem& p) {
  const std::size_t rows = std::size_t(p.batch) * std::size_t(p.seqlen_q) * std::size_t(p.heads_q);
  return {align_up(rows * std::size_t(p.head_dim_v) * sizeof(float)), align_up(rows * sizeof(float))};
}

/// Rows of `heads` x `dim` f32 values, `rows` per batch, restricted to every l-th row from
/// `first`: the class views of the backward's scratch gradients.
TokenLayout scratch_rows(std::int64_t rows, std::int64_t heads, std::int64_t dim, int l) {
  TokenLayout t;
  t.batch_stride = rows * heads * dim;
  t.token_stride = l * heads * dim;
  t.head_stride = dim;
  return t;
}

struct BwdScratch {
  std::size_t dq = 0, dk = 0, dv = 0;  // bytes
  std::size_t total() const { return dq + dk + dv; }
};
BwdScratch bwd_scratch_of(const BackwardProblem& p) {
  const std::size_t B = p.batch, Sq = p.seqlen_q, Sk = p.seqlen_k, Hq = p.heads_q, Hk = p.heads_kv;
  const std::size_t D = p.head_dim, Dv = p.head_dim_v, f = sizeof(float);
  return {align_up(B * Sq * Hq * D * f), align_up(B * Sk * Hk * D * f), align_up(B * Sk * Hk * Dv * f)};
}

/// Class c's backward: out, dout and lse (inputs) as strided views by query row as well; its
/// gradients go to scratch laid out (B, Sq, Hq, D), (B, Sk, Hk, D) and (B, Sk, Hk, Dv).
BackwardProblem class_backward(const BackwardProblem& p, int c, const ClassRows& r, float* dq, float* dk,
                               float* dv) {
  const int l = p.mask.strided;
  const std::int64_t row = r.first_row(p, c);
  BackwardProblem q = class_inputs(p, c, r);
  float* out = static_cast<float*>(p.out);
  every_lth_row(out, q.out_layout, row, l);
  q.out = out;
  const float* dout = static_cast<const float*>(p.dout);
  every_lth_row(dout, q.dout_layout, row, l);
  q.dout = dout;
  float* lse = p.lse;
  every_lth_row(lse, q.lse_layout, row, l);
  q.lse = lse;
  const std::int64_t Sq = p.seqlen_q, Sk = p.seqlen_k, Hq = p.heads_q, Hk = p.heads_kv;
  const std::int64_t D = p.head_dim, Dv = p.head_dim_v;
  q.dq = dq != nullptr ? dq + row * Hq * D : nullptr;  // nullptr: sizing only
  q.dq_layout = scratch_rows(Sq, Hq, D, l);
  q.dk = dk != nullptr ? dk + c * Hk * D : nullptr;
  q.dk_layout = scratch_rows(Sk, Hk, D, l);
  q.dv = dv != nullptr ? dv + c * Hk * Dv : nullptr;
  q.dv_layout = scratch_rows(Sk, Hk, Dv, l);
  return q;
}

}  // namespace

bool strided_split_applies(const AttentionProblem& p) {
  const MaskParams& m = p.mask;
  const bool strided_only = m.strided > 0 && m.window_left < 0 && m.window_right < 0 && m.dilation == 0 &&
                            m.fixed_stride == 0 && m.block_layout == nullptr && m.num_global == 0;
  const bool padded = p.cu_seqlens_q == nullptr && p.cu_seqlens_k == nullptr && p.seqlens_k == nullptr &&
                      p.k_layout.block_table == nullptr && p.v_layout.block_table == nullptr;
  return strided_only && padded && p.dtype == DType::f32 && p.seqlen_q <= p.seqlen_k &&
         std::int64_t(p.seqlen_k) >= 4 * std::int64_t(m.strided);
}

std::size_t strided_split_workspace_size(const AttentionProblem& p,
                                         std::size_t (*inner_size)(const AttentionProblem&)) {
  const Scratch s = scratch_of(p);
  std::size_t inner = inner_size(band_problem(p));
  for (int c = 0; c < p.mask.strided; ++c) {
    const ClassRows r = class_rows(p, c);
    if (r.nq > 0 && r.nk > 0) inner = std::max(inner, inner_size(class_problem(p, c, r, nullptr, nullptr)));
  }
  return s.o_b + 2 * s.lse + align_up(inner);
}

void strided_split_forward(const AttentionProblem& p, Workspace ws,
                           std::size_t (*inner_size)(const AttentionProblem&),
                           void (*inner)(const AttentionProblem&, Workspace)) {
  const std::size_t need = strided_split_workspace_size(p, inner_size);
  ATTN_CHECK(ws.data != nullptr && ws.bytes >= need, "workspace: the cpu forward needs ", need, " bytes, got ",
             ws.bytes);
  const Scratch s = scratch_of(p);
  auto* base = static_cast<std::byte*>(ws.data);
  float* o_b = reinterpret_cast<float*>(base);
  float* lse_a = reinterpret_cast<float*>(base + s.o_b);
  float* lse_b = reinterpret_cast<float*>(base + s.o_b + s.lse);
  const Workspace rest{base + s.o_b + 2 * s.lse, ws.bytes - (s.o_b + 2 * s.lse)};
  const std::int64_t B = p.batch, Sq = p.seqlen_q, Hq = p.heads_q, Dv = p.head_dim_v;
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

  // The band, straight into out; its lse to lse_a.
  AttentionProblem band = band_problem(p);
  band.lse = lse_a;
  band.lse_layout = {};
  band.lse_layout.batch_stride = Hq * Sq;
  band.lse_layout.head_stride = Sq;
  band.lse_layout.token_stride = 1;
  inner(band, rest);

  // The classes into o_b / lse_b. Rows of a class without keys keep lse -inf (their o_b is
  // never read).
  std::fill(lse_b, lse_b + B * Hq * Sq, kMinusInf);
  for (int c = 0; c < p.mask.strided; ++c) {
    const ClassRows r = class_rows(p, c);
    if (r.nq > 0 && r.nk > 0) inner(class_problem(p, c, r, o_b, lse_b), rest);
  }

  // out = (e^{lse_a} out + e^{lse_b} o_b) / (e^{lse_a} + e^{lse_b}), per (batch, query, head).
  float* out = static_cast<float*>(p.out);
  parallel_for(B * Sq, [&](std::int64_t bi, int) {
    const std::int64_t b = bi / Sq, i = bi % Sq;
    for (std::int64_t h = 0; h < Hq; ++h) {
      const float la = lse_a[(b * Hq + h) * Sq + i], lb = lse_b[(b * Hq + h) * Sq + i];
      float* o = out + p.out_layout.offset(int(b), i, int(h));
      const float* ob = o_b + ((b * Sq + i) * Hq + h) * Dv;
      float lse = la;
      if (lb != kMinusInf) {
        if (la == kMinusInf) {
          std::copy(ob, ob + Dv, o);
          lse = lb;
        } else {
          const float m = std::max(la, lb);
          const float wa = std::exp(la - m), wb = std::exp(lb - m), inv = 1.0f / (wa + wb);
          for (std::int64_t e = 0; e < Dv; ++e) o[e] = (wa * o[e] + wb * ob[e]) * inv;
          lse = m + std::log(wa + wb);
        }
      }
      if (p.lse != nullptr) p.lse[p.lse_layout.offset(int(b), i, int(h))] = lse;
    }
  });
}

std::size_t strided_split_backward_workspace_size(const BackwardProblem& p,
                                                  std::size_t (*inner_size)(const BackwardProblem&)) {
  std::size_t inner = inner_size(band_problem(p));
  for (int c = 0; c < p.mask.strided; ++c) {
    const ClassRows r = class_rows(p, c);
    if (r.nq > 0 && r.nk > 0) inner = std::max(inner, inner_size(class_backward(p, c, r, nullptr, nullptr, nullptr)));
  }
  return bwd_scratch_of(p).total() + align_up(inner);
}

void strided_split_backward(const BackwardProblem& p, Workspace ws,
                            std::size_t (*inner_size)(const BackwardProblem&),
                            void (*inner)(const BackwardProblem&, Workspace)) {
  const std::size_t need = strided_split_backward_workspace_size(p, inner_size);
  ATTN_CHECK(ws.data != nullptr && ws.bytes >= need, "workspace: the cpu backward needs ", need, " bytes, got ",
             ws.bytes);
  const BwdScratch s = bwd_scratch_of(p);
  auto* base = static_cast<std::byte*>(ws.data);
  float* dq_b = reinterpret_cast<float*>(base);
  float* dk_b = reinterpret_cast<float*>(base + s.dq);
  float* dv_b = reinterpret_cast<float*>(base + s.dq + s.dk);
  const Workspace rest{base + s.total(), ws.bytes - s.total()};
  const std::int64_t B = p.batch, Sq = p.seqlen_q, Sk = p.seqlen_k, Hq = p.heads_q, Hk = p.heads_kv;
  const std::int64_t D = p.head_dim, Dv = p.head_dim_v;

  inner(band_problem(p), rest);  // writes every element of dq, dk and dv
  // A class's keys past its last query's reach are never written: the scratch starts at 0.
  std::fill(dq_b, dq_b + B * Sq * Hq * D, 0.0f);
  std::fill(dk_b, dk_b + B * Sk * Hk * D, 0.0f);
  std::fill(dv_b, dv_b + B * Sk * Hk * Dv, 0.0f);
  for (int c = 0; c < p.mask.strided; ++c) {
    const ClassRows r = class_rows(p, c);
    if (r.nq > 0 && r.nk > 0) inner(class_backward(p, c, r, dq_b, dk_b, dv_b), rest);
  }

  auto add = [&](void* dst, const TokenLayout& layout, const float* src, std::int64_t seq, std::int64_t heads,
                 std::int64_t dim) {
    parallel_for(B * seq, [&](std::int64_t bt, int) {
      const std::int64_t b = bt / seq, t = bt % seq;
      for (std::int64_t h = 0; h < heads; ++h) {
        float* d = static_cast<float*>(dst) + layout.offset(int(b), t, int(h));
        const float* x = src + ((b * seq + t) * heads + h) * dim;
        for (std::int64_t e = 0; e < dim; ++e) d[e] += x[e];
      }
    });
  };
  add(p.dq, p.dq_layout, dq_b, Sq, Hq, D);
  add(p.dk, p.dk_layout, dk_b, Sk, Hk, D);
  add(p.dv, p.dv_layout, dv_b, Sk, Hk, Dv);
}

}  // namespace attn::cpu
