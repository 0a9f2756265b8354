// The CPU backward against the float64 reference backward, on every ISA this CPU supports,
// with one and two threads: dtypes, head dims, GQA, every mask part, soft-cap, varlen, strided views,
// fully masked rows, huge logits; and bitwise determinism across runs and thread counts.
//
// out and lse come from the reference forward (stored as the kernel would get them), so these
// tests do not depend on the CPU forward. Tolerances, per gradient tensor with scale
// m = max |reference|: f32 storage |got - want| <= tol * m (tol 1e-5 unless the case says);
// f16 / bf16 storage, the reference runs on the same rounded q, k, v, dout, and each element
// may differ by 4 * u * (|want| + m): the output's own rounding plus the kernel's use of the
// rounded out in D = rowsum(dO * O). Every element is checked; outputs are poisoned first.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attn/attention.hpp"
#include "cpu/backend.hpp"
#include "cpu/cpu_cases.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"
#include "support/random.hpp"
#include "validate.hpp"

namespace attn {
namespace {

using Case = test::AttentionCase;
using test::randn;
using test::RestoreCpuSettings;
using test::unit_roundoff;

void expect_close(const TensorView& got, const TensorView& want, double tol, double u, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel());
  double m = 0;
  for (std::int64_t i = 0; i < want.numel(); ++i) m = std::max(m, std::abs(read_element(want, i)));
  int reported = 0;
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    const double g = read_element(got, i), w = read_element(want, i);
    const bool ok = std::isfinite(g) && std::abs(g - w) <= tol * m + 4 * u * (std::abs(w) + m);
    if (!ok && reported++ < 5) ADD_FAILURE() << what << " element " << i << ": got " << g << ", want " << w << " (scale " << m << ")";
  }
}

std::vector<std::byte> bytes_of(const Tensor& t) {
  std::vector<std::byte> out(t.view().nbytes());
  std::memcpy(out.data(), t.view().data, out.size());
  return out;
}

void run_case(const Case& c) {
  const test::AttentionInputs in = test::make_inputs(c);
  const Tensor dout = randn(test::query_shape(c, in, c.dim_v()), c.dtype);
  const test::ReferenceForward fwd = test::reference_forward(c, in);
  const Tensor out = convert(fwd.out, c.dtype), lse = convert(fwd.lse, DType::f32);

  auto like = [&](const Tensor& t, DType dt) {
    std::vector<std::int64_t> shape(t.view().shape.begin(), t.view().shape.begin() + t.view().ndim);
    return Tensor(std::span<const std::int64_t>(shape), dt);
  };
  Tensor ref_dq = like(in.q, DType::f64), ref_dk = like(in.k, DType::f64), ref_dv = like(in.v, DType::f64);
  BackwardArgs ref{in.q, in.k, in.v, out, dout, lse, ref_dq, ref_dk, ref_dv, in.cu_q, in.cu_k, fwd.args.params};
  attention_backward(ref, Backend::reference);

  Tensor dq = like(in.q, c.dtype), dk = like(in.k, c.dtype), dvt = like(in.v, c.dtype);
  BackwardArgs args = ref;
  args.dq = dq;
  args.dk = dk;
  args.dv = dvt;
  // Deterministic: every run of one ISA, whatever the thread count, gives the same bits.
  std::vector<std::vector<std::byte>> first;
  cpu::Isa first_isa{};
  test::for_each_isa_and_threads({1, 2, 2}, [&](cpu::Isa isa, const std::string& where) {
    for (const Tensor* t : {&dq, &dk, &dvt}) test::poison(*t);
    attention_backward(args, Backend::cpu);
    const double u = unit_roundoff(c.dtype);
    expect_close(dq, ref_dq, c.tol, u, "dq " + where);
    expect_close(dk, ref_dk, c.tol, u, "dk " + where);
    expect_close(dvt, ref_dv, c.tol, u, "dv " + where);
    std::vector<std::vector<std::byte>> now{bytes_of(dq), bytes_of(dk), bytes_of(dvt)};
    if (first.empty() || isa != first_isa) first = now, first_isa = isa;
    EXPECT_TRUE(now == first) << "not bitwise reproducible: " << where;
  });
}

TEST(CpuBackward, NoMaskF32) { run_case({}); }

