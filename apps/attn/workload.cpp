#include "workload.hpp"

#include <cmath>
#include <sstream>

#include "attn/half.hpp"

namespace attn::cli {
namespace {

/// splitmix64: fast, and good enough for benchmark inputs (filling 100M values with
/// std::normal_distribution would take longer than many of the runs it feeds).
struct Random {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  /// Uniform on [-sqrt(3), sqrt(3)): mean 0, variance 1.
  float unit() { return float((double(next() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 1.7320508075688772); }
};

Tensor random_tensor(std::initializer_list<std::int64_t> shape, DType dtype, Random& rng) {
  Tensor t(shape, dtype);
  const std::int64_t n = t.numel();
  switch (dtype) {
    case DType::f32:
      for (std::int64_t i = 0; i < n; ++i) t.as<float>()[i] = rng.unit();
      break;
    case DType::f16:
      for (std::int64_t i = 0; i < n; ++i) t.as<half_t>()[i] = to_half(rng.unit());
      break;
    case DType::bf16:
      for (std::int64_t i = 0; i < n; ++i) t.as<bfloat16_t>()[i] = to_bfloat16(rng.unit());
      break;
    case DType::f64:
      for (std::int64_t i = 0; i < n; ++i) t.as<double>()[i] = rng.unit();
      break;
    default:
      detail::fail("workload: cannot fill dtype ", dtype_name(dtype));
  }
  return t;
}

Tensor i32_tensor(const std::vector<std::int32_t>& values) {
  Tensor t({std::int64_t(values.size())}, DType::i32);
  for (std::size_t i = 0; i < values.size(); ++i) t.as<std::int32_t>()[i] = values[i];
  return t;
}

}  // namespace

Tensor random_input(std::initializer_list<std::int64_t> shape, DType dtype, std::uint64_t seed) {
  Random rng{seed};
  return random_tensor(shape, dtype, rng);
}

std::string Shape::str() const {
  std::ostringstream os;
  os << 'B' << batch << " S" << seqlen_q;
  if (seqlen_k != seqlen_q) os << '/' << seqlen_k;
  os << " H" << heads_q;
  if (heads_kv != heads_q) os << '/' << heads_kv;
  os << " D" << head_dim;
  if (head_dim_v != head_dim) os << '/' << head_dim_v;
  return os.str();
}

Pattern full_pattern() { return {"full", {}, {}, {}}; }
Pattern causal_pattern() { return {"causal", Mask::causal_mask(), {}, {}}; }

Pattern window_pattern(int left, int right) {
  return {"window " + std::to_string(left) + "," + std::to_string(right), Mask::window(left, right), {}, {}};
}

Pattern dilated_pattern(int left, int dilation) {
  Pattern p{"dilated " + std::to_string(left) + " g" + std::to_string(dilation), Mask::window(left, 0), {}, {}};
  p.mask.dilation = dilation;
  return p;
}

Pattern strided_pattern(int stride) {
  Pattern p{"strided " + std::to_string(stride), {}, {}, {}};
  p.mask.strided = stride;
  return p;
}

Pattern fixed_pattern(int stride, int summary) {
  Pattern p{"fixed " + std::to_string(stride) + "," + std::to_string(summary), {}, {}, {}};
  p.mask.fixed_stride = stride;
  p.mask.fixed_summary = summary;
  return p;
}

Pattern block_sparse_pattern(const Shape& s, int block, int every) {
  const int nbq = (s.seqlen_q + block - 1) / block, nbk = (s.seqlen_k + block - 1) / block;
  Pattern p{"block-sparse " + std::to_string(block), {}, Tensor({nbq, nbk}, DType::u8), {}};
  const int shift = nbk - nbq;  // bottom-right aligned, like the masks
  for (int r = 0; r < nbq; ++r)
    for (int c = 0; c < nbk; ++c)
      p.layout.as<std::uint8_t>()[r * nbk + c] = std::abs(c - (r + shift)) <= 1 || c % every == 0;
  p.mask.block_layout = p.layout;
  p.mask.block_q = p.mask.block_k = block;
  return p;
}

Pattern global_pattern(int left, std::initializer_list<std::int32_t> positions) {
  Pattern p{"global + window " + std::to_string(left), Mask::window(left, 0), {}, i32_tensor(positions)};
  p.mask.causal = true;
  p.mask.global_tokens = p.globals;
  return p;
}

ForwardArgs Workload::forward_args(const AttentionParams& params) const {
  return ForwardArgs{q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, params};
}

BackwardArgs Workload::backward_args(const AttentionParams& params) const {
  BackwardArgs b;
  b.q = q;
  b.k = k;
  b.v = v;
  b.out = out;
  b.dout = dout;
  b.lse = lse;
  b.dq = dq;
  b.dk = dk;
  b.dv = dv;
  b.cu_seqlens_q = cu_seqlens_q;
  b.cu_seqlens_k = cu_seqlens_k;
  b.params = params;
  return b;
}

std::size_t Workload::nbytes() const {
  std::size_t n = 0;
  for (const Tensor* t : {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv, &cu_seqlens_q, &cu_seqlens_k})
    n += t->defined() ? t->nbytes() : 0;
  return n;
}

Tensor on_device(const Tensor& t, Device device) {
  if (!t.defined() || t.device() == device) return t;
  Tensor d(std::span<const std::int64_t>(t.view().shape.data(), std::size_t(t.view().ndim)), t.dtype(), device);
  copy(d, t);
  return d;
}

Workload Workload::on(Device device) const {
  return {on_device(q, device),           on_device(k, device),
          on_device(v, device),           on_device(out, device),
          on_device(lse, device),         on_device(dout, device),
          on_device(dq, device),          on_device(dk, device),
          on_device(dv, device),          on_device(cu_seqlens_q, device),
          on_device(cu_seqlens_k, device)};
}

Workload make_workload(const Shape& s, bool backward, std::uint64_t seed, DType out_dtype) {
  Random rng{seed};
  Workload w;
  w.q = random_tensor({s.batch, s.seqlen_q, s.heads_q, s.head_dim}, s.dtype, rng);
  w.k = random_tensor({s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, s.dtype, rng);
  w.v = random_tensor({s.batch, s.seqlen_k, s.heads_kv, s.head_dim_v}, s.dtype, rng);
  w.out = Tensor({s.batch, s.seqlen_q, s.heads_q, s.head_dim_v}, out_dtype);
  w.lse = Tensor({s.batch, s.heads_q, s.seqlen_q}, DType::f32);
  if (backward) {
    w.dout = random_tensor({s.batch, s.seqlen_q, s.heads_q, s.head_dim_v}, out_dtype, rng);
    w.dq = Tensor({s.batch, s.seqlen_q, s.heads_q, s.head_dim}, out_dtype);
    w.dk = Tensor({s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, out_dtype);
    w.dv = Tensor({s.batch, s.seqlen_k, s.heads_kv, s.head_dim_v}, out_dtype);
  }
  return w;
}

Workload make_varlen_workload(const Shape& s, const std::vector<int>& lengths_q, const std::vector<int>& lengths_k,
                              bool backward, std::uint64_t seed, DType out_dtype) {
  ATTN_CHECK(lengths_q.size() == lengths_k.size(), "workload: expected as many query as key lengths");
  std::vector<std::int32_t> cu_q{0}, cu_k{0};
  for (std::size_t b = 0; b < lengths_q.size(); ++b) {
    cu_q.push_back(cu_q.back() + lengths_q[b]);
    cu_k.push_back(cu_k.back() + lengths_k[b]);
  }
  const std::int64_t tq = cu_q.back(), tk = cu_k.back();
  Random rng{seed};
  Workload w;
  w.q = random_tensor({tq, s.heads_q, s.head_dim}, s.dtype, rng);
  w.k = random_tensor({tk, s.heads_kv, s.head_dim}, s.dtype, rng);
  w.v = random_tensor({tk, s.heads_kv, s.head_dim_v}, s.dtype, rng);
  w.out = Tensor({tq, s.heads_q, s.head_dim_v}, out_dtype);
  w.lse = Tensor({s.heads_q, tq}, DType::f32);
  w.cu_seqlens_q = i32_tensor(cu_q);
  w.cu_seqlens_k = i32_tensor(cu_k);
  if (backward) {
    w.dout = random_tensor({tq, s.heads_q, s.head_dim_v}, out_dtype, rng);
    w.dq = Tensor({tq, s.heads_q, s.head_dim}, out_dtype);
    w.dk = Tensor({tk, s.heads_kv, s.head_dim}, out_dtype);
    w.dv = Tensor({tk, s.heads_kv, s.head_dim_v}, out_dtype);
  }
  return w;
}

}  // namespace attn::cli
