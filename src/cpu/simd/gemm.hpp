// Register-blocked f32 matrix multiply for the CPU kernels' tiles (forward and backward).
//
// Interface (for kernel authors):
//   gemm<V, Accumulate, TransA>(M, N, K, A, lda, B, ldb, C, ldc)
//     C (M x N) = A (M x K) · B (K x N)        Accumulate = false
//     C (M x N) += A (M x K) · B (K x N)       Accumulate = true
//   Row-major f32 everywhere: B(k, j) = B[k * ldb + j], C(i, j) = C[i * ldc + j].
//   A(i, k) = A[i * lda + k], or A[k * lda + i] when TransA (A is stored K x M), so both S·V
//   from a key-major score tile and Q·K-style products need no explicit transposition.
//   N must be a multiple of the panel, NV vectors (template argument, default 2: 16 floats
//   for AVX2, 32 for AVX-512, 2 for scalar): pad B and C with zero columns. NV = 1 halves the
//   padding for narrow products (decode's few query rows) at a lower peak. M and K are arbitrary (K = 0 writes zeros or
//   leaves C as is). B must be stored with its columns contiguous; there is no TransB: pack
//   the transpose into the workspace when you need one.
//
// Why this shape: tiles are small (<= 64 x 256) and live in L1/L2, so no packing of A or B is
// needed. The micro-kernel keeps an MR x (2 vectors) block of C in registers; per k it loads
// 2 vectors of B and broadcasts MR scalars of A, for 2*MR FMAs:
//   AVX2    6 x 16: 12 accumulators + 2 B + 1 A broadcast = 15 of 16 ymm registers
//           (NV = 1: 12 x 8, 12 accumulators)
//   AVX-512 12 x 32: 24 accumulators + 2 B + 1 A = 27 of 32 zmm registers (NV = 1: 24 x 16)
//   scalar  4 x 2 (NV = 1: 8 x 1)
// Edge rows (M % MR) use the same micro-kernel with fewer rows.
//
// gemm_abt is the dot-product form for products with few rows of A (decode's projections):
// C (M x N) = A (M x K) · B^T with B stored N x K, rows contiguous along k (nn.Linear's weight
// layout). Vectors run along k, so B needs no packing; four rows of B share each load of A's row
// and each output is one horizontal sum at the end. Any M, N, K.
//
// Included only from a kernels_<isa>.cpp, inside that ISA's namespace (see kernels_scalar.cpp).
#pragma once

#ifndef ATTN_CPU_ISA
#error "gemm.hpp is included from a kernels_<isa>.cpp that defines ATTN_CPU_ISA"
#endif

namespace attn::cpu::ATTN_CPU_ISA {

template <class V, int NV = 2>
inline constexpr int kPanel = NV * V::width;
/// Rows of the micro-kernel: as many as leave registers for NV vectors of B and one of A.
template <class V, int NV = 2>
inline constexpr int kMicroRows = (V::width >= 16 ? 24 : V::width >= 8 ? 12 : 8) / NV;

template <class V, int NV, int MR, bool Accumulate, bool TransA>
inline void gemm_micro(int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  constexpr int W = V::width;
  V c[MR][NV];
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int n = 0; n < NV; ++n) c[i][n] = Accumulate ? V::load(C + i * ldc + n * W) : V::zero();
  for (int k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 2
    for (int n = 0; n < NV; ++n) b[n] = V::load(B + std::ptrdiff_t(k) * ldb + n * W);
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) {
      const V a = V::set1(TransA ? A[std::ptrdiff_t(k) * lda + i] : A[std::ptrdiff_t(i) * lda + k]);
#pragma GCC unroll 2
      for (int n = 0; n < NV; ++n) c[i][n] = V::fma(a, b[n], c[i][n]);
    }
  }
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int n = 0; n < NV; ++n) c[i][n].store(C + i * ldc + n * W);
}

/// Rows < MR: picks the micro-kernel of exactly `rows` rows.
template <class V, int NV, int MR, bool Accumulate, bool TransA>
inline void gemm_edge(int rows, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  if constexpr (MR > 0) {
    if (rows == MR) return gemm_micro<V, NV, MR, Accumulate, TransA>(K, A, lda, B, ldb, C, ldc);
    gemm_edge<V, NV, MR - 1, Accumulate, TransA>(rows, K, A, lda, B, ldb, C, ldc);
  }
}

template <class V, bool Accumulate, bool TransA = false, int NV = 2>
void gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  constexpr int MR = kMicroRows<V, NV>;
  // Row blocks outermost: the MR rows of A stay in L1 while every panel of B streams past.
  for (int i = 0; i < M; i += MR) {
    const int rows = M - i < MR ? M - i : MR;
    const float* a = TransA ? A + i : A + std::ptrdiff_t(i) * lda;
    float* c = C + std::ptrdiff_t(i) * ldc;
    for (int j = 0; j < N; j += kPanel<V, NV>) {
      if (rows == MR)
        gemm_micro<V, NV, MR, Accumulate, TransA>(K, a, lda, B + j, ldb, c + j, ldc);
      else
        gemm_edge<V, NV, MR - 1, Accumulate, TransA>(rows, K, a, lda, B + j, ldb, c + j, ldc);
    }
  }
}

/// out[r] = a · b_r for the R rows of B at b (ldb apart), all of length K.
template <class V, int R>
inline void dot_rows(int K, const float* a, const float* b, int ldb, float* out) {
  constexpr int W = V::width;
  V acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = V::zero();
  int k = 0;
  for (; k + W <= K; k += W) {
    const V x = V::load(a + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = V::fma(x, V::load(b + std::ptrdiff_t(r) * ldb + k), acc[r]);
  }
  if (k < K) {
    const V x = V::load_n(a + k, K - k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = V::fma(x, V::load_n(b + std::ptrdiff_t(r) * ldb + k, K - k), acc[r]);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) out[r] = acc[r].reduce_add();
}

template <class V>
void gemm_abt(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
  constexpr int R = 4;
  // Rows of B outermost: four rows (R * K floats) stay in L1/L2 while every row of A passes.
  for (int j = 0; j < N; j += R) {
    const float* b = B + std::ptrdiff_t(j) * ldb;
    for (int i = 0; i < M; ++i) {
      const float* a = A + std::ptrdiff_t(i) * lda;
      float* c = C + std::ptrdiff_t(i) * ldc + j;
      if (N - j >= R) {
        dot_rows<V, R>(K, a, b, ldb, c);
      } else {
        for (int r = 0; r < N - j; ++r) dot_rows<V, 1>(K, a, b + std::ptrdiff_t(r) * ldb, ldb, c + r);
      }
    }
  }
}

}  // namespace attn::cpu::ATTN_CPU_ISA
