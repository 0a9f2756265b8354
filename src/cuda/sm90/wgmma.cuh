// Thin wrappers over the sm_90a instructions of the Hopper forward: wgmma (warpgroup matrix
// multiply, asynchronous, operands described by shared-memory descriptors), mbarrier (the
// producer / consumer handshake of the K/V pipeline), TMA tile loads, the async-proxy fence
// and named barriers.
//
// Compiled only in the sm_90a pass (see flash_fwd.cuh); the sm_80 pass never sees a wgmma.
//
// Accumulator layout of wgmma.m64nNk16 (f32): warp w of the warpgroup owns rows 16w..16w+15,
// and within a warp every 8 columns repeat mma.m16n8's C layout: d[4j + e] is row
// 16w + lane/4 + 8 (e / 2), column 8j + 2 (lane % 4) + e % 2. The register A operand of the
// register-sourced form has mma.m16n8k16's A layout per warp, so a score accumulator turns
// into a P operand with no data movement (pack2 of neighbouring pairs).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace attn::cuda::sm90 {

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier ---------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(std::uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/// Arrives and adds `bytes` to the transactions the current phase waits for (the TMA loads that
/// name this barrier count them down as they land).
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/// Waits until the phase of parity `parity` has completed. A fresh barrier is in phase 0, so
/// waiting on parity 1 returns at once (the "previous" phase counts as complete): producers
/// start there for their empty-slot barriers.
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, int parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}

/// True when the phase of parity `parity` has completed; does not wait.
__device__ __forceinline__ bool mbar_test(std::uint32_t bar, int parity) {
  std::uint32_t done = 0;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// ---- TMA --------------------------------------------------------------------------------

/// Loads the box at coordinates (c0, c1, c2, c3) (innermost first, in elements) of the tensor
/// that `map` describes (a CUtensorMap in kernel parameter space, see src/cuda/tma_map.hpp)
/// into shared memory at `dst`; the landed bytes complete transactions on barrier `bar`.
/// Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void tma_load_4d(std::uint32_t dst, const void* map, int c0, int c1, int c2, int c3,
                                            std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

/// Starts moving the box at coordinates (c0, c1, c2, c3) of the tensor that `map` describes
/// into L2, so that a later tma_load_4d of it finds it there; nothing waits for it.
__device__ __forceinline__ void tma_prefetch_l2_4d(const void* map, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.prefetch.tensor.4d.L2.global.tile [%0, {%1, %2, %3, %4}];\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}

/// Stores the box at coordinates (c0, c1, c2, c3) of the tensor that `map` describes from
/// shared memory at `src` (laid out as the map's swizzle says); rows outside the tensor are
/// not written. Asynchronous: part of this thread's bulk group (bulk_commit, bulk_wait_read
/// before `src` is written again). The writes must have been made visible to the async proxy
/// (fence_proxy_async, then a barrier with the writers).
__device__ __forceinline__ void tma_store_4d(const void* map, std::uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}

/// Stores four 8 x 8 matrices of 16-bit elements from the warp's registers: register j of
/// lane l holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of matrix j (mma's C layout),
/// and lanes 8 j .. 8 j + 7 give the shared addresses of matrix j's rows 0 .. 7 (16 bytes each).
__device__ __forceinline__ void stmatrix_x4(std::uint32_t addr, std::uint32_t r0, std::uint32_t r1, std::uint32_t r2,
                                            std::uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

/// Copies `bytes` (a multiple of 16, both addresses 16-byte aligned) from global memory to
/// shared memory at `dst`; the landed bytes complete transactions on barrier `bar`.
__device__ __forceinline__ void bulk_load(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<std::uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

/// Adds `bytes` of f32 from shared memory at `src` into global memory at `dst`, element by
/// element, atomically with respect to other reductions (one instruction instead of one atomic
/// per element). Asynchronous: part of this thread's bulk group, see bulk_commit / bulk_wait_read.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, std::uint32_t src, std::uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(dst)),
               "r"(src), "r"(bytes)
               : "memory");
}
/// Closes this thread's bulk group of the reductions issued since the last one.
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/// Waits until at most N of this thread's bulk groups still read their shared-memory source.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
/// Waits until at most N of this thread's bulk groups are still incomplete (writes included).
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

/// Makes this thread's earlier generic-proxy shared-memory writes (stores, landed cp.async)
/// visible to later async-proxy reads (wgmma operands) once a barrier orders them.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/// Barrier among `threads` threads (a warpgroup) on hardware barrier `id` (0 is __syncthreads).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/// Arrives on hardware barrier `id` without waiting (the waiting side uses named_barrier_sync).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- wgmma ------------------------------------------------------------------------------

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// After wgmma_wait: a fresh definition of each accumulator register, so that the compiler
/// cannot move a read of it above the wait (the asm that wrote it was only the issue).
template <int N>
__device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/// Shared-memory matrix descriptor for a 128-byte-swizzled operand (rows of 64 16-bit
/// elements, 8-row atoms of 1024 bytes, 16-byte chunk c of row r stored at c ^ (r % 8)).
/// Addresses are in bytes; the tile must start on a 1024-byte boundary, and the start may be
/// advanced inside an atom (by 32 bytes per 16 K-major elements) as the hardware swizzles
/// absolute address bits.
///   K-major (rows are M or N, 64 K-elements per row): lbo unused (1), sbo = 1024, the stride
///     of 8-row groups.
///   MN-major (rows are K, 64 M/N-elements per row): lbo = stride between 64-element column
///     blocks along M/N, sbo = 1024, the stride of 8-row groups along K.
__device__ __forceinline__ std::uint64_t sw128_desc(std::uint32_t addr, std::uint32_t lbo, std::uint32_t sbo) {
  std::uint64_t d = 0;
  d |= std::uint64_t((addr & 0x3FFFF) >> 4);
  d |= std::uint64_t((lbo >> 4) & 0x3FFF) << 16;
  d |= std::uint64_t((sbo >> 4) & 0x3FFF) << 32;
  d |= std::uint64_t(1) << 62;  // layout type 1: 128-byte swizzle
  return d;
}

/// `desc` (from sw128_desc) with its start address advanced by `bytes` (a multiple of 16 that
/// keeps the start inside shared memory): the start is the low field of the descriptor's low
/// word, so this is one 32-bit add. Building every k-step's descriptor from its address
/// instead costs ~6 instructions per wgmma (mask, shift, or, moves to uniform registers).
__device__ __forceinline__ std::uint64_t sw128_desc_advance(std::uint64_t desc, std::uint32_t bytes) {
  return (desc & 0xFFFFFFFF00000000ull) | std::uint32_t(std::uint32_t(desc) + (bytes >> 4));
}

// The 64 f32 accumulators of an m64n128 wgmma as asm operands %0..%63.
#define ATTN_WGMMA_D64 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define ATTN_WGMMA_D64_LIST "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// One wgmma per operand type, spelled once: TY is f16 or bf16.
#define ATTN_WGMMA_SS(TY)                                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                 \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." #TY "." #TY " " ATTN_WGMMA_D64_LIST \
               ", %64, %65, p, 1, 1, 0, 0;\n}\n"                                              \
               : ATTN_WGMMA_D64                                                                 \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate))