TEST(CpuBackward, HeadDims) {
  for (int d : {8, 64, 128, 256}) {
    Case c;
    c.head_dim = d;
    c.seqlen_q = 37;
    c.seqlen_k = 81;
    run_case(c);
  }
  Case mla;  // head_dim_v != head_dim both ways
  mla.head_dim = 192;
  mla.head_dim_v = 128;
  mla.seqlen_q = 40;
  run_case(mla);
  Case narrow_v;
  narrow_v.head_dim = 64;
  narrow_v.head_dim_v = 24;
  narrow_v.mask.causal = true;
  run_case(narrow_v);
}

TEST(CpuBackward, GroupSizes) {
  for (auto [hq, hkv] : {std::pair{3, 3}, std::pair{6, 2}, std::pair{8, 1}, std::pair{96, 1}}) {
    Case c;
    c.heads_q = hq;
    c.heads_kv = hkv;
    c.seqlen_q = 19;
    c.seqlen_k = 70;
    c.head_dim = 32;
    c.mask.causal = true;
    run_case(c);
  }
}

TEST(CpuBackward, Dtypes) {
  for (DType t : {DType::f16, DType::bf16}) {
    Case c;
    c.dtype = t;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.mask.causal = true;
    c.head_dim = 72;
    run_case(c);
    Case capped = c;
    capped.mask = Mask::window(30, 10);
    capped.softcap = 5.0f;
    run_case(capped);
  }
}

TEST(CpuBackward, MaskParts) {
  Tensor layout({7, 5}, DType::u8), per_head({2, 7, 5}, DType::u8), globals = test::i32({3, 64, 101});
  for (std::int64_t i = 0; i < layout.numel(); ++i) layout.as<std::uint8_t>()[i] = (test::rng()() % 3) != 0;
  for (std::int64_t i = 0; i < per_head.numel(); ++i) per_head.as<std::uint8_t>()[i] = (test::rng()() % 3) != 0;
  std::vector<Mask> masks;
  masks.push_back(Mask::causal_mask());
  masks.push_back(Mask::window(16, 0));
  masks.push_back(Mask::window(8, 20));
  Mask dil = Mask::window(10, 4);
  dil.dilation = 2;
  masks.push_back(dil);
  Mask strided;
  strided.strided = 7;
  masks.push_back(strided);
  Mask fixed;
  fixed.fixed_stride = 16;
  fixed.fixed_summary = 3;
  masks.push_back(fixed);
  for (const Tensor* l : {&layout, &per_head}) {
    Mask block;
    block.block_layout = *l;
    block.block_q = 16;
    block.block_k = 32;
    masks.push_back(block);
  }
  Mask global = Mask::window(4, 4);
  global.global_tokens = globals;
  masks.push_back(global);
  Mask causal_global = Mask::causal_mask();
  causal_global.global_tokens = globals;
  masks.push_back(causal_global);
  for (const Mask& m : masks) {
    Case c;
    c.mask = m;
    c.seqlen_q = 100;
    c.seqlen_k = 150;
    c.heads_q = 2;
    c.head_dim = 24;
    run_case(c);
  }
}

// The strided pattern alone takes the band + residue-class split in the backward too
// (cpu/strided_split.hpp; the cases: test::strided_split_cases).
TEST(CpuBackward, StridedSplitMatchesReference) {
  for (const Case& c : test::strided_split_cases()) {
    SCOPED_TRACE("l " + std::to_string(c.mask.strided) + " sq " + std::to_string(c.seqlen_q) + " sk " +
                 std::to_string(c.seqlen_k));
    run_case(c);
  }
}

TEST(CpuBackward, VarlenWithEmptyAndSingleTokenSequences) {
  Case c;
  c.batch = 5;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim = 32;
  c.lengths_q = {30, 0, 1, 65, 7};
  c.lengths_k = {45, 9, 1, 130, 0};
  c.seqlen_q = 65;
  c.seqlen_k = 130;
  run_case(c);
  c.mask.causal = true;
  run_case(c);
}

TEST(CpuBackward, BatchPaddedAndLongerQueries) {
  Case c;  // seqlen_q > seqlen_k under causal: the first rows see no key (lse = -inf)
  c.batch = 2;
  c.seqlen_q = 90;
  c.seqlen_k = 20;
  c.mask.causal = true;
  run_case(c);
  Case w;  // block rows that see nothing at all
  w.seqlen_q = 80;
  w.seqlen_k = 80;
  Tensor layout({5, 3}, DType::u8);
  for (int i = 0; i < 15; ++i) layout.as<std::uint8_t>()[i] = i < 9;
  w.mask.block_layout = layout;
  w.mask.block_q = 16;
  w.mask.block_k = 32;
  run_case(w);
}

