#include "validate.hpp"

#include <cmath>
#include <string>

namespace attn::detail {
namespace {

std::string dims_str(const TensorView& t) { return std::to_string(t.ndim) + " dimensions " + t.shape_str(); }

void check_same(const TensorView& t, const char* name, std::int64_t got, std::int64_t want, const char* what) {
  ATTN_CHECK(got == want, name, ": expected ", what, " = ", want, ", got ", got, " (shape ", t.shape_str(), ")");
}

void check_cu_seqlens(const std::vector<std::int32_t>& cu, const char* name, std::int64_t total) {
  ATTN_CHECK(!cu.empty() && cu[0] == 0, name, ": expected cu_seqlens[0] = 0");
  for (std::size_t b = 1; b < cu.size(); ++b)
    ATTN_CHECK(cu[b] >= cu[b - 1], name, ": expected non-decreasing offsets, got ", cu[b - 1], " then ", cu[b],
               " at index ", b);
  ATTN_CHECK(cu.back() <= total, name, ": last offset ", cu.back(), " exceeds the ", total, " packed tokens");
}

int max_len(const std::vector<std::int32_t>& cu) {
  int m = 0;
  for (std::size_t b = 1; b < cu.size(); ++b) m = std::max(m, cu[b] - cu[b - 1]);
  return m;
}

}  // namespace

void check_q_dtype(Backend backend, DType dt) {
  if (backend == Backend::reference) {
    ATTN_CHECK(is_storage_dtype(dt) || dt == DType::f64, "q: expected dtype f32, f16, bf16 or f64, got ", dtype_name(dt));
  } else {
    ATTN_CHECK(is_storage_dtype(dt), "q: expected dtype f32, f16 or bf16, got ", dtype_name(dt));
  }
}

Backend pick_backend(Backend requested, const TensorView& q) {
  if (requested == Backend::automatic) return q.device.is_cuda() ? Backend::cuda : Backend::cpu;
  if (requested == Backend::cuda) {
#if !defined(ATTN_WITH_CUDA)
    fail("backend: cuda was requested, but this build of attn has no CUDA backend (nvcc was not found)");
#endif
    ATTN_CHECK(q.device.is_cuda(), "backend: cuda expects tensors on a CUDA device, got ", q.device.str());
  } else {
    ATTN_CHECK(q.device.is_cpu(), "backend: ", backend_name(requested), " expects CPU tensors, got ", q.device.str());
  }
  return requested;
}

void check_head_dims(Backend backend, int d, int dv) {
  switch (backend) {
    case Backend::reference:
      ATTN_CHECK(d >= 1 && dv >= 1, "head_dim: expected >= 1, got ", d, " / ", dv);
      break;
    case Backend::cpu:
    case Backend::automatic:
      ATTN_CHECK(d % 8 == 0 && d >= 8 && d <= kCpuMaxHeadDim, "head_dim: the cpu backend expects a multiple of 8 in [8, ",
                 kCpuMaxHeadDim, "], got ", d);
      ATTN_CHECK(dv % 8 == 0 && dv >= 8 && dv <= kCpuMaxHeadDim,
                 "head_dim_v: the cpu backend expects a multiple of 8 in [8, ", kCpuMaxHeadDim, "], got ", dv);
      break;
    case Backend::cuda: {
      const bool same = d == dv && (d == 64 || d == 96 || d == 128 || d == 192 || d == 256);
      ATTN_CHECK(same || (d == 192 && dv == 128) || (d == 576 && dv == 512),
                 "head_dim: the cuda backend expects 64, 96, 128, 192 or 256 (head_dim_v equal, or 192/128, or MLA's "
                 "576/512), got ", d, "/", dv);
      break;
    }
  }
}

std::vector<std::int32_t> read_i32(const TensorView& t) {
  std::vector<std::int32_t> out(std::size_t(t.numel()));
  if (out.empty()) return out;
  TensorView dst = TensorView::contiguous(out.data(), DType::i32, {t.numel()});
  TensorView src = t;
  if (t.ndim != 1) {
    ATTN_CHECK(t.is_contiguous(), "index tensor: expected contiguous");
    src = TensorView::contiguous(t.data, DType::i32, {t.numel()}, t.device);
  }
  copy(dst, src);
  return out;
}

void check_tokens(const TensorView& t, const char* name, bool packed, DType dtype, Device device) {
  const int want = packed ? 3 : 4;
  ATTN_CHECK(t.defined(), name, ": required");
  ATTN_CHECK(t.data != nullptr || t.numel() == 0, name, ": null data pointer");
  ATTN_CHECK(t.ndim == want, name, ": expected ", want, " dimensions ",
             packed ? "(total_tokens, heads, dim)" : "(batch, seqlen, heads, dim)", ", got ", dims_str(t));
  ATTN_CHECK(t.dtype == dtype, name, ": expected dtype ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
  ATTN_CHECK(t.device == device, name, ": expected device ", device.str(), ", got ", t.device.str());
  ATTN_CHECK(t.stride_of(-1) == 1 || t.size(-1) == 1, name, ": expected a unit stride in the last dimension, got ",
             t.stride_of(-1));
}

TokenLayout token_layout(const TensorView& t, bool packed, const std::int32_t* cu_seqlens) {
  TokenLayout l;
  if (packed) {
    l.token_stride = t.stride[0];
    l.head_stride = t.stride[1];
    l.cu_seqlens = cu_seqlens;
  } else {
    l.batch_stride = t.stride[0];
    l.token_stride = t.stride[1];
    l.head_stride = t.stride[2];
  }
  return l;
}

MaskParams resolve_mask(const Mask& mask, int heads_q, int max_sq, int max_sk, Device device) {
  MaskParams m;
  ATTN_CHECK(mask.window_left >= -1, "window: expected left >= -1 (-1 = unbounded), got ", mask.window_left);
  ATTN_CHECK(mask.window_right >= -1, "window: expected right >= -1 (-1 = unbounded), got ", mask.window_right);
  ATTN_CHECK(mask.dilation >= 0, "dilation: expected >= 0, got ", mask.dilation);
  ATTN_CHECK(mask.strided >= 0, "strided: expected a stride >= 1 (0 = off), got ", mask.strided);
  ATTN_CHECK(mask.fixed_stride >= 0, "fixed: expected a stride >= 1 (0 = off), got ", mask.fixed_stride);
  if (mask.fixed_stride > 0)
    ATTN_CHECK(mask.fixed_summary >= 1 && mask.fixed_summary <= mask.fixed_stride,
               "fixed: expected a summary c with 1 <= c <= stride ", mask.fixed_stride, ", got ", mask.fixed_summary);
  m.causal = mask.causal;
  m.window_left = mask.window_left;
  m.window_right = mask.window_right;
  m.dilation = mask.dilation;
  m.strided = mask.strided;
  m.fixed_stride = mask.fixed_stride;
  m.fixed_summary = mask.fixed_stride > 0 ? mask.fixed_summary : 0;

  if (mask.block_layout.defined()) {
    const TensorView& L = mask.block_layout;
    ATTN_CHECK(L.dtype == DType::u8, "block_layout: expected dtype u8, got ", dtype_name(L.dtype));
    ATTN_CHECK(L.device == device, "block_layout: expected device ", device.str(), ", got ", L.device.str());
    ATTN_CHECK(L.ndim == 2 || L.ndim == 3, "block_layout: expected (nbq, nbk) or (heads_q, nbq, nbk), got ",
               dims_str(L));
    ATTN_CHECK(mask.block_q >= 1 && mask.block_k >= 1, "block: expected block sizes >= 1, got ", mask.block_q, ",",
               mask.block_k);
    const int nbq = int(L.size(-2)), nbk = int(L.size(-1));
    if (L.ndim == 3) check_same(L, "block_layout", L.size(0), heads_q, "heads_q");
    const int need_q = (max_sq + mask.block_q - 1) / mask.block_q;
    const int need_k = (max_sk + mask.block_k - 1) / mask.block_k;
    ATTN_CHECK(nbq >= need_q, "block_layout: expected at least ", need_q, " block rows (seqlen_q ", max_sq,
               " / block_q ", mask.block_q, "), got ", nbq);
    ATTN_CHECK(nbk >= need_k, "block_layout: expected at least ", need_k, " block columns (seqlen_k ", max_sk,
               " / block_k ", mask.block_k, "), got ", nbk);
    ATTN_CHECK(L.stride_of(-1) == 1, "block_layout: expected a unit stride in the last dimension");
    m.block_layout = L.as<std::uint8_t>();
    m.layout_head_stride = L.ndim == 3 ? L.stride[0] : 0;
    m.layout_row_stride = L.stride_of(-2);
    m.layout_rows = nbq;
    m.layout_cols = nbk;
    m.block_q = mask.block_q;
    m.block_k = mask.block_k;
  }
  if (mask.global_tokens.defined()) {
    const TensorView& G = mask.global_tokens;
    ATTN_CHECK(G.dtype == DType::i32, "global_tokens: expected dtype i32, got ", dtype_name(G.dtype));
    ATTN_CHECK(G.ndim == 1, "global_tokens: expected 1 dimension, got ", dims_str(G));
    ATTN_CHECK(G.device == device, "global_tokens: expected device ", device.str(), ", got ", G.device.str());
    ATTN_CHECK(G.stride[0] == 1 || G.numel() <= 1, "global_tokens: expected contiguous");
    const auto pos = read_i32(G);
    for (std::size_t i = 0; i < pos.size(); ++i) {
      ATTN_CHECK(pos[i] >= 0, "global_tokens: expected positions >= 0, got ", pos[i], " at index ", i);
      ATTN_CHECK(i == 0 || pos[i] > pos[i - 1], "global_tokens: expected strictly increasing positions, got ",
                 pos[i - 1], " then ", pos[i]);
    }
    m.global_positions = G.as<std::int32_t>();
    m.num_global = int(pos.size());
  }
  return m;
}

AttentionProblem resolve_forward(const ForwardArgs& a, Backend backend, ResolvedHost* host) {
  ATTN_CHECK(a.q.defined(), "q: required");
  const bool packed = a.cu_seqlens_q.defined() || a.cu_seqlens_k.defined();
  const DType dt = a.q.dtype;
  const Device dev = a.q.device;
  check_q_dtype(backend, dt);
  check_tokens(a.q, "q", packed, dt, dev);
  check_tokens(a.k, "k", packed, dt, dev);
  check_tokens(a.v, "v", packed, dt, dev);
  const DType out_dt = backend == Backend::reference ? a.out.dtype : dt;
  if (backend == Backend::reference)
    ATTN_CHECK(is_storage_dtype(out_dt) || out_dt == DType::f64, "out: expected a float dtype, got ",
               dtype_name(out_dt));
  check_tokens(a.out, "out", packed, out_dt, dev);

  AttentionProblem p;
  p.dtype = dt;
  const int h = packed ? 1 : 2;  // heads dimension
  p.heads_q = int(a.q.shape[h]);
  p.heads_kv = int(a.k.shape[h]);
  p.head_dim = int(a.q.shape[h + 1]);
  p.head_dim_v = int(a.v.shape[h + 1]);
  ATTN_CHECK(p.heads_q >= 1 && p.heads_kv >= 1, "k: expected heads >= 1, got q ", p.heads_q, ", k ", p.heads_kv);
  ATTN_CHECK(p.heads_q % p.heads_kv == 0, "k: expected heads_kv dividing heads_q = ", p.heads_q, ", got ", p.heads_kv);
  check_same(a.k, "k", a.k.shape[h + 1], p.head_dim, "head_dim (from q)");
  check_same(a.v, "v", a.v.shape[h], p.heads_kv, "heads_kv (from k)");
  check_same(a.v, "v", a.v.shape[0], a.k.shape[0], packed ? "total_k (from k)" : "batch (from k)");
  check_same(a.out, "out", a.out.shape[h], p.heads_q, "heads_q");
  check_same(a.out, "out", a.out.shape[h + 1], p.head_dim_v, "head_dim_v (from v)");
  check_same(a.out, "out", a.out.shape[0], a.q.shape[0], packed ? "total_q (from q)" : "batch (from q)");
  check_head_dims(backend, p.head_dim, p.head_dim_v);

  ResolvedHost local;
  ResolvedHost& hs = host != nullptr ? *host : local;
  if (packed) {
    ATTN_CHECK(a.cu_seqlens_q.defined() && a.cu_seqlens_k.defined(),
               "cu_seqlens: expected both cu_seqlens_q and cu_seqlens_k for a packed batch");
    for (const auto* cu : {&a.cu_seqlens_q, &a.cu_seqlens_k}) {
      const char* name = cu == &a.cu_seqlens_q ? "cu_seqlens_q" : "cu_seqlens_k";
      ATTN_CHECK(cu->dtype == DType::i32 && cu->ndim == 1, name, ": expected an i32 vector of batch + 1 offsets");
      ATTN_CHECK(cu->device == dev, name, ": expected device ", dev.str());
      ATTN_CHECK(cu->stride[0] == 1 || cu->numel() <= 1, name, ": expected contiguous");
    }
    ATTN_CHECK(a.cu_seqlens_q.shape[0] == a.cu_seqlens_k.shape[0] && a.cu_seqlens_q.shape[0] >= 2,
               "cu_seqlens_k: expected the same batch + 1 >= 2 entries as cu_seqlens_q, got ", a.cu_seqlens_q.shape[0],
               " and ", a.cu_seqlens_k.shape[0]);
    check_same(a.v, "v", a.v.shape[0], a.k.shape[0], "total_k");
    hs.cu_seqlens_q = read_i32(a.cu_seqlens_q);
    hs.cu_seqlens_k = read_i32(a.cu_seqlens_k);
    check_cu_seqlens(hs.cu_seqlens_q, "cu_seqlens_q", a.q.shape[0]);
    check_cu_seqlens(hs.cu_seqlens_k, "cu_seqlens_k", a.k.shape[0]);
    p.batch = int(a.cu_seqlens_q.shape[0] - 1);
    p.seqlen_q = max_len(hs.cu_seqlens_q);
    p.seqlen_k = max_len(hs.cu_seqlens_k);
    p.cu_seqlens_q = a.cu_seqlens_q.as<std::int32_t>();
    p.cu_seqlens_k = a.cu_seqlens_k.as<std::int32_t>();
  } else {
    p.batch = int(a.q.shape[0]);
    p.seqlen_q = int(a.q.shape[1]);
    p.seqlen_k = int(a.k.shape[1]);
    check_same(a.v, "v", a.v.shape[1], p.seqlen_k, "seqlen_k (from k)");
    check_same(a.out, "out", a.out.shape[1], p.seqlen_q, "seqlen_q (from q)");
  }
  p.q = a.q.data;
  p.k = a.k.data;
  p.v = a.v.data;
  p.out = a.out.data;
  p.q_layout = token_layout(a.q, packed, p.cu_seqlens_q);
  p.k_layout = token_layout(a.k, packed, p.cu_seqlens_k);
  p.v_layout = token_layout(a.v, packed, p.cu_seqlens_k);
  p.out_layout = token_layout(a.out, packed, p.cu_seqlens_q);

  if (a.lse.defined()) {
    ATTN_CHECK(a.lse.dtype == DType::f32 || (backend == Backend::reference && a.lse.dtype == DType::f64),
               "lse: expected dtype f32, got ", dtype_name(a.lse.dtype));
    ATTN_CHECK(a.lse.device == dev, "lse: expected device ", dev.str(), ", got ", a.lse.device.str());
    if (packed) {
      ATTN_CHECK(a.lse.ndim == 2 && a.lse.shape[0] == p.heads_q && a.lse.shape[1] == a.q.shape[0],
                 "lse: expected shape (", p.heads_q, ", ", a.q.shape[0], ") for a packed batch, got ", a.lse.shape_str());
      p.lse_layout.head_stride = a.lse.stride[0];
      p.lse_layout.token_stride = a.lse.stride[1];
      p.lse_layout.cu_seqlens = p.cu_seqlens_q;
    } else {
      ATTN_CHECK(a.lse.ndim == 3 && a.lse.shape[0] == p.batch && a.lse.shape[1] == p.heads_q &&
                     a.lse.shape[2] == p.seqlen_q,
                 "lse: expected shape (", p.batch, ", ", p.heads_q, ", ", p.seqlen_q, "), got ", a.lse.shape_str());
      p.lse_layout.batch_stride = a.lse.stride[0];
      p.lse_layout.head_stride = a.lse.stride[1];
      p.lse_layout.token_stride = a.lse.stride[2];
    }
    p.lse = a.lse.as<float>();
  }

  const AttentionParams& prm = a.params;
  ATTN_CHECK(std::isfinite(prm.scale) && prm.scale >= 0.0f, "scale: expected a finite value > 0 (0 = default), got ",
             prm.scale);
  ATTN_CHECK(std::isfinite(prm.softcap) && prm.softcap >= 0.0f, "softcap: expected a finite value >= 0 (0 = off), got ",
             prm.softcap);
  p.scale = prm.scale > 0.0f ? prm.scale : 1.0f / std::sqrt(float(p.head_dim));
  p.softcap = prm.softcap;
  p.mask = resolve_mask(prm.mask, p.heads_q, p.seqlen_q, p.seqlen_k, dev);
  return p;
}

BackwardProblem resolve_backward(const BackwardArgs& a, Backend backend, ResolvedHost* host) {
  ForwardArgs f;
  f.q = a.q;
  f.k = a.k;
  f.v = a.v;
  f.out = a.out;
  f.lse = a.lse;
  f.cu_seqlens_q = a.cu_seqlens_q;
  f.cu_seqlens_k = a.cu_seqlens_k;
  f.params = a.params;
  ATTN_CHECK(a.lse.defined(), "lse: required by the backward (the forward's log-sum-exp)");
  BackwardProblem p;
  static_cast<AttentionProblem&>(p) = resolve_forward(f, backend, host);
  const bool packed = a.cu_seqlens_q.defined();
  const DType dt = a.out.dtype;
  check_tokens(a.dout, "dout", packed, dt, a.q.device);
  for (int i = 0; i < a.out.ndim; ++i)
    ATTN_CHECK(a.dout.shape[i] == a.out.shape[i], "dout: expected the shape of out ", a.out.shape_str(), ", got ",
               a.dout.shape_str());
  struct Grad {
    const TensorView& g;
    const TensorView& like;
    const char* name;
  };
  for (const Grad& g : {Grad{a.dq, a.q, "dq"}, Grad{a.dk, a.k, "dk"}, Grad{a.dv, a.v, "dv"}}) {
    check_tokens(g.g, g.name, packed, backend == Backend::reference ? g.g.dtype : p.dtype, a.q.device);
    for (int i = 0; i < g.like.ndim; ++i)
      ATTN_CHECK(g.g.shape[i] == g.like.shape[i], g.name, ": expected shape ", g.like.shape_str(), ", got ",
                 g.g.shape_str());
  }
  p.dout = a.dout.data;
  p.dout_layout = token_layout(a.dout, packed, p.cu_seqlens_q);
  p.dq = a.dq.data;
  p.dq_layout = token_layout(a.dq, packed, p.cu_seqlens_q);
  p.dk = a.dk.data;
  p.dk_layout = token_layout(a.dk, packed, p.cu_seqlens_k);
  p.dv = a.dv.data;
  p.dv_layout = token_layout(a.dv, packed, p.cu_seqlens_k);
  p.deterministic = a.deterministic;
  return p;
}

}  // namespace attn::detail
