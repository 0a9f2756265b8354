// Planning and dispatch of the CUDA backward: checks what the kernels assume (dtype, 16-byte
// rows, head dims, grid limits), carves the workspace, and runs the three kernels.
#include "cuda/backward.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda/bwd_params.hpp"
#include "cuda/check.hpp"
#include "cuda/plan_checks.hpp"
#include "cuda/tma_map.hpp"

namespace attn::cuda {
namespace {

using detail::BackwardProblem;

constexpr std::size_t kAlign = 256;
constexpr std::size_t align_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
constexpr float kLog2e = 1.4426950408889634f;

/// The Hopper backward (src/cuda/sm90/flash_bwd.cuh) runs D = Dv = 128 or 64 on an sm_90 device, in a
/// build with sm_90a code; ATTN_CUDA_BWD=sm80 keeps the mma.sync kernel there (for comparison).
bool use_sm90_backward(const BackwardProblem& p) {
#if defined(ATTN_CUDA_HAS_SM90A)
  const char* env = std::getenv("ATTN_CUDA_BWD");
  if ((env != nullptr && std::strcmp(env, "sm80") == 0) || (p.head_dim != 128 && p.head_dim != 64) ||
      p.head_dim_v != p.head_dim)
    return false;
  // Its grid is one-dimensional: within CUDA's limit, or the sm80 kernel.
  if (std::int64_t(p.heads_kv) * p.batch * ((p.seqlen_k + 127) / 128) > 0x7fffffff) return false;
  int dev = 0, major = 0, minor = 0;
  ATTN_CUDA_CHECK(cudaGetDevice(&dev));
  ATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  ATTN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major == 9 && minor == 0;
#else
  (void)p;
  return false;
#endif
}

struct Plan {
  BwdParams params;
  std::size_t dq_bytes = 0, row_bytes = 0, counter_bytes = 0;  // row_bytes: lse_log2 and dsum each
  std::size_t total() const { return dq_bytes + 2 * row_bytes + counter_bytes; }
};

Plan plan_backward(const BackwardProblem& p) {
  ATTN_CHECK(p.dtype == DType::f16 || p.dtype == DType::bf16,
             "q: the cuda backend runs f16 and bf16 (f32 accumulation); got ", dtype_name(p.dtype),
             " (convert the inputs to bf16 or f16, or use the cpu backend)");
  // Throws, naming them, when the head dims have no kernel.
  with_head_dims(p.head_dim, p.head_dim_v, "the cuda backward", []<int, int>() {});
  ATTN_CHECK(p.seqlens_k == nullptr && p.k_layout.block_table == nullptr,
             "k: the cuda backward takes padded or packed keys, not a cache");
  check_rows_aligned("q", p.q, p.q_layout);
  check_rows_aligned("k", p.k, p.k_layout);
  check_rows_aligned("v", p.v, p.v_layout);
  check_rows_aligned("out", p.out, p.out_layout);
  check_rows_aligned("dout", p.dout, p.dout_layout);
  check_rows_aligned("dq", p.dq, p.dq_layout);
  check_rows_aligned("dk", p.dk, p.dk_layout);
  check_rows_aligned("dv", p.dv, p.dv_layout);
  ATTN_CHECK(p.batch <= 65535, "q: the cuda backend supports batch <= 65535, got ", p.batch);
  ATTN_CHECK(p.heads_kv <= 65535, "k: the cuda backend supports at most 65535 kv heads, got ", p.heads_kv);

  Plan plan;
  BwdParams& f = plan.params;
  f.p = p;
  const BwdTile tile = bwd_tile(p.head_dim);
  f.m_tiles = (p.seqlen_q + tile.block_m - 1) / tile.block_m;
  f.n_blocks = (p.seqlen_k + tile.block_n - 1) / tile.block_n;
  f.scale_log2 = p.scale * kLog2e;
  f.softcap_log2 = p.softcap * kLog2e;
  f.dq_tiled = use_sm90_backward(p);
  if (f.dq_tiled) {
    static_assert(bwd_tile(128).block_m == 64 && bwd_tile(128).block_n == 128 && bwd_tile(64).block_m == 64 &&
                      bwd_tile(64).block_n == 128,
                  "the Hopper backward's tiles");
    // Whole query tiles, so that each warpgroup adds its part of a tile with one bulk reduction.
    plan.dq_bytes = align_up(std::size_t(p.batch) * std::size_t(p.heads_q) * std::size_t(f.m_tiles) *
                             std::size_t(tile.block_m) * std::size_t(p.head_dim) * sizeof(float));
    // About four waves of blocks per chunk of heads (the kernel's block order). Measured on the
    // H100 at B 4, S 4096, H 16 (32 key blocks per head) with chunks of 1 / 5 / 16 / 64 heads:
    // 299 / 299 / 299 / 290 TFLOP/s without a mask, 243 / 247 / 253 / 250 causal.
    int dev = 0, sms = 0;
    ATTN_CUDA_CHECK(cudaGetDevice(&dev));
    ATTN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    f.head_chunk = std::max(1, std::min(p.heads_kv * p.batch, (4 * sms + f.n_blocks - 1) / std::max(1, f.n_blocks)));
    if (const char* chunk_env = std::getenv("ATTN_CUDA_BWD_CHUNK"); chunk_env != nullptr && std::atoi(chunk_env) > 0)
      f.head_chunk = std::min(p.heads_kv * p.batch, std::atoi(chunk_env));  // for measuring the order
    // Q and dO by TMA where their rows are padded; rows past seqlen_q load as zeros.
    if (tma_allowed()) {
      f.tma = encode_padded_rows_map(f.tma_q, p.q, p.q_layout, p.dtype, p.batch, p.seqlen_q, p.heads_q, p.head_dim,
                                   tile.block_m) &&
              encode_padded_rows_map(f.tma_do, p.dout, p.dout_layout, p.dtype, p.batch, p.seqlen_q, p.heads_q,
                                   p.head_dim_v, tile.block_m);
    }
  } else {
    const std::size_t rows = std::size_t(p.batch) * std::size_t(p.seqlen_q) * std::size_t(p.heads_q);
    plan.dq_bytes = align_up(rows * std::size_t(p.head_dim) * sizeof(float));
  }
  f.seqlen_q_pad = (p.seqlen_q + kBwdRowPad - 1) / kBwdRowPad * kBwdRowPad;
  plan.row_bytes =
      align_up(std::size_t(p.batch) * std::size_t(p.heads_q) * std::size_t(f.seqlen_q_pad) * sizeof(float));
  if (p.deterministic)
    plan.counter_bytes = align_up(std::size_t(p.batch) * std::size_t(p.heads_q) * std::size_t(f.m_tiles) * sizeof(int));
  return plan;
}

}  // namespace

std::size_t flash_backward_workspace_size(const BackwardProblem& p) {
  if (p.batch == 0 || p.seqlen_q == 0) return 0;
  return plan_backward(p).total();
}

void flash_backward(const BackwardProblem& p, Workspace ws) {
  // Planned before the empty-problem exit so a bad dtype is an error even with nothing to do.
  Plan plan = plan_backward(p);
  if (p.batch == 0) return;
  constexpr cudaStream_t stream = nullptr;  // the default stream
  BwdParams& f = plan.params;
  if (p.seqlen_q > 0) {
    ATTN_CHECK(ws.data != nullptr && ws.bytes >= plan.total(), "workspace: expected at least ", plan.total(),
               " bytes, got ", ws.bytes);
    char* base = static_cast<char*>(ws.data);
    f.dq_accum = reinterpret_cast<float*>(base);
    f.lse_log2 = reinterpret_cast<float*>(base + plan.dq_bytes);
    f.dsum = reinterpret_cast<float*>(base + plan.dq_bytes + plan.row_bytes);
    if (p.deterministic) f.counters = reinterpret_cast<int*>(base + plan.dq_bytes + 2 * plan.row_bytes);
    // The accumulator and the counters start at 0; the prep kernel writes every row of the others.
    ATTN_CUDA_CHECK(cudaMemsetAsync(f.dq_accum, 0, plan.dq_bytes, stream));
    if (p.deterministic) ATTN_CUDA_CHECK(cudaMemsetAsync(f.counters, 0, plan.counter_bytes, stream));
    launch_bwd_dot_do_o(f, stream);
  }
  if (f.n_blocks > 0) {
    if (f.dq_tiled) {
      const bool f16 = p.dtype == DType::f16;
      if (p.head_dim == 64) {
        f16 ? launch_flash_bwd_sm90<DType::f16, 64>(f, stream) : launch_flash_bwd_sm90<DType::bf16, 64>(f, stream);
      } else {
        f16 ? launch_flash_bwd_sm90<DType::f16, 128>(f, stream) : launch_flash_bwd_sm90<DType::bf16, 128>(f, stream);
      }
    } else {
      with_head_dims(p.head_dim, p.head_dim_v, "the cuda backward", [&]<int D, int Dv>() {
        if (p.dtype == DType::f16) {
          launch_flash_bwd<DType::f16, D, Dv>(f, stream);
        } else {
          launch_flash_bwd<DType::bf16, D, Dv>(f, stream);
        }
      });
    }
  }
  if (p.seqlen_q > 0) launch_bwd_convert_dq(f, stream);
}

}  // namespace attn::cuda
