// Host-side checks and dispatch shared by the forward and backward planners (backend.cpp,
// backward.cpp): the row alignment every kernel assumes, and the compiled head-dim pairs.
#pragma once

#include <cstdint>

#include "attn/error.hpp"
#include "problem.hpp"

namespace attn::cuda {

/// The kernels copy rows 16 bytes at a time (cp.async, vector stores).
inline void check_rows_aligned(const char* name, const void* data, const detail::TokenLayout& l) {
  const bool ok = reinterpret_cast<std::uintptr_t>(data) % 16 == 0 && l.token_stride % 8 == 0 &&
                  l.head_stride % 8 == 0 && l.batch_stride % 8 == 0 && l.page_stride % 8 == 0;
  ATTN_CHECK(ok, name,
             ": the cuda backend expects 16-byte aligned rows (data pointer aligned to 16 bytes, batch/token/head/"
             "page strides multiples of 8 elements), got strides ",
             l.batch_stride, "/", l.token_stride, "/", l.head_stride);
}

/// Calls fn.template operator()<D, Dv>() for the compiled head-dim pairs of the sm80 kernels;
/// `what` names the kernels in the error ("the cuda backend", "the cuda backward").
template <class Fn>
void with_head_dims(int d, int dv, const char* what, Fn&& fn) {
  if (d == 64 && dv == 64) return fn.template operator()<64, 64>();
  if (d == 96 && dv == 96) return fn.template operator()<96, 96>();
  if (d == 128 && dv == 128) return fn.template operator()<128, 128>();
  if (d == 192 && dv == 192) return fn.template operator()<192, 192>();
  if (d == 192 && dv == 128) return fn.template operator()<192, 128>();
  if (d == 256 && dv == 256) return fn.template operator()<256, 256>();
  detail::fail("head_dim: ", what, " has no kernel for head_dim ", d, " / head_dim_v ", dv);
}

}  // namespace attn::cuda
