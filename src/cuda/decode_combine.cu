// Second kernel of a split-KV forward (decode): merges the n_splits partial results of each
// (batch, query, head) row through their log-sum-exps,
//   lse = log sum_s exp(lse_s),  out = sum_s exp(lse_s - lse) * out_s,
// and writes out (storage dtype) and lse. One warp per row; partial layouts in fwd_params.hpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/check.hpp"
#include "cuda/fwd_params.hpp"

namespace attn::cuda {
namespace {

constexpr int kCombineWarps = 4;

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <class T>
__global__ void __launch_bounds__(32 * kCombineWarps) fwd_combine_kernel(const __grid_constant__ FwdParams params) {
  const detail::AttentionProblem& p = params.p;
  const int lane = int(threadIdx.x) % 32;
  const std::int64_t row = std::int64_t(blockIdx.x) * kCombineWarps + threadIdx.x / 32;  // (b, i, h)
  const int Hq = p.heads_q, Dv = p.head_dim_v;
  if (row >= std::int64_t(p.batch) * p.seqlen_q * Hq) return;
  const int h = int(row % Hq);
  const int i = int(row / Hq % p.seqlen_q);
  const int b = int(row / Hq / p.seqlen_q);
  if (i >= p.seqlen_q_of(b)) return;  // packed batches: past this sequence's end
  const std::int64_t split_stride = std::int64_t(p.batch) * p.seqlen_q * Hq;

  float mx = -INFINITY;
  for (int s = lane; s < params.n_splits; s += 32) mx = fmaxf(mx, params.lse_part[s * split_stride + row]);
  for (int d = 16; d > 0; d /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
  // All splits empty: the row allowed nothing.
  const float base = mx == -INFINITY ? 0.0f : mx;
  float total = 0.0f;
  for (int s = 0; s < params.n_splits; ++s) total += __expf(params.lse_part[s * split_stride + row] - base);
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;

  T* out = static_cast<T*>(p.out) + p.out_layout.offset(b, i, h);
  for (int d = lane; d < Dv; d += 32) {
    float acc = 0.0f;
    for (int s = 0; s < params.n_splits; ++s) {
      const float w = __expf(params.lse_part[s * split_stride + row] - base);
      acc += w * params.o_part[(s * split_stride + row) * Dv + d];
    }
    out[d] = from_float<T>(acc * inv);
  }
  if (p.lse != nullptr && lane == 0) p.lse[p.lse_layout.offset(b, i, h)] = total > 0.0f ? base + logf(total) : -INFINITY;
}

}  // namespace

void launch_fwd_combine(const FwdParams& params, cudaStream_t stream) {
  const std::int64_t rows = std::int64_t(params.p.batch) * params.p.seqlen_q * params.p.heads_q;
  const unsigned blocks = unsigned((rows + kCombineWarps - 1) / kCombineWarps);
  if (blocks == 0) return;
  if (params.p.dtype == DType::f16) {
    fwd_combine_kernel<__half><<<blocks, 32 * kCombineWarps, 0, stream>>>(params);
  } else {
    fwd_combine_kernel<__nv_bfloat16><<<blocks, 32 * kCombineWarps, 0, stream>>>(params);
  }
  ATTN_CUDA_CHECK_LAUNCH("fwd_combine_kernel");
}

}  // namespace attn::cuda
