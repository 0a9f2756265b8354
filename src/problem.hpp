// The validated, resolved form of an attention call that every backend consumes.
//
// The dispatch layer (src/attention.cpp, src/validate.cpp) checks the public arguments once
// and fills an AttentionProblem; kernels never see TensorViews. Padded, packed (varlen) and
// paged tensors are all described by a TokenLayout, so one kernel serves all three.
#pragma once

#include <cstdint>

#include "attn/dtype.hpp"

// Always inlined, also at -O0: the CPU kernels are compiled once per instruction set
// (src/cpu/kernels_<isa>.cpp), and an out-of-line copy emitted by an AVX-512 file could be
// the one the linker keeps for every caller.
#if defined(__CUDACC__)
#define ATTN_HD __host__ __device__ __forceinline__
#else
#define ATTN_HD inline __attribute__((always_inline))
#endif

namespace attn::detail {

/// Largest head_dim / head_dim_v of the CPU kernels: MLA's absorbed decode attends with keys of
/// kv_lora_rank + rope_dim = 576 and values of 512. A multiple of every ISA's gemm panel (32),
/// so a padded head dim never exceeds it; sizes the kernels' per-row stack buffers.
inline constexpr int kCpuMaxHeadDim = 576;

/// Where the vector of (sequence b, token t, head h) starts, in elements from the base pointer.
///   padded: b * batch_stride + t * token_stride + h * head_stride
///   packed: (cu_seqlens[b] + t) * token_stride + h * head_stride
///   paged:  block_table[b * block_table_stride + t / page_size] * page_stride
///           + (t % page_size) * token_stride + h * head_stride
struct TokenLayout {
  std::int64_t batch_stride = 0;
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;
  const std::int32_t* cu_seqlens = nullptr;   ///< packed: (B + 1) offsets
  const std::int32_t* block_table = nullptr;  ///< paged: (B, max_pages) page ids
  std::int64_t block_table_stride = 0;
  int page_size = 0;
  std::int64_t page_stride = 0;

  ATTN_HD std::int64_t offset(int b, std::int64_t t, int h) const {
    if (block_table != nullptr) {
      const std::int64_t page = block_table[b * block_table_stride + t / page_size];
      return page * page_stride + (t % page_size) * token_stride + h * head_stride;
    }
    const std::int64_t row = cu_seqlens != nullptr ? std::int64_t(cu_seqlens[b]) + t : t;
    return (cu_seqlens != nullptr ? 0 : b * batch_stride) + row * token_stride + h * head_stride;
  }
};

/// Mask parts as plain values and pointers (see include/attn/mask.hpp for the semantics).
struct MaskParams {
  bool causal = false;
  int window_left = -1;   ///< -1 unbounded
  int window_right = -1;  ///< -1 unbounded
  int dilation = 0;
  int strided = 0;  ///< 0 = off
  int fixed_stride = 0;
  int fixed_summary = 0;
  const std::uint8_t* block_layout = nullptr;  ///< [head?][nbq][nbk]
  std::int64_t layout_head_stride = 0;         ///< 0 when one layout is shared by all heads
  std::int64_t layout_row_stride = 0;
  int layout_rows = 0;  ///< nbq
  int layout_cols = 0;  ///< nbk
  int block_q = 0;
  int block_k = 0;
  const std::int32_t* global_positions = nullptr;  ///< strictly increasing
  int num_global = 0;

  ATTN_HD bool is_full() const {
    return !causal && window_left < 0 && window_right < 0 && dilation == 0 && strided == 0 &&
           fixed_stride == 0 && block_layout == nullptr && num_global == 0;
  }
};

/// A forward attention problem (also the inputs of the backward).
struct AttentionProblem {
  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;
  int head_dim = 0;
  int head_dim_v = 0;
  DType dtype = DType::f32;  ///< storage type of q, k, v, out (and the gradients)

  /// Padded lengths; for packed batches the maxima over sequences.
  int seqlen_q = 0;
  int seqlen_k = 0;
  const std::int32_t* cu_seqlens_q = nullptr;  ///< packed queries: (B + 1)
  const std::int32_t* cu_seqlens_k = nullptr;  ///< packed keys: (B + 1)
  const std::int32_t* seqlens_k = nullptr;     ///< keys used per sequence (caches); overrides the others

  const void* q = nullptr;
  TokenLayout q_layout;
  const void* k = nullptr;
  TokenLayout k_layout;
  const void* v = nullptr;
  TokenLayout v_layout;
  void* out = nullptr;
  TokenLayout out_layout;
  /// f32; (B, Hq, Sq) padded or (Hq, Tq) packed: offset(b, i, h) with token_stride = the i stride.
  float* lse = nullptr;
  TokenLayout lse_layout;

  float scale = 1.0f;
  float softcap = 0.0f;
  MaskParams mask;

  ATTN_HD int group_size() const { return heads_q / heads_kv; }
  ATTN_HD int seqlen_q_of(int b) const {
    return cu_seqlens_q != nullptr ? cu_seqlens_q[b + 1] - cu_seqlens_q[b] : seqlen_q;
  }
  ATTN_HD int seqlen_k_of(int b) const {
    if (seqlens_k != nullptr) return seqlens_k[b];
    return cu_seqlens_k != nullptr ? cu_seqlens_k[b + 1] - cu_seqlens_k[b] : seqlen_k;
  }
};

/// The backward's extra tensors. `lse` of the base problem is an input here.
struct BackwardProblem : AttentionProblem {
  const void* dout = nullptr;
  TokenLayout dout_layout;
  void* dq = nullptr;
  TokenLayout dq_layout;
  void* dk = nullptr;
  TokenLayout dk_layout;
  void* dv = nullptr;
  TokenLayout dv_layout;
  bool deterministic = false;
};

}  // namespace attn::detail
