// The attention entry points: forward and backward, on any backend.
//
// Shapes (flash_attn layout), B batch, Sq/Sk query/key lengths, Hq/Hk heads, D/Dv head dims:
//   q   (B, Sq, Hq, D)    k (B, Sk, Hk, D)    v (B, Sk, Hk, Dv)    out (B, Sq, Hq, Dv)
//   lse f32 (B, Hq, Sq)
// Variable-length batches are packed: q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv),
// out (Tq, Hq, Dv), lse (Hq, Tq), with i32 cu_seqlens_q / cu_seqlens_k of B + 1 offsets.
// Any strides with a unit-stride last dimension. Hq % Hk == 0; query head h reads kv head
// h / (Hq / Hk).
#pragma once

#include <cstddef>

#include "attn/mask.hpp"
#include "attn/tensor.hpp"

namespace attn {

struct AttentionParams {
  /// Score scale; 0 means 1 / sqrt(head_dim).
  float scale = 0.0f;
  /// Soft-capping s = cap * tanh(s / cap), applied after scaling; 0 = off.
  float softcap = 0.0f;
  Mask mask;
};

enum class Backend {
  automatic,  ///< by the tensors' device: cpu or cuda
  reference,  ///< float64 oracle (CPU tensors; outputs may be f64)
  cpu,
  cuda,
};

const char* backend_name(Backend b);
/// "auto", "reference", "cpu", "cuda"; throws naming `what`.
Backend parse_backend(const char* text, const char* what = "backend");

struct ForwardArgs {
  TensorView q, k, v;
  TensorView out;
  TensorView lse;                         ///< optional
  TensorView cu_seqlens_q, cu_seqlens_k;  ///< both or neither (varlen)
  AttentionParams params;
};

struct BackwardArgs {
  TensorView q, k, v, out, dout;
  TensorView lse;  ///< required: the forward's lse
  TensorView dq, dk, dv;
  TensorView cu_seqlens_q, cu_seqlens_k;
  AttentionParams params;
  /// Bitwise-reproducible gradients (the CPU backend always is).
  bool deterministic = false;
};

/// Caller-provided scratch memory on the tensors' device.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

/// Bytes of workspace `attention_forward` needs for these arguments on `backend`.
std::size_t attention_forward_workspace_size(const ForwardArgs& args, Backend backend = Backend::automatic);
std::size_t attention_backward_workspace_size(const BackwardArgs& args, Backend backend = Backend::automatic);

/// Validates every argument (throwing attn::Error before any work), then runs.
/// These overloads use the given workspace and never allocate.
void attention_forward(const ForwardArgs& args, Workspace workspace, Backend backend = Backend::automatic);
void attention_backward(const BackwardArgs& args, Workspace workspace, Backend backend = Backend::automatic);

/// Convenience overloads that allocate the workspace they need.
void attention_forward(const ForwardArgs& args, Backend backend = Backend::automatic);
void attention_backward(const BackwardArgs& args, Backend backend = Backend::automatic);

}  // namespace attn