TEST(CpuBackward, ScaleSoftcapAndHugeLogits) {
  Case sc;
  sc.softcap = 5.0f;
  sc.scale = 0.5f;
  sc.mask.causal = true;
  run_case(sc);
  Case tiny_cap;
  tiny_cap.softcap = 0.3f;
  run_case(tiny_cap);
  Case huge;  // scores in the hundreds: f32 score rounding (~|s| * 6e-8) sets the floor
  huge.q_sigma = 100.0;
  huge.tol = 1e-3;
  huge.mask.causal = true;
  run_case(huge);
  // Capped at 30: the rounding of |s| ~ 100 (~6e-6) is damped by 1 - tanh^2 except near the cap's
  // knee, where it passes through almost whole; 2e-5 covers that (seeds 18 and 25 reached 1.08e-5).
  Case huge_capped = huge;
  huge_capped.softcap = 30.0f;
  huge_capped.tol = 2e-5;
  run_case(huge_capped);
}

TEST(CpuBackward, ManyKeyChunks) {
  Case c;  // one (sequence, kv head): the plan splits the keys into chunks with dQ partials
  c.heads_q = 1;
  c.seqlen_q = 50;
  c.seqlen_k = 700;
  c.head_dim = 16;
  run_case(c);
}

TEST(CpuBackward, CallerWorkspace) {
  Tensor q = randn({1, 40, 2, 16}, DType::f32), k = randn({1, 300, 1, 16}, DType::f32);
  Tensor v = randn({1, 300, 1, 16}, DType::f32), dout = randn({1, 40, 2, 16}, DType::f32);
  Tensor out({1, 40, 2, 16}, DType::f32), lse({1, 2, 40}, DType::f32);
  attention_forward(ForwardArgs{q, k, v, out, lse, {}, {}, {}}, Backend::cpu);
  Tensor dq({1, 40, 2, 16}, DType::f32), dk({1, 300, 1, 16}, DType::f32), dv({1, 300, 1, 16}, DType::f32);
  const BackwardArgs args{q, k, v, out, dout, lse, dq, dk, dv, {}, {}, {}};
  const std::size_t bytes = attention_backward_workspace_size(args, Backend::cpu);
  std::vector<std::byte> ws(bytes);
  test::poison(dq);
  EXPECT_THROW(attention_backward(args, {ws.data(), bytes - 1}, Backend::cpu), Error);
  attention_backward(args, {ws.data(), bytes}, Backend::cpu);
  Tensor ref_dq({1, 40, 2, 16}, DType::f64), ref_dk({1, 300, 1, 16}, DType::f64), ref_dv({1, 300, 1, 16}, DType::f64);
  attention_backward(BackwardArgs{q, k, v, out, dout, lse, ref_dq, ref_dk, ref_dv, {}, {}, {}}, Backend::reference);
  expect_close(dq, ref_dq, 1e-5, 0.0, "dq");
  expect_close(dk, ref_dk, 1e-5, 0.0, "dk");
  expect_close(dv, ref_dv, 1e-5, 0.0, "dv");
}

