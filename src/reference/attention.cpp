// Forward and backward in float64, materialising S and P for one (sequence, head) at a time.
#include <cmath>
#include <limits>
#include <vector>

#include "attn/half.hpp"
#include "reference/reference.hpp"

namespace attn::reference {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double load(const TensorView& t, std::int64_t off) {
  switch (t.dtype) {
    case DType::f32: return t.as<float>()[off];
    case DType::f16: return to_float(t.as<half_t>()[off]);
    case DType::bf16: return to_float(t.as<bfloat16_t>()[off]);
    case DType::f64: return t.as<double>()[off];
    default: return 0;
  }
}

void store(const TensorView& t, std::int64_t off, double x) {
  switch (t.dtype) {
    case DType::f32: t.as<float>()[off] = float(x); break;
    case DType::f16: t.as<half_t>()[off] = to_half(float(x)); break;
    case DType::bf16: t.as<bfloat16_t>()[off] = to_bfloat16(float(x)); break;
    case DType::f64: t.as<double>()[off] = x; break;
    default: break;
  }
}

/// Sequence b of a padded (B, S, H, D) or packed (T, H, D) tensor.
struct SeqAccess {
  const TensorView* t = nullptr;
  bool packed = false;
  std::int64_t first = 0;  // packed: first token
  int b = 0;
  std::int64_t offset(std::int64_t tok, std::int64_t h, std::int64_t d) const {
    if (packed) return (first + tok) * t->stride[0] + h * t->stride[1] + d * t->stride[2];
    return b * t->stride[0] + tok * t->stride[1] + h * t->stride[2] + d * t->stride[3];
  }
  double get(std::int64_t tok, std::int64_t h, std::int64_t d) const { return load(*t, offset(tok, h, d)); }
  void set(std::int64_t tok, std::int64_t h, std::int64_t d, double x) const { store(*t, offset(tok, h, d), x); }
  void add(std::int64_t tok, std::int64_t h, std::int64_t d, double x) const {
    const std::int64_t o = offset(tok, h, d);
    store(*t, o, load(*t, o) + x);
  }
};

struct Batch {
  bool packed = false;
  int batch = 0;
  std::vector<std::int32_t> cu_q, cu_k;
  int seqlen_q(int b, const TensorView& q) const { return packed ? cu_q[b + 1] - cu_q[b] : int(q.shape[1]); }
  int seqlen_k(int b, const TensorView& k) const { return packed ? cu_k[b + 1] - cu_k[b] : int(k.shape[1]); }
  SeqAccess q_side(const TensorView& t, int b) const { return {&t, packed, packed ? cu_q[b] : 0, b}; }
  SeqAccess k_side(const TensorView& t, int b) const { return {&t, packed, packed ? cu_k[b] : 0, b}; }
};

Batch make_batch(const TensorView& q, const TensorView& cu_q, const TensorView& cu_k) {
  Batch B;
  B.packed = cu_q.defined();
  if (B.packed) {
    for (std::int64_t i = 0; i < cu_q.numel(); ++i) B.cu_q.push_back(cu_q.as<std::int32_t>()[i * cu_q.stride[0]]);
    for (std::int64_t i = 0; i < cu_k.numel(); ++i) B.cu_k.push_back(cu_k.as<std::int32_t>()[i * cu_k.stride[0]]);
    B.batch = int(B.cu_q.size()) - 1;
  } else {
    B.batch = int(q.shape[0]);
  }
  return B;
}

/// Scores and probabilities of one (sequence, query head): S is scale*q.k (soft-capped),
/// `raw_tanh` keeps tanh(s/cap) for the backward, P = softmax over allowed keys.
struct HeadScores {
  int sq = 0, sk = 0;
  std::vector<double> s, tanh_s, p, lse;
  std::vector<char> allowed;
};

HeadScores scores(const SeqAccess& q, const SeqAccess& k, int sq, int sk, int h, int hk, int d, double scale,
                  double softcap, const Mask& mask) {
  HeadScores r;
  r.sq = sq;
  r.sk = sk;
  r.s.assign(std::size_t(sq) * sk, 0.0);
  r.tanh_s.assign(r.s.size(), 0.0);
  r.p.assign(r.s.size(), 0.0);
  r.allowed.assign(r.s.size(), 0);
  r.lse.assign(std::size_t(sq), kNegInf);
  for (int i = 0; i < sq; ++i) {
    double m = kNegInf;
    for (int j = 0; j < sk; ++j) {
      const std::size_t ij = std::size_t(i) * sk + j;
      r.allowed[ij] = mask_allows(mask, i, j, sq, sk, h) ? 1 : 0;
      double dot = 0;
      for (int e = 0; e < d; ++e) dot += q.get(i, h, e) * k.get(j, hk, e);
      double s = dot * scale;
      if (softcap > 0) {
        r.tanh_s[ij] = std::tanh(s / softcap);
        s = softcap * r.tanh_s[ij];
      }
      r.s[ij] = s;
      if (r.allowed[ij]) m = std::max(m, s);
    }
    if (m == kNegInf) continue;  // fully masked row: P = 0, lse = -inf
    double sum = 0;
    for (int j = 0; j < sk; ++j) {
      const std::size_t ij = std::size_t(i) * sk + j;
      if (r.allowed[ij]) sum += std::exp(r.s[ij] - m);
    }
    for (int j = 0; j < sk; ++j) {
      const std::size_t ij = std::size_t(i) * sk + j;
      r.p[ij] = r.allowed[ij] ? std::exp(r.s[ij] - m) / sum : 0.0;
    }
    r.lse[std::size_t(i)] = m + std::log(sum);
  }
  return r;
}

double resolved_scale(const AttentionParams& prm, int d) { return prm.scale > 0 ? prm.scale : 1.0 / std::sqrt(double(d)); }

}  // namespace

