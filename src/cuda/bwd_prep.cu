// The backward's small memory-bound kernels around the main one: D_i = rowsum(dO_i * O_i) and
// lse in log2 units before, and dQ from its f32 accumulator to the storage dtype after.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/bwd_params.hpp"
#include "cuda/check.hpp"

namespace attn::cuda {
namespace {

constexpr int kPrepThreads = 256;
constexpr int kRowsPerBlock = kPrepThreads / 32;  // one warp per (query, head) row
constexpr float kLog2e = 1.4426950408889634f;

template <class T>
__device__ __forceinline__ float to_f32(T x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return __bfloat162float(x);
}
template <class T>
__device__ __forceinline__ T from_f32(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

/// Grid (row blocks, B); row = i * Hq + h over the padded rows. 16-byte loads, warp-reduced.
template <class T>
__global__ void __launch_bounds__(kPrepThreads) dot_do_o_kernel(const __grid_constant__ BwdParams params) {
  const detail::BackwardProblem& p = params.p;
  const int b = int(blockIdx.y), Hq = p.heads_q;
  const int row = int(blockIdx.x) * kRowsPerBlock + int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  if (row >= params.seqlen_q_pad * Hq) return;
  const int i = row / Hq, h = row % Hq;
  const std::int64_t out_row = (std::int64_t(b) * Hq + h) * params.seqlen_q_pad + i;
  if (i >= p.seqlen_q_of(b)) {  // padding: P = 0 there
    if (lane == 0) {
      params.lse_log2[out_row] = INFINITY;
      params.dsum[out_row] = 0.0f;
    }
    return;
  }
  const T* dout = static_cast<const T*>(p.dout) + p.dout_layout.offset(b, i, h);
  const T* out = static_cast<const T*>(p.out) + p.out_layout.offset(b, i, h);
  float acc = 0.0f;
  for (int c = lane; c < p.head_dim_v / 8; c += 32) {
    const uint4 a = *reinterpret_cast<const uint4*>(dout + c * 8);
    const uint4 o = *reinterpret_cast<const uint4*>(out + c * 8);
    const T* av = reinterpret_cast<const T*>(&a);
    const T* ov = reinterpret_cast<const T*>(&o);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(to_f32(av[e]), to_f32(ov[e]), acc);
  }
#pragma unroll
  for (int w = 16; w > 0; w /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, w);
  if (lane == 0) {
    const float lse = p.lse[p.lse_layout.offset(b, i, h)];
    params.lse_log2[out_row] = lse == -INFINITY ? INFINITY : lse * kLog2e;
    params.dsum[out_row] = acc;
  }
}

/// Grid (chunk blocks, B); each thread turns 8 accumulator values into one 16-byte store.
template <class T>
__global__ void __launch_bounds__(kPrepThreads) convert_dq_kernel(const __grid_constant__ BwdParams params) {
  const detail::BackwardProblem& p = params.p;
  const int b = int(blockIdx.y), Hq = p.heads_q, D = p.head_dim, chunks = D / 8;
  const std::int64_t id = std::int64_t(blockIdx.x) * kPrepThreads + threadIdx.x;
  const int row = int(id / chunks), c = int(id % chunks);
  if (row >= p.seqlen_q_of(b) * Hq) return;
  const int i = row / Hq, h = row % Hq;
  float vals[8];
  if (!params.dq_tiled) {
    const float* src = params.dq_accum + ((std::int64_t(b) * p.seqlen_q + i) * Hq + h) * D + c * 8;
    const float4 lo = __ldcg(reinterpret_cast<const float4*>(src));
    const float4 hi = __ldcg(reinterpret_cast<const float4*>(src + 4));
    vals[0] = lo.x, vals[1] = lo.y, vals[2] = lo.z, vals[3] = lo.w;
    vals[4] = hi.x, vals[5] = hi.y, vals[6] = hi.z, vals[7] = hi.w;
  } else {
    // The Hopper kernel's order (dq_tiled_offset, D = 128 or 64): neighbouring columns in pairs.
    constexpr int kTile = 64;
    const float* tile = params.dq_accum + ((std::int64_t(b) * Hq + h) * params.m_tiles + i / kTile) * kTile * D;
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      const float2 pair = __ldcg(reinterpret_cast<const float2*>(tile + dq_tiled_offset(i % kTile, c * 8 + e)));
      vals[e] = pair.x, vals[e + 1] = pair.y;
    }
  }
  uint4 packed;
  T* pv = reinterpret_cast<T*>(&packed);
#pragma unroll
  for (int e = 0; e < 8; ++e) pv[e] = from_f32<T>(vals[e] * p.scale);
  *reinterpret_cast<uint4*>(static_cast<T*>(p.dq) + p.dq_layout.offset(b, i, h) + c * 8) = packed;
}

using PrepKernel = void (*)(const BwdParams);

/// `per_row` threads for each of `rows` (query, head) rows per sequence; grid.y = batch.
void launch_prep(const BwdParams& params, int rows, int per_row, PrepKernel f16, PrepKernel bf16, const char* name,
                 cudaStream_t stream) {
  const detail::BackwardProblem& p = params.p;
  const std::int64_t items = std::int64_t(rows) * p.heads_q * per_row;
  const dim3 grid(unsigned((items + kPrepThreads - 1) / kPrepThreads), unsigned(p.batch));
  (p.dtype == DType::f16 ? f16 : bf16)<<<grid, kPrepThreads, 0, stream>>>(params);
  check_cuda(cudaGetLastError(), name);
}

}  // namespace

void launch_bwd_dot_do_o(const BwdParams& params, cudaStream_t stream) {
  launch_prep(params, params.seqlen_q_pad, 32, dot_do_o_kernel<__half>, dot_do_o_kernel<__nv_bfloat16>, "launch of dot_do_o_kernel", stream);
}

void launch_bwd_convert_dq(const BwdParams& params, cudaStream_t stream) {
  launch_prep(params, params.p.seqlen_q, params.p.head_dim / 8, convert_dq_kernel<__half>, convert_dq_kernel<__nv_bfloat16>,
              "launch of convert_dq_kernel", stream);
}

}  // namespace attn::cuda