#define ATTN_WGMMA_RS(TY)                                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                 \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." #TY "." #TY " " ATTN_WGMMA_D64_LIST \
               ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                              \
               : ATTN_WGMMA_D64                                                                 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))

/// d (64 x 128, f32) (+)= A (64 x 16, shared, K-major) * B (128 x 16, shared, K-major)^T.
/// `accumulate` 0 overwrites d.
template <class T>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], std::uint64_t desc_a, std::uint64_t desc_b,
                                                    int accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    ATTN_WGMMA_SS(f16);
  } else {
    ATTN_WGMMA_SS(bf16);
  }
}

/// d (64 x 128, f32) += A (64 x 16, registers) * B, with B given MN-major (rows are K): the
/// transposed-B form (imm-trans-b 1), as V sits in shared memory with keys as rows.
template <class T>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const std::uint32_t (&a)[4], std::uint64_t desc_b,
                                                    int accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    ATTN_WGMMA_RS(f16);
  } else {
    ATTN_WGMMA_RS(bf16);
  }
}

// The 32 f32 accumulators of an m64n64 wgmma as asm operands %0..%31.
#define ATTN_WGMMA_D32 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define ATTN_WGMMA_D32_LIST "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define ATTN_WGMMA_SS64(TY)                                                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." #TY "." #TY " " ATTN_WGMMA_D32_LIST        \
               ", %32, %33, p, 1, 1, %35, %36;\n}\n"                                                 \
               : ATTN_WGMMA_D32                                                                        \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB))

/// d (64 x 64, f32) (+)= A (64 x 16) * B (64 x 16)^T, both from shared memory; kTransA /
/// kTransB 1: that operand is given MN-major (its rows are K), as for dQ = dS K in the backward.
template <class T, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], std::uint64_t desc_a, std::uint64_t desc_b,
                                                   int accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    ATTN_WGMMA_SS64(f16);
  } else {
    ATTN_WGMMA_SS64(bf16);
  }
}

#define ATTN_WGMMA_RS64(TY)                                                                            \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." #TY "." #TY " " ATTN_WGMMA_D32_LIST        \
               ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                       \
               : ATTN_WGMMA_D32                                                                        \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))

/// d (64 x 64, f32) += A (64 x 16, registers) * B, with B given MN-major (rows are K), as
/// wgmma_m64n128k16_rs: O += P V at head dim 64.
template <class T>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const std::uint32_t (&a)[4], std::uint64_t desc_b,
                                                   int accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    ATTN_WGMMA_RS64(f16);
  } else {
    ATTN_WGMMA_RS64(bf16);
  }
}

#undef ATTN_WGMMA_RS64
#undef ATTN_WGMMA_SS64
#undef ATTN_WGMMA_D32_LIST
#undef ATTN_WGMMA_D32
#undef ATTN_WGMMA_SS
#undef ATTN_WGMMA_RS
#undef ATTN_WGMMA_D64_LIST
#undef ATTN_WGMMA_D64

}  // namespace attn::cuda::sm90
