// Tensor maps (TMA descriptors) over padded token rows for the Hopper kernels: K and V for the
// forward's producer, Q and dO for the backward. One thread then loads a whole tile with a few
// instructions instead of many cp.async per thread (the forward's consumers waited on those
// loads for a fifth of their time, ncu, bench/gpu_notes.md).
#pragma once

#include <cuda.h>  // CUtensorMap and its enums: types only, the encoder comes through the runtime

#include "problem.hpp"

namespace attn::cuda {

/// Encodes `map` over padded rows of one tensor (K, V, Q or dO): a 4-d tensor (head_dim, seqlen, heads, batch),
/// innermost first, with the layout's strides, whose boxes are `box_rows` tokens x 64 elements
/// (128 bytes) of one head, 128-byte swizzled as the wgmma operands expect (sw128_desc in
/// sm90/wgmma.cuh). Tokens at or past `seqlen` load as zeros.
///
/// Returns false, leaving the caller to load with cp.async, when TMA cannot address the rows:
/// packed or paged layouts, a base or stride that is not a multiple of 16 bytes, or a driver
/// without the encoder.
bool encode_padded_rows_map(CUtensorMap& map, const void* base, const detail::TokenLayout& layout, DType dtype,
                          int batch, int seqlen, int heads, int head_dim, int box_rows);

/// False when ATTN_CUDA_TMA=0: the Hopper kernels then load padded rows with cp.async too (for
/// comparison).
bool tma_allowed();

}  // namespace attn::cuda
