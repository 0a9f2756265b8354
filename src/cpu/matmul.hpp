// y = x W^T + b in f32 on the CPU backend's gemm (runtime ISA) and thread pool.
//
// Shapes: x (M, K), W (N, K) (nn.Linear's (out, in) layout), b (N), y (M, N); row-major with
// leading dimensions ldx, ldw, ldy (unit stride along each row).
//
// Fewer than 32 rows (decode) run the dot-product kernel on W as it is stored, spread over
// blocks of W's rows. More rows run the tile gemm (simd/gemm.hpp), which wants B = W^T with its
// columns contiguous: each task packs a block of 64 rows of W, transposed and zero-padded to the
// ISA's panel, into its thread's slice of the workspace, then runs every row of its task against
// it, so the pack is amortised over those rows. The workspace (packed block plus a C tile per
// thread) is the only memory used, asked for by matmul_workspace_bytes; the dot form needs none.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attn/attention.hpp"

namespace attn::cpu {

/// Bytes of workspace for matmul_abt of M rows with inner dimension K on up to `threads`
/// threads (0 for the dot-product form).
std::size_t matmul_workspace_bytes(std::int64_t M, std::int64_t K, int threads);

/// y (M, N) = x (M, K) W (N, K)^T + bias (N, may be null). y must not alias x or W. Runs on
/// num_threads() threads or as many as `ws` covers, whichever is fewer (at least one).
void matmul_abt(std::int64_t M, std::int64_t N, std::int64_t K, const float* x, std::int64_t ldx, const float* w,
                std::int64_t ldw, const float* bias, float* y, std::int64_t ldy, Workspace ws);

}  // namespace attn::cpu
