// A C ABI over the CUDA forward for bench/gpu_bench.py (ctypes): the benchmark times attn and
// the PyTorch peers in one process, on the same torch-allocated tensors and CUDA events.
//
// q and out are (B, Sq, Hq, D[v]), K and V (B, Sk, Hk, D[v]): contiguous, or with the batch,
// token and head strides given in `strides` (elements; the last dimension is contiguous), e.g.
// the transposed views of (B, H, S, D) storage. K and V may instead be page pools (num_pages,
// page_size, Hk, D[v]) when block_table is set ((B, block_table_stride) page ids, with
// per-sequence lengths in seqlens_k). Every call returns 0 on success, else -1 with the
// message in attn_last_error().
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include "cuda/backend.hpp"

extern "C" {

struct AttnFwdDesc {
  int dtype;  ///< 0 f16, 1 bf16
  int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v;
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;  ///< optional (B, Hq, Sq)
  const std::int32_t* block_table;
  std::int64_t block_table_stride;
  int page_size;
  const std::int32_t* seqlens_k;  ///< optional
  int causal, window_left, window_right;
  float scale, softcap;
  /// Batch, token and head strides of q, k, v, out (in that order), in elements; a row of
  /// zeros means contiguous. Ignored for k and v page pools.
  std::int64_t strides[4][3];
};

}  // extern "C"

namespace {

thread_local std::string last_error;

attn::detail::AttentionProblem problem_of(const AttnFwdDesc& d) {
  using attn::detail::TokenLayout;
  ATTN_CHECK(d.dtype == 0 || d.dtype == 1, "dtype: expected 0 (f16) or 1 (bf16), got ", d.dtype);
  attn::detail::AttentionProblem p;
  p.batch = d.batch;
  p.seqlen_q = d.seqlen_q;
  p.seqlen_k = d.seqlen_k;
  p.heads_q = d.heads_q;
  p.heads_kv = d.heads_kv;
  p.head_dim = d.head_dim;
  p.head_dim_v = d.head_dim_v;
  p.dtype = d.dtype == 0 ? attn::DType::f16 : attn::DType::bf16;
  p.seqlens_k = d.seqlens_k;
  auto padded = [](int seqlen, int heads, int dim) {
    TokenLayout l;
    l.head_stride = dim;
    l.token_stride = std::int64_t(heads) * dim;
    l.batch_stride = std::int64_t(seqlen) * heads * dim;
    return l;
  };
  p.q = d.q;
  p.q_layout = padded(d.seqlen_q, d.heads_q, d.head_dim);
  p.out = d.out;
  p.out_layout = padded(d.seqlen_q, d.heads_q, d.head_dim_v);
  p.k = d.k;
  p.v = d.v;
  p.k_layout = padded(d.seqlen_k, d.heads_kv, d.head_dim);
  p.v_layout = padded(d.seqlen_k, d.heads_kv, d.head_dim_v);
  for (auto [layout, st] : {std::pair{&p.q_layout, d.strides[0]}, std::pair{&p.k_layout, d.strides[1]},
                            std::pair{&p.v_layout, d.strides[2]}, std::pair{&p.out_layout, d.strides[3]}}) {
    if (st[0] == 0 && st[1] == 0 && st[2] == 0) continue;
    layout->batch_stride = st[0];
    layout->token_stride = st[1];
    layout->head_stride = st[2];
  }
  if (d.block_table != nullptr) {
    for (auto [layout, dim] : {std::pair{&p.k_layout, d.head_dim}, std::pair{&p.v_layout, d.head_dim_v}}) {
      layout->batch_stride = 0;
      layout->block_table = d.block_table;
      layout->block_table_stride = d.block_table_stride;
      layout->page_size = d.page_size;
      layout->page_stride = std::int64_t(d.page_size) * d.heads_kv * dim;
    }
  }
  if (d.lse != nullptr) {
    p.lse = d.lse;
    p.lse_layout.batch_stride = std::int64_t(d.heads_q) * d.seqlen_q;
    p.lse_layout.head_stride = d.seqlen_q;
    p.lse_layout.token_stride = 1;
  }
  p.scale = d.scale > 0.0f ? d.scale : 1.0f / std::sqrt(float(d.head_dim));
  p.softcap = d.softcap;
  p.mask.causal = d.causal != 0;
  p.mask.window_left = d.window_left;
  p.mask.window_right = d.window_right;
  return p;
}

}  // namespace

