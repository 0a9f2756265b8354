// Case lists that the CUDA forward and backward suites share (forward_check.cpp,
// backward_check.cpp): both case types carry the same shape, numeric and mask fields.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "attn/dtype.hpp"

namespace attn::test::cuda {

/// Every compiled (dtype, head dim) with GQA 2 and lengths that are not tile multiples, plain
/// and causal.
template <class Case>
void add_basic_cases(std::vector<Case>& cs) {
  for (DType dt : {DType::bf16, DType::f16})
    for (auto [d, dv] : {std::pair{64, 64}, {96, 96}, {128, 128}, {192, 192}, {192, 128}, {256, 256}}) {
      Case c;
      c.name = std::string("basic_") + dtype_name(dt) + "_d" + std::to_string(d) + (d != dv ? "x" + std::to_string(dv) : "");
      c.dtype = dt;
      c.head_dim = d;
      c.head_dim_v = dv;
      c.seqlen_q = 137;
      c.seqlen_k = 137;
      c.heads_kv = 2;
      c.small = d == 64 || d == 256 || d != dv;
      cs.push_back(c);
      c.name += "_causal";
      c.causal = true;
      c.seqlen_k = 201;
      c.small = false;
      cs.push_back(c);
    }
}

/// The mask parts one at a time and some combinations, on `base` (200 x 200, 2 heads), plus
/// soft-cap, scale and an empty key sequence.
template <class Case>
void add_mask_cases(std::vector<Case>& cs, const Case& base) {
  auto add = [&](const char* name, auto&& set) {
    Case c = base;
    c.name = name;
    set(c);
    cs.push_back(c);
  };
  add("causal_sq_lt_sk", [](Case& c) { c.causal = true; c.seqlen_q = 77; c.seqlen_k = 300; });
  add("causal_sq_gt_sk_fully_masked_rows", [](Case& c) { c.causal = true; c.seqlen_q = 300; c.seqlen_k = 77; c.small = true; });
  add("sq_gt_sk", [](Case& c) { c.seqlen_q = 300; c.seqlen_k = 77; });
  add("window_50_10", [](Case& c) { c.window_left = 50; c.window_right = 10; });
  add("window_64_causal", [](Case& c) { c.window_left = 64; c.causal = true; });
  add("window_0_0", [](Case& c) { c.window_left = 0; c.window_right = 0; });
  add("window_right_only", [](Case& c) { c.window_right = 3; });
  add("dilation", [](Case& c) { c.window_left = 20; c.window_right = 5; c.dilation = 2; c.small = true; });
  add("strided", [](Case& c) { c.strided = 17; });
  add("fixed", [](Case& c) { c.fixed_stride = 32; c.fixed_summary = 4; });
  add("block_layout", [](Case& c) { c.block_q = 32; c.block_k = 48; c.small = true; });
  add("block_layout_per_head", [](Case& c) { c.block_q = 16; c.block_k = 16; c.per_head_layout = true; });
  add("block_layout_causal", [](Case& c) { c.block_q = 64; c.block_k = 64; c.causal = true; });
  add("global_causal", [](Case& c) { c.global_tokens = {0, 5, 130}; c.causal = true; c.small = true; });
  add("global_window", [](Case& c) { c.global_tokens = {3, 199}; c.window_left = 8; c.window_right = 8; });
  add("softcap", [](Case& c) { c.softcap = 5.0f; c.sigma = 3.0; });
  add("scale", [](Case& c) { c.scale = 0.3f; c.causal = true; });
  add("empty_keys", [](Case& c) { c.seqlen_q = 5; c.seqlen_k = 0; c.small = true; });
}

/// Packed (varlen) batches with an empty sequence and one-token sequences: plain, causal, and
/// GQA 3 with a window in f16. Returns the last, for variants.
template <class Case>
Case add_varlen_cases(std::vector<Case>& cs, int head_dim) {
  Case v;
  v.name = "varlen";
  v.head_dim = head_dim;
  v.lens_q = {1, 77, 0, 200, 64};
  v.lens_k = {5, 77, 30, 260, 1};
  v.heads_q = 2;
  v.heads_kv = 2;
  v.small = true;
  cs.push_back(v);
  v.name = "varlen_causal";
  v.causal = true;
  v.small = false;
  cs.push_back(v);
  v.name = "varlen_gqa3_window_f16";
  v.heads_q = 6;
  v.dtype = DType::f16;
  v.causal = false;
  v.window_left = 16;
  v.window_right = 16;
  cs.push_back(v);
  return v;
}

}  // namespace attn::test::cuda
