#include "cpu/cpu_cases.hpp"

#include <cmath>

#include "support/random.hpp"

namespace attn::test {

AttentionInputs make_inputs(const AttentionCase& c) {
  AttentionInputs in;
  if (!c.varlen()) {
    in.q = randn({c.batch, c.seqlen_q, c.heads_q, c.head_dim}, c.dtype, c.q_sigma);
    in.k = randn({c.batch, c.seqlen_k, c.heads_kv, c.head_dim}, c.dtype);
    in.v = randn({c.batch, c.seqlen_k, c.heads_kv, c.dim_v()}, c.dtype);
    return in;
  }
  std::vector<std::int32_t> cq{0}, ck{0};
  for (std::size_t b = 0; b < c.lengths_q.size(); ++b) {
    cq.push_back(cq.back() + c.lengths_q[b]);
    ck.push_back(ck.back() + c.lengths_k[b]);
  }
  in.cu_q = i32(cq);
  in.cu_k = i32(ck);
  in.tokens_q = cq.back();
  in.q = randn({cq.back(), c.heads_q, c.head_dim}, c.dtype, c.q_sigma);
  in.k = randn({ck.back(), c.heads_kv, c.head_dim}, c.dtype);
  in.v = randn({ck.back(), c.heads_kv, c.dim_v()}, c.dtype);
  return in;
}

std::vector<std::int64_t> query_shape(const AttentionCase& c, const AttentionInputs& in, int dim) {
  if (c.varlen()) return {in.tokens_q, c.heads_q, dim};
  return {c.batch, c.seqlen_q, c.heads_q, dim};
}

Tensor lse_like(const AttentionCase& c, const AttentionInputs& in, DType dtype) {
  return c.varlen() ? Tensor({c.heads_q, in.tokens_q}, dtype) : Tensor({c.batch, c.heads_q, c.seqlen_q}, dtype);
}

ReferenceForward reference_forward(const AttentionCase& c, const AttentionInputs& in) {
  ReferenceForward ref;
  ref.out = Tensor(query_shape(c, in, c.dim_v()), DType::f64);
  ref.lse = lse_like(c, in, DType::f64);
  ref.args = ForwardArgs{in.q, in.k, in.v, ref.out, ref.lse, in.cu_q, in.cu_k, {}};
  ref.args.params.scale = c.scale;
  ref.args.params.softcap = c.softcap;
  ref.args.params.mask = c.mask;
  attention_forward(ref.args, Backend::reference);
  return ref;
}

double unit_roundoff(DType t) {
  return t == DType::f16 ? std::ldexp(1.0, -11) : t == DType::bf16 ? std::ldexp(1.0, -8) : 0.0;
}

std::vector<AttentionCase> strided_split_cases() {
  struct Shape {
    int l, sq, sk, hq, hkv, batch;
    float softcap;
  };
  std::vector<AttentionCase> cases;
  for (const Shape& s : {Shape{8, 64, 64, 2, 1, 1, 0.0f}, Shape{5, 130, 130, 2, 2, 2, 0.0f},
                         Shape{16, 50, 200, 6, 2, 1, 0.0f}, Shape{7, 97, 97, 3, 1, 1, 20.0f},
                         Shape{4, 1, 33, 4, 2, 3, 0.0f}, Shape{4, 16, 16, 1, 1, 1, 0.0f},
                         Shape{32, 200, 260, 2, 1, 1, 0.0f}}) {
    AttentionCase c;
    c.mask.strided = s.l;
    c.mask.causal = s.l % 2 == 0;  // implied by strided: the same set either way
    c.seqlen_q = s.sq;
    c.seqlen_k = s.sk;
    c.heads_q = s.hq;
    c.heads_kv = s.hkv;
    c.batch = s.batch;
    c.softcap = s.softcap;
    cases.push_back(c);
  }
  return cases;
}

}  // namespace attn::test
