// The mask parts of a CUDA check case (forward and backward cases share them), and the host and
// device Masks built from them: the parts that need tensors get a random block layout (block row
// 0 of head 0 empty, so some rows are fully masked) and the global-token list, on both sides.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "attn/mask.hpp"
#include "cuda/device_tensors.hpp"

namespace attn::test::cuda {

struct CaseMask {
  bool causal = false;
  int window_left = -1, window_right = -1, dilation = 0;
  int strided = 0, fixed_stride = 0, fixed_summary = 0;
  /// > 0: a random block-sparse layout of these block sizes (per query head when per_head_layout).
  int block_q = 0, block_k = 0;
  bool per_head_layout = false;
  std::vector<int> global_tokens;
};

/// The tensors behind both masks, which point into them.
struct CaseMasks {
  Tensor layout_h, globals_h, layout_d, globals_d;
  Mask host, device;
};

inline CaseMasks make_case_masks(const CaseMask& c, std::int64_t heads_q, std::int64_t max_sq, std::int64_t max_sk,
                                 std::mt19937_64& gen) {
  CaseMasks m;
  m.host.causal = c.causal;
  m.host.window_left = c.window_left;
  m.host.window_right = c.window_right;
  m.host.dilation = c.dilation;
  m.host.strided = c.strided;
  m.host.fixed_stride = c.fixed_stride;
  m.host.fixed_summary = c.fixed_summary;
  if (c.block_q > 0) {
    const std::int64_t nbq = (max_sq + c.block_q - 1) / c.block_q, nbk = (max_sk + c.block_k - 1) / c.block_k;
    m.layout_h = c.per_head_layout ? host_tensor({heads_q, nbq, nbk}, DType::u8) : host_tensor({nbq, nbk}, DType::u8);
    std::bernoulli_distribution bit(0.6);
    for (std::int64_t i = 0; i < m.layout_h.numel(); ++i) m.layout_h.as<std::uint8_t>()[i] = bit(gen) ? 1 : 0;
    for (std::int64_t j = 0; j < nbk; ++j) m.layout_h.as<std::uint8_t>()[j] = 0;  // block row 0 (of head 0) empty
    m.layout_d = to_device(m.layout_h);
    m.host.block_layout = m.layout_h;
    m.host.block_q = c.block_q;
    m.host.block_k = c.block_k;
  }
  if (!c.global_tokens.empty()) {
    m.globals_h = host_i32(c.global_tokens);
    m.globals_d = to_device(m.globals_h);
    m.host.global_tokens = m.globals_h;
  }
  m.device = m.host;
  if (m.layout_d.defined()) m.device.block_layout = m.layout_d;
  if (m.globals_d.defined()) m.device.global_tokens = m.globals_d;
  return m;
}

}  // namespace attn::test::cuda
