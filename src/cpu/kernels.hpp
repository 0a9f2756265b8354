// The table of CPU kernels, one per instruction set, and the pick by active_isa().
//
// Each kernels_<isa>.cpp fills `attn::cpu::<isa>::kernels` from the kernel headers compiled
// for that ISA (kernels.inc). Code outside those files (plans, dispatch, tests) reaches the
// kernels only through this table. Add a field here and one line in kernels.inc per kernel.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attn/half.hpp"
#include "cpu/isa.hpp"
#include "problem.hpp"

namespace attn::cpu {

struct ForwardPlan;

struct Kernels {
  /// C (M x N) (+)= op(A) · B, see simd/gemm.hpp; N a multiple of gemm_panel.
  void (*gemm)(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
               bool accumulate, bool transpose_a);
  int gemm_panel;
  /// C (M x N) = A (M x K) · B^T, B stored N x K; the unpacked form for few rows (simd/gemm.hpp).
  void (*gemm_abt)(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
  /// Floats per SIMD vector (the one-vector panel, for narrow products).
  int vector_width;
  /// y[i] = 2^x[i] with the ISA's Vec::exp2 (tests measure its accuracy).
  void (*exp2)(const float* x, float* y, std::int64_t n);
  /// Storage conversions with the ISA's Vec (tests compare them bit for bit with half.hpp).
  void (*f32_to_f16)(const float* x, half_t* y, std::int64_t n);
  void (*f32_to_bf16)(const float* x, bfloat16_t* y, std::int64_t n);
  void (*f16_to_f32)(const half_t* x, float* y, std::int64_t n);
  void (*bf16_to_f32)(const bfloat16_t* x, float* y, std::int64_t n);
  /// The tiled forward (flash_forward.hpp) on a plan from plan_forward; `workspace` holds
  /// plan.workspace_bytes, 64-byte aligned.
  void (*forward)(const detail::AttentionProblem& p, const ForwardPlan& plan, std::byte* workspace);
};

namespace scalar { extern const Kernels kernels; }
namespace avx2 { extern const Kernels kernels; }
namespace avx512 { extern const Kernels kernels; }

/// The table of `isa`.
const Kernels& kernels_for(Isa isa);

}  // namespace attn::cpu