extern "C" {

const char* attn_last_error() { return last_error.c_str(); }

/// Workspace bytes, or SIZE_MAX on error.
std::size_t attn_cuda_forward_workspace_size(const AttnFwdDesc* d) {
  try {
    return attn::cuda::forward_workspace_size(problem_of(*d));
  } catch (const std::exception& e) {
    last_error = e.what();
    return SIZE_MAX;
  }
}

int attn_cuda_forward(const AttnFwdDesc* d, void* workspace, std::size_t workspace_bytes) {
  try {
    attn::cuda::forward(problem_of(*d), attn::Workspace{workspace, workspace_bytes});
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

}  // extern "C"

// The backward, for bench/gpu_bench_backward.py: the forward's description (lse required)
// plus dout and the gradients, all contiguous like their forward counterparts.
extern "C" {

struct AttnBwdDesc {
  AttnFwdDesc fwd;
  const void* dout;  ///< (B, Sq, Hq, Dv)
  void* dq;          ///< (B, Sq, Hq, D)
  void* dk;          ///< (B, Sk, Hk, D)
  void* dv;          ///< (B, Sk, Hk, Dv)
  int deterministic;
};

}  // extern "C"

namespace {

attn::detail::BackwardProblem backward_problem_of(const AttnBwdDesc& d) {
  ATTN_CHECK(d.fwd.lse != nullptr, "lse: required by the backward");
  ATTN_CHECK(d.fwd.block_table == nullptr, "block_table: the backward takes contiguous K and V");
  attn::detail::BackwardProblem p;
  static_cast<attn::detail::AttentionProblem&>(p) = problem_of(d.fwd);
  p.dout = d.dout;
  p.dout_layout = p.out_layout;
  p.dq = d.dq;
  p.dq_layout = p.q_layout;
  p.dk = d.dk;
  p.dk_layout = p.k_layout;
  p.dv = d.dv;
  p.dv_layout = p.v_layout;
  p.deterministic = d.deterministic != 0;
  return p;
}

}  // namespace

extern "C" {

/// Workspace bytes, or SIZE_MAX on error.
std::size_t attn_cuda_backward_workspace_size(const AttnBwdDesc* d) {
  try {
    return attn::cuda::backward_workspace_size(backward_problem_of(*d));
  } catch (const std::exception& e) {
    last_error = e.what();
    return SIZE_MAX;
  }
}

int attn_cuda_backward(const AttnBwdDesc* d, void* workspace, std::size_t workspace_bytes) {
  try {
    attn::cuda::backward(backward_problem_of(*d), attn::Workspace{workspace, workspace_bytes});
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

}  // extern "C"

// MLA absorbed decode (head_dim 576, head_dim_v 512, one latent kv head): the values are the
// first 512 channels of the keys, so only `k` is read (a padded cache or a page pool of
// 576-wide rows, as above) and `v` is ignored; the backend sends these shapes to its MLA kernel.
namespace {

attn::detail::AttentionProblem mla_problem_of(const AttnFwdDesc& d) {
  attn::detail::AttentionProblem p = problem_of(d);
  p.v = p.k;
  p.v_layout = p.k_layout;
  return p;
}

}  // namespace

extern "C" {

/// Workspace bytes, or SIZE_MAX on error.
std::size_t attn_cuda_mla_decode_workspace_size(const AttnFwdDesc* d) {
  try {
    return attn::cuda::forward_workspace_size(mla_problem_of(*d));
  } catch (const std::exception& e) {
    last_error = e.what();
    return SIZE_MAX;
  }
}

int attn_cuda_mla_decode(const AttnFwdDesc* d, void* workspace, std::size_t workspace_bytes) {
  try {
    attn::cuda::forward(mla_problem_of(*d), attn::Workspace{workspace, workspace_bytes});
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

}  // extern "C"
