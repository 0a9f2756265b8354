// Argument validation: turns the public ForwardArgs / BackwardArgs into an AttentionProblem,
// or throws attn::Error naming the argument and what was expected. Nothing runs before this.
#pragma once

#include <vector>

#include "attn/attention.hpp"
#include "problem.hpp"

namespace attn::detail {

/// The backend a call runs on: `requested`, checked against q's device, or (automatic) the
/// one of q's device. Errors name `backend`.
Backend pick_backend(Backend requested, const TensorView& q);

/// q's dtype for a backend: f32, f16 or bf16 (the reference also takes f64).
void check_q_dtype(Backend backend, DType dt);

/// Head-dim limits of a backend ("head_dim must be ..."), checked by resolve_*.
void check_head_dims(Backend backend, int head_dim, int head_dim_v);

/// Host copies of small index tensors the checks had to read (cu_seqlens of CUDA tensors).
struct ResolvedHost {
  std::vector<std::int32_t> cu_seqlens_q, cu_seqlens_k;
};

AttentionProblem resolve_forward(const ForwardArgs& args, Backend backend, ResolvedHost* host = nullptr);
BackwardProblem resolve_backward(const BackwardArgs& args, Backend backend, ResolvedHost* host = nullptr);

/// Checks a (b, t, h, d) or packed (t, h, d) tensor: dims, dtype, device, unit last stride.
void check_tokens(const TensorView& t, const char* name, bool packed, DType dtype, Device device);
/// Fills the padded or packed TokenLayout of such a tensor.
TokenLayout token_layout(const TensorView& t, bool packed, const std::int32_t* cu_seqlens);
/// Checks the mask's parts and converts them; `max_seqlen_q/k` bound the block layout.
MaskParams resolve_mask(const Mask& mask, int heads_q, int max_seqlen_q, int max_seqlen_k, Device device);
/// Reads an i32 vector from a CPU or CUDA view.
std::vector<std::int32_t> read_i32(const TensorView& t);

}  // namespace attn::detail
