// What the CPU forward and backward tests share: a case (shapes, dtype, mask, varlen), its
// fresh random inputs and float64 reference forward, the storage dtypes' unit roundoff, and the
// loop over every supported ISA and thread count.
//
// Shapes: q (B, Sq, Hq, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv); varlen packs the tokens of
// all sequences, (T, H, D) with cu_seqlens offsets.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"

namespace attn::test {

struct AttentionCase {
  int batch = 1, heads_q = 2, heads_kv = 1, seqlen_q = 70, seqlen_k = 70, head_dim = 64, head_dim_v = 0;
  DType dtype = DType::f32;
  Mask mask;
  float scale = 0.0f, softcap = 0.0f;
  double q_sigma = 1.0;
  bool with_lse = true;                   ///< forward: pass an lse output
  std::vector<int> lengths_q, lengths_k;  ///< varlen when set
  double tol = 1e-5;

  int dim_v() const { return head_dim_v > 0 ? head_dim_v : head_dim; }
  bool varlen() const { return !lengths_q.empty(); }
};

struct AttentionInputs {
  Tensor q, k, v, cu_q, cu_k;  ///< cu_q, cu_k only when varlen
  std::int64_t tokens_q = 0;   ///< T of the packed queries when varlen
};

/// Fresh q (sigma q_sigma), k and v in the case's dtype.
AttentionInputs make_inputs(const AttentionCase& c);

/// The queries' shape with last dimension `dim`: (B, Sq, Hq, dim), or (T, Hq, dim) when varlen.
std::vector<std::int64_t> query_shape(const AttentionCase& c, const AttentionInputs& in, int dim);

/// lse's shape for the case: (B, Hq, Sq), or (Hq, T) when varlen.
Tensor lse_like(const AttentionCase& c, const AttentionInputs& in, DType dtype);

/// The float64 reference forward of a case; `args` (with the case's scale, soft-cap and mask)
/// writes `out` (query-shaped) and `lse`.
struct ReferenceForward {
  Tensor out, lse;
  ForwardArgs args;
};
ReferenceForward reference_forward(const AttentionCase& c, const AttentionInputs& in);

/// 2^-11 for f16, 2^-8 for bf16, 0 for f32 (whose rounding the tolerances cover).
double unit_roundoff(DType t);

/// Strided-mask cases that take the CPU's band + residue-class split (cpu/strided_split.hpp):
/// strides that do and do not divide the lengths, queries starting mid-class (Sq < Sk), GQA,
/// soft-cap, decode, a causal flag beside the stride, classes too short for any key.
std::vector<AttentionCase> strided_split_cases();

/// Puts the ISA and the thread count back when a test that changes them ends.
struct RestoreCpuSettings {
  cpu::Isa isa = cpu::active_isa();
  int threads = cpu::num_threads();
  ~RestoreCpuSettings() {
    cpu::set_isa(isa);
    cpu::set_num_threads(threads);
  }
};

/// body(isa, where) with the backend set to each supported ISA and each of `thread_counts` in
/// turn; `where` names them for failure messages ("avx2 threads=2").
template <class Body>
void for_each_isa_and_threads(std::initializer_list<int> thread_counts, Body&& body) {
  RestoreCpuSettings restore;
  for (cpu::Isa isa : cpu::supported_isas())
    for (int threads : thread_counts) {
      cpu::set_isa(isa);
      cpu::set_num_threads(threads);
      body(isa, std::string(cpu::isa_name(isa)) + " threads=" + std::to_string(threads));
    }
}

}  // namespace attn::test
