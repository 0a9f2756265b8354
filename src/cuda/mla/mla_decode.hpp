// MLA absorbed decode on CUDA: an MQA over the latent cache with head dim 576 for scores
// (kv_lora_rank 512 + rope 64) and 512 for values, the values being the first 512 channels of
// the same cache rows (v is a view of k: same pointer, same layout). See docs/modules.md.
//
// Host side: which problems take this kernel, its launch plan (query-row blocks, KV splits),
// and the dtype dispatch. Kernel in mla_decode.cuh, one instantiation per dtype in
// mla_decode_{bf16,f16}.cu. Called from backend.cpp when head_dim / head_dim_v are 576 / 512.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "attn/attention.hpp"
#include "cuda/check.hpp"
#include "cuda/fwd_params.hpp"
#include "problem.hpp"

namespace attn::cuda::mla {

inline constexpr int kHeadDim = 576;   ///< scores: [c_kv (512) ; k_rope (64)]
inline constexpr int kHeadDimV = 512;  ///< values: c_kv
/// A CTA owns 64 (query, head) rows and walks its split of the keys 64 at a time, so each K
/// tile read from memory serves 64 heads. 8 warps: 4 compute the scores (32 x 32 each), all 8
/// accumulate the output (64 rows x 64 value columns each); see mla_decode.cuh.
inline constexpr int kBlockM = 64;
inline constexpr int kBlockN = 64;
inline constexpr int kWarps = 8;
inline constexpr int kThreads = 32 * kWarps;
/// Q (64 x 576), K in two stages (2 x 64 x 576), P (64 x 64), in the storage type, plus f32
/// per-row slots (two key halves' maxima or sums, one rescale factor): 230,144 bytes, under
/// sm_90's 227 KB (232,448).
inline constexpr int kSmemBytes = (kBlockM * kHeadDim + 2 * kBlockN * kHeadDim + kBlockM * kBlockN) * 2 +
                                  3 * kBlockM * int(sizeof(float));
inline constexpr int kMaxSplits = 64;

/// Launch plan of one call. Rows of a sequence are x = i * Hq + h (query i, head h); CTA
/// (m_block, split, b) owns rows [64 m_block, 64 m_block + 64) and split `split` of the key
/// tiles its rows may reach. With n_splits > 1 partials go to the workspace in fwd_combine's
/// layout (fwd_params.hpp): o_part f32 (n_splits, B, seqlen_q, Hq, 512), lse_part (n_splits, B,
/// seqlen_q, Hq).
struct DecodeParams {
  detail::AttentionProblem p;
  int m_blocks = 0;
  int n_splits = 1;
  float scale_log2 = 0;  ///< scale * log2(e): scores go straight to exp2
  float* o_part = nullptr;
  float* lse_part = nullptr;
};

/// One explicit specialization per dtype, defined in mla_decode_bf16.cu and mla_decode_f16.cu
/// (declared here, ahead of decode() below that calls them).
template <DType dtype>
void launch_decode(const DecodeParams& params, cudaStream_t stream);
template <>
void launch_decode<DType::bf16>(const DecodeParams& params, cudaStream_t stream);
template <>
void launch_decode<DType::f16>(const DecodeParams& params, cudaStream_t stream);

/// The problems this kernel serves: backend.cpp routes these here.
inline bool is_mla_decode(const detail::AttentionProblem& p) {
  return p.head_dim == kHeadDim && p.head_dim_v == kHeadDimV;
}

struct DecodePlan {
  DecodeParams params;
  std::size_t o_part_bytes = 0;
  std::size_t workspace_bytes = 0;
};

/// Checks what the kernel assumes and picks the split count. Throws attn::Error naming the
/// argument for anything it does not support.
inline DecodePlan plan_decode(const detail::AttentionProblem& p) {
  ATTN_CHECK(p.dtype == DType::f16 || p.dtype == DType::bf16,
             "q: the cuda MLA decode (head_dim 576 / head_dim_v 512) runs f16 and bf16; got ", dtype_name(p.dtype));
  ATTN_CHECK(p.heads_kv == 1, "k: the cuda MLA decode expects one latent kv head (MQA), got heads_kv ", p.heads_kv);
  const detail::TokenLayout& kl = p.k_layout;
  const detail::TokenLayout& vl = p.v_layout;
  const bool v_is_view = p.v == p.k && vl.batch_stride == kl.batch_stride && vl.token_stride == kl.token_stride &&
                         vl.block_table == kl.block_table && vl.block_table_stride == kl.block_table_stride &&
                         vl.page_size == kl.page_size && vl.page_stride == kl.page_stride && vl.cu_seqlens == kl.cu_seqlens;
  ATTN_CHECK(v_is_view,
             "v: the cuda MLA decode expects v to be the first 512 channels of k (same data pointer, strides and "
             "pages): the latent cache holds [c_kv ; k_rope] once");
  ATTN_CHECK(p.softcap == 0.0f, "softcap: the cuda MLA decode does not soft-cap (got ", p.softcap, ")");
  detail::MaskParams only_causal = p.mask;
  only_causal.causal = false;
  ATTN_CHECK(only_causal.is_full(),
             "mask: the cuda MLA decode supports causal or no mask; window, dilation, sparse, block layout and global "
             "tokens are not supported");
  auto aligned = [](const void* data, const detail::TokenLayout& l) {
    return reinterpret_cast<std::uintptr_t>(data) % 16 == 0 && l.token_stride % 8 == 0 && l.head_stride % 8 == 0 &&
           l.batch_stride % 8 == 0 && l.page_stride % 8 == 0;
  };
  ATTN_CHECK(aligned(p.q, p.q_layout) && aligned(p.k, p.k_layout) && aligned(p.out, p.out_layout),
             "q/k/out: the cuda MLA decode expects 16-byte aligned rows (data pointers aligned to 16 bytes, strides "
             "multiples of 8 elements)");
  ATTN_CHECK(p.batch <= 65535, "q: the cuda MLA decode supports batch <= 65535, got ", p.batch);

  int dev = 0, sms = 0, smem_optin = 0;
  ATTN_CUDA_CHECK(cudaGetDevice(&dev));
  ATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  ATTN_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  ATTN_CHECK(smem_optin >= kSmemBytes, "device: the cuda MLA decode needs ", kSmemBytes,
             " bytes of shared memory per block (sm_90); this device offers ", smem_optin);

  DecodePlan plan;
  DecodeParams& d = plan.params;
  d.p = p;
  const std::int64_t rows = std::int64_t(p.seqlen_q) * p.heads_q;
  d.m_blocks = int((rows + kBlockM - 1) / kBlockM);
  ATTN_CHECK(d.m_blocks <= 65535, "q: seqlen_q * heads_q = ", rows, " is too many rows for the cuda MLA decode");
  d.scale_log2 = p.scale * 1.4426950408889634f;
  // One CTA per SM (its shared memory allows no second), so the grid runs in waves of `sms`
  // CTAs. Split the keys as little as keeps the SMs 90% busy over the waves (each split costs
  // an f32 partial and the combine): 128 CTAs on 132 SMs stay whole, 8 CTAs split 15 ways.
  const std::int64_t ctas = std::int64_t(d.m_blocks) * p.batch;
  const std::int64_t key_tiles = (std::int64_t(p.seqlen_k) + kBlockN - 1) / kBlockN;
  const std::int64_t most = std::clamp<std::int64_t>(key_tiles, 1, kMaxSplits);
  double best = 0.0;
  for (std::int64_t n = 1; n <= most && ctas > 0; ++n) {
    const std::int64_t waves = (ctas * n + sms - 1) / sms;
    const double busy = double(ctas * n) / double(waves * sms);
    if (busy > best + 1e-9) {
      best = busy;
      d.n_splits = int(n);
    }
    if (busy >= 0.9) break;
  }
  if (d.n_splits > 1) {
    constexpr std::size_t kAlign = 256;
    auto align_up = [](std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
    const std::size_t part_rows = std::size_t(d.n_splits) * std::size_t(p.batch) * std::size_t(rows);
    plan.o_part_bytes = align_up(part_rows * kHeadDimV * sizeof(float));
    plan.workspace_bytes = plan.o_part_bytes + align_up(part_rows * sizeof(float));
  }
  return plan;
}

inline std::size_t decode_workspace_size(const detail::AttentionProblem& p) {
  if (p.batch == 0 || p.seqlen_q == 0) return 0;
  return plan_decode(p).workspace_bytes;
}

/// Runs the decode (and the split combine) on `stream`, asynchronously.
inline void decode(const detail::AttentionProblem& p, Workspace ws, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0) return;  // nothing to write
  DecodePlan plan = plan_decode(p);
  DecodeParams& d = plan.params;
  if (d.n_splits > 1) place_split_partials(ws, plan.o_part_bytes, plan.workspace_bytes, d.o_part, d.lse_part);
  if (p.dtype == DType::f16) {
    launch_decode<DType::f16>(d, stream);
  } else {
    launch_decode<DType::bf16>(d, stream);
  }
  if (d.n_splits > 1) {
    // The split-KV combine of the ordinary forward reads the same partial layout.
    FwdParams f;
    f.p = p;
    f.n_splits = d.n_splits;
    f.o_part = d.o_part;
    f.lse_part = d.lse_part;
    launch_fwd_combine(f, stream);
  }
}

}  // namespace attn::cuda::mla