void forward(const ForwardArgs& a) {
  const Batch B = make_batch(a.q, a.cu_seqlens_q, a.cu_seqlens_k);
  const int hq = int(a.q.size(-2)), hkv = int(a.k.size(-2)), d = int(a.q.size(-1)), dv = int(a.v.size(-1));
  const int group = hq / hkv;
  const double scale = resolved_scale(a.params, d);
  for (int b = 0; b < B.batch; ++b) {
    const int sq = B.seqlen_q(b, a.q), sk = B.seqlen_k(b, a.k);
    const SeqAccess q = B.q_side(a.q, b), k = B.k_side(a.k, b), v = B.k_side(a.v, b), o = B.q_side(a.out, b);
    for (int h = 0; h < hq; ++h) {
      const int hk = h / group;
      const HeadScores S = scores(q, k, sq, sk, h, hk, d, scale, a.params.softcap, a.params.mask);
      for (int i = 0; i < sq; ++i) {
        for (int e = 0; e < dv; ++e) {
          double acc = 0;
          for (int j = 0; j < sk; ++j) acc += S.p[std::size_t(i) * sk + j] * v.get(j, hk, e);
          o.set(i, h, e, acc);
        }
        if (a.lse.defined()) {
          const std::int64_t off = B.packed ? h * a.lse.stride[0] + (B.cu_q[b] + i) * a.lse.stride[1]
                                            : b * a.lse.stride[0] + h * a.lse.stride[1] + i * a.lse.stride[2];
          store(a.lse, off, S.lse[std::size_t(i)]);
        }
      }
    }
  }
}

void backward(const BackwardArgs& a) {
  const Batch B = make_batch(a.q, a.cu_seqlens_q, a.cu_seqlens_k);
  const int hq = int(a.q.size(-2)), hkv = int(a.k.size(-2)), d = int(a.q.size(-1)), dv = int(a.v.size(-1));
  const int group = hq / hkv;
  const double scale = resolved_scale(a.params, d);
  const double cap = a.params.softcap;
  for (const TensorView* g : {&a.dq, &a.dk, &a.dv})
    for (std::int64_t n = 0; n < g->numel(); ++n) write_element(*g, n, 0.0);
  for (int b = 0; b < B.batch; ++b) {
    const int sq = B.seqlen_q(b, a.q), sk = B.seqlen_k(b, a.k);
    const SeqAccess q = B.q_side(a.q, b), k = B.k_side(a.k, b), v = B.k_side(a.v, b), dO = B.q_side(a.dout, b);
    const SeqAccess dq = B.q_side(a.dq, b), dk = B.k_side(a.dk, b), dvv = B.k_side(a.dv, b);
    for (int h = 0; h < hq; ++h) {
      const int hk = h / group;
      const HeadScores S = scores(q, k, sq, sk, h, hk, d, scale, cap, a.params.mask);
      for (int i = 0; i < sq; ++i) {
        // dP_ij = dO_i . v_j ; D_i = sum_j P_ij dP_ij ; dS_ij = P_ij (dP_ij - D_i).
        std::vector<double> dP(std::size_t(sk), 0.0);
        double D = 0;
        for (int j = 0; j < sk; ++j) {
          double acc = 0;
          for (int e = 0; e < dv; ++e) acc += dO.get(i, h, e) * v.get(j, hk, e);
          dP[std::size_t(j)] = acc;
          D += S.p[std::size_t(i) * sk + j] * acc;
        }
        for (int j = 0; j < sk; ++j) {
          const std::size_t ij = std::size_t(i) * sk + j;
          const double P = S.p[ij];
          if (P == 0.0) continue;
          for (int e = 0; e < dv; ++e) dvv.add(j, hk, e, P * dO.get(i, h, e));
          double dS = P * (dP[std::size_t(j)] - D);
          if (cap > 0) dS *= 1.0 - S.tanh_s[ij] * S.tanh_s[ij];  // d/ds of cap*tanh(s/cap)
          dS *= scale;
          for (int e = 0; e < d; ++e) {
            dq.add(i, h, e, dS * k.get(j, hk, e));
            dk.add(j, hk, e, dS * q.get(i, h, e));
          }
        }
      }
    }
  }
}

}  // namespace attn::reference