// q, k, v as views into one fused (B, S, 3, H, D) projection, and dq, dk, dv into one fused
// gradient (as a training step lays them out); dout with padded heads.
TEST(CpuBackward, StridedViews) {
  const int B = 2, S = 75, H = 4, D = 32;
  RestoreCpuSettings restore;
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor qkv = randn({B, S, 3, H, D}, dt), dqkv({B, S, 3, H, D}, dt), dout_storage = randn({B, S, H, D + 8}, dt);
    auto part = [&](const Tensor& fused, int which) {
      TensorView t = TensorView::contiguous(static_cast<char*>(fused.data()) + which * H * D * dtype_size(dt), dt,
                                            {B, S, H, D});
      t.stride = {S * 3 * H * D, 3 * H * D, D, 1};
      return t;
    };
    TensorView dout = TensorView::contiguous(dout_storage.data(), dt, {B, S, H, D});
    dout.stride = {S * H * (D + 8), H * (D + 8), D + 8, 1};
    Tensor ref_out({B, S, H, D}, DType::f64), ref_lse({B, H, S}, DType::f64);
    ForwardArgs fwd{part(qkv, 0), part(qkv, 1), part(qkv, 2), ref_out, ref_lse, {}, {}, {}};
    fwd.params.mask = Mask::causal_mask();
    attention_forward(fwd, Backend::reference);
    const Tensor out = convert(ref_out, dt), lse = convert(ref_lse, DType::f32);
    Tensor ref_dq({B, S, H, D}, DType::f64), ref_dk({B, S, H, D}, DType::f64), ref_dv({B, S, H, D}, DType::f64);
    attention_backward(BackwardArgs{part(qkv, 0), part(qkv, 1), part(qkv, 2), out, dout, lse, ref_dq, ref_dk, ref_dv,
                                    {}, {}, fwd.params},
                       Backend::reference);
    const BackwardArgs args{part(qkv, 0), part(qkv, 1), part(qkv, 2), out, dout, lse, part(dqkv, 0), part(dqkv, 1),
                            part(dqkv, 2), {}, {}, fwd.params};
    for (cpu::Isa isa : cpu::supported_isas()) {
      cpu::set_isa(isa);
      test::poison(dqkv);
      attention_backward(args, Backend::cpu);
      const std::string where = std::string(" ") + cpu::isa_name(isa) + " " + dtype_name(dt);
      expect_close(args.dq, ref_dq, 1e-5, unit_roundoff(dt), "dq" + where);
      expect_close(args.dk, ref_dk, 1e-5, unit_roundoff(dt), "dk" + where);
      expect_close(args.dv, ref_dv, 1e-5, unit_roundoff(dt), "dv" + where);
    }
  }
}

// A workspace sized while the pool had one thread still serves cpu::backward after the pool
// grew: it runs on the threads the workspace covers.
TEST(CpuBackward, WorkspaceSizedForFewerThreads) {
  RestoreCpuSettings restore;
  Tensor q = randn({1, 40, 2, 16}, DType::f32), k = randn({1, 300, 1, 16}, DType::f32);
  Tensor v = randn({1, 300, 1, 16}, DType::f32), dout = randn({1, 40, 2, 16}, DType::f32);
  Tensor out({1, 40, 2, 16}, DType::f32), lse({1, 2, 40}, DType::f32);
  attention_forward(ForwardArgs{q, k, v, out, lse, {}, {}, {}}, Backend::reference);
  Tensor dq({1, 40, 2, 16}, DType::f32), dk({1, 300, 1, 16}, DType::f32), dv({1, 300, 1, 16}, DType::f32);
  Tensor ref_dq({1, 40, 2, 16}, DType::f64), ref_dk({1, 300, 1, 16}, DType::f64), ref_dv({1, 300, 1, 16}, DType::f64);
  attention_backward(BackwardArgs{q, k, v, out, dout, lse, ref_dq, ref_dk, ref_dv, {}, {}, {}}, Backend::reference);
  const detail::BackwardProblem p =
      detail::resolve_backward(BackwardArgs{q, k, v, out, dout, lse, dq, dk, dv, {}, {}, {}}, Backend::cpu);
  cpu::set_num_threads(1);
  std::vector<std::byte> ws(cpu::backward_workspace_size(p));
  cpu::set_num_threads(2);
  ASSERT_GT(cpu::backward_workspace_size(p), ws.size());
  for (const Tensor* t : {&dq, &dk, &dv}) test::poison(*t);
  cpu::backward(p, {ws.data(), ws.size()});
  expect_close(dq, ref_dq, 1e-5, 0.0, "dq");
  expect_close(dk, ref_dk, 1e-5, 0.0, "dk");
  expect_close(dv, ref_dv, 1e-5, 0.0, "dv");
}

// Head dims past 256 (the CPU limit is 576, src/problem.hpp): the per-row stack buffers.
TEST(CpuBackward, WideHeadDims) {
  Case c;
  c.heads_q = 4;
  c.heads_kv = 1;
  c.seqlen_q = 20;
  c.seqlen_k = 75;
  c.head_dim = 320;
  c.head_dim_v = 320;
  c.mask.causal = true;
  run_case(c);
  Case mla = c;
  mla.seqlen_q = 9;
  mla.head_dim = 576;
  mla.head_dim_v = 512;
  run_case(mla);
}

}  // namespace
}  // namespace attn
