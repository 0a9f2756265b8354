// The CPU forward against the float64 reference, on every ISA this CPU supports, with one and
// two threads: masks, dtypes, head dims, GQA, varlen, decode (split-KV), paged caches.
//
// Tolerances: f32 storage, |out - ref| <= tol (1e-5 unless the case has huge logits, where
// f32 score rounding alone is ~|s| * 6e-8); f16 / bf16 storage, the reference runs on the same
// rounded inputs and each element may differ by 2x the output rounding (2 * u * |ref|, u =
// 2^-11 or 2^-8) plus tol. lse always within tol * (1 + |lse|). Every element is checked.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <thread>
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

/// Every element of `got` against `want`: NaN never, infinities exactly, else within
/// tol + 2 * u * |want|.
void expect_close(const TensorView& got, const TensorView& want, double tol, double u, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel());
  int reported = 0;
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    const double g = read_element(got, i), w = read_element(want, i);
    bool ok;
    if (std::isnan(g) || std::isnan(w)) ok = false;
    else if (std::isinf(g) || std::isinf(w)) ok = g == w;
    else ok = std::abs(g - w) <= tol + 2 * u * std::abs(w);
    if (!ok && reported++ < 5) ADD_FAILURE() << what << " element " << i << ": got " << g << ", want " << w;
  }
}

void run_case(const Case& c) {
  const test::AttentionInputs in = test::make_inputs(c);
  const test::ReferenceForward ref = test::reference_forward(c, in);
  Tensor out(test::query_shape(c, in, c.dim_v()), c.dtype), lse = test::lse_like(c, in, DType::f32);
  ForwardArgs args = ref.args;
  args.out = out;
  args.lse = c.with_lse ? lse.view() : TensorView{};
  test::for_each_isa_and_threads({1, 2}, [&](cpu::Isa, const std::string& where) {
    test::poison(out);
    test::poison(lse);
    attention_forward(args, Backend::cpu);
    expect_close(out, ref.out, c.tol, unit_roundoff(c.dtype), "out " + where);
    if (c.with_lse) {
      // lse tolerance relative to its size: it carries the scores' magnitude.
      double biggest = 0;
      for (std::int64_t i = 0; i < ref.lse.numel(); ++i) {
        const double x = read_element(ref.lse, i);
        if (std::isfinite(x)) biggest = std::max(biggest, std::abs(x));
      }
      expect_close(lse, ref.lse, c.tol * (1 + biggest), 0.0, "lse " + where);
    }
  });
}

TEST(CpuForward, NoMaskF32) { run_case({}); }

TEST(CpuForward, HeadDims) {
  for (int d : {8, 64, 96, 128, 256}) {
    Case c;
    c.head_dim = d;
    c.seqlen_q = 37;
    c.seqlen_k = 81;
    run_case(c);
  }
  Case mla;  // head_dim_v != head_dim both ways
  mla.head_dim = 192;
  mla.head_dim_v = 128;
  run_case(mla);
  Case narrow_v;
  narrow_v.head_dim = 64;
  narrow_v.head_dim_v = 24;
  narrow_v.mask.causal = true;
  run_case(narrow_v);
}

TEST(CpuForward, GroupSizes) {
  for (auto [hq, hkv] : {std::pair{3, 3}, std::pair{6, 2}, std::pair{8, 1}, std::pair{16, 2}, std::pair{96, 1}}) {
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

TEST(CpuForward, Dtypes) {
  for (DType t : {DType::f16, DType::bf16}) {
    Case c;
    c.dtype = t;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.mask.causal = true;
    c.head_dim = 72;
    run_case(c);
  }
}

TEST(CpuForward, MaskParts) {
  std::vector<Mask> masks;
  masks.push_back(Mask::causal_mask());
  masks.push_back(Mask::window(16, 0));
  masks.push_back(Mask::window(8, 20));
  masks.push_back(Mask::window(-1, 3));
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
  Mask causal_window = Mask::causal_mask();
  causal_window.window_left = 40;
  masks.push_back(causal_window);
  for (const Mask& m : masks)
    for (auto [sq, sk] : {std::pair{130, 130}, std::pair{50, 200}, std::pair{97, 40}}) {
      Case c;
      c.mask = m;
      c.seqlen_q = sq;
      c.seqlen_k = sk;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.head_dim = 32;
      run_case(c);
    }
}

// The strided pattern alone takes the band + residue-class split (cpu/strided_split.hpp) when
// f32, padded, Sq <= Sk and Sk >= 4 l (the cases: test::strided_split_cases).
TEST(CpuForward, StridedSplitMatchesReference) {
  for (const Case& c : test::strided_split_cases()) {
    SCOPED_TRACE("l " + std::to_string(c.mask.strided) + " sq " + std::to_string(c.seqlen_q) + " sk " +
                 std::to_string(c.seqlen_k));
    run_case(c);
  }
}

TEST(CpuForward, BlockSparseSharedAndPerHead) {
  const int sq = 100, sk = 150, bq = 16, bk = 32, nbq = 7, nbk = 5;
  for (bool per_head : {false, true}) {
    Tensor layout = per_head ? Tensor({4, nbq, nbk}, DType::u8) : Tensor({nbq, nbk}, DType::u8);
    for (std::int64_t i = 0; i < layout.numel(); ++i) layout.as<std::uint8_t>()[i] = (test::rng()() % 3) != 0;
    layout.as<std::uint8_t>()[0] = 0;  // some rows see nothing in their first block
    for (bool causal : {false, true}) {
      Case c;
      c.seqlen_q = sq;
      c.seqlen_k = sk;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.head_dim = 16;
      c.mask.causal = causal;
      c.mask.block_layout = layout;
      c.mask.block_q = bq;
      c.mask.block_k = bk;
      run_case(c);
    }
  }
}

TEST(CpuForward, MaskCombinations) {
  Tensor layout({7, 7}, DType::u8), globals = test::i32({3, 64});
  for (std::int64_t i = 0; i < layout.numel(); ++i) layout.as<std::uint8_t>()[i] = (test::rng()() % 4) != 0;
  std::vector<Mask> masks;
  Mask dilated_causal = Mask::causal_mask();
  dilated_causal.window_left = 12;
  dilated_causal.dilation = 1;
  masks.push_back(dilated_causal);
  Mask strided_layout;
  strided_layout.strided = 5;
  strided_layout.block_layout = layout;
  strided_layout.block_q = 16;
  strided_layout.block_k = 16;
  masks.push_back(strided_layout);
  Mask fixed_globals;
  fixed_globals.fixed_stride = 8;
  fixed_globals.fixed_summary = 2;
  fixed_globals.global_tokens = globals;
  masks.push_back(fixed_globals);
  Mask window_layout_globals = Mask::window(20, 5);
  window_layout_globals.block_layout = layout;
  window_layout_globals.block_q = 16;
  window_layout_globals.block_k = 16;
  window_layout_globals.global_tokens = globals;
  masks.push_back(window_layout_globals);
  for (const Mask& m : masks) {
    Case c;
    c.mask = m;
    c.seqlen_q = 100;
    c.seqlen_k = 110;
    c.heads_q = 3;
    c.heads_kv = 1;
    c.head_dim = 24;
    c.softcap = 4.0f;
    run_case(c);
  }
}

TEST(CpuForward, GlobalTokens) {
  Tensor globals = test::i32({0, 5, 77, 140});
  for (Mask base : {Mask::window(4, 4), Mask::causal_mask(), Mask{}}) {
    Case c;
    c.seqlen_q = 150;
    c.seqlen_k = 150;
    c.head_dim = 16;
    c.mask = base;
    if (base.causal) c.mask.window_left = 10;
    c.mask.global_tokens = globals;
    run_case(c);
  }
}

TEST(CpuForward, FullyMaskedRowsGiveZeroAndMinusInf) {
  Case c;  // seqlen_q > seqlen_k with causal: the first rows sit before every key
  c.seqlen_q = 90;
  c.seqlen_k = 20;
  c.mask.causal = true;
  run_case(c);
  Case w;  // a window entirely to the right of the keys for the last rows
  w.seqlen_q = 80;
  w.seqlen_k = 80;
  w.mask = Mask::window(-1, 0);
  w.mask.window_left = 0;
  Tensor layout({5, 3}, DType::u8);  // Mask holds a view: the tensor must outlive the call
  for (int i = 0; i < 15; ++i) layout.as<std::uint8_t>()[i] = i < 9;  // the last block rows see nothing
  w.mask.block_layout = layout;
  w.mask.block_q = 16;
  w.mask.block_k = 32;
  run_case(w);
}

TEST(CpuForward, ScaleSoftcapAndHugeLogits) {
  Case sc;
  sc.softcap = 5.0f;
  sc.scale = 0.5f;
  sc.mask.causal = true;
  run_case(sc);
  Case tiny_cap;  // strongly capped scores
  tiny_cap.softcap = 0.3f;
  run_case(tiny_cap);
  Case huge;  // scores in the hundreds: f32 score rounding sets the floor
  huge.q_sigma = 100.0;
  huge.tol = 1e-3;
  huge.mask.causal = true;
  run_case(huge);
  Case huge_capped = huge;
  huge_capped.softcap = 30.0f;
  huge_capped.tol = 1e-4;
  run_case(huge_capped);
}

TEST(CpuForward, NoLse) {
  Case c;
  c.with_lse = false;
  run_case(c);
}

TEST(CpuForward, VarlenWithEmptyAndSingleTokenSequences) {
  Case c;
  c.lengths_q = {5, 0, 1, 130, 64, 3};
  c.lengths_k = {9, 7, 1, 130, 0, 200};
  c.batch = 6;
  c.heads_q = 6;
  c.heads_kv = 2;
  c.head_dim = 40;
  for (bool causal : {false, true}) {
    c.mask.causal = causal;
    run_case(c);
  }
  c.dtype = DType::bf16;
  run_case(c);
}

TEST(CpuForward, DecodeSplitsKeys) {
  // One query per sequence over a long cache: few (sequence, kv head) units, so keys split.
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{8, 1}, std::pair{1, 1}}) {
    Case c;
    c.batch = 2;
    c.heads_q = hq;
    c.heads_kv = hkv;
    c.seqlen_q = 1;
    c.seqlen_k = 2100;
    c.head_dim = 64;
    run_case(c);
    c.mask = Mask::window(700, 0);
    c.mask.causal = true;
    run_case(c);
    c.dtype = DType::f16;
    c.mask = Mask{};
    run_case(c);
  }
  Case latent;  // MLA-like dims with split keys and soft-capping
  latent.heads_q = 4;
  latent.seqlen_q = 1;
  latent.seqlen_k = 1300;
  latent.head_dim = 192;
  latent.head_dim_v = 128;
  latent.softcap = 20.0f;
  run_case(latent);
  Case speculative;  // a few queries at the end of a long cache, causal
  speculative.seqlen_q = 4;
  speculative.seqlen_k = 1500;
  speculative.heads_q = 4;
  speculative.mask.causal = true;
  run_case(speculative);
}

// Decode units that take several kv heads: 6 kv heads (one unit of 6), group 3, a per-head
// block layout, soft-capping, and varlen sequences of one query each.
TEST(CpuForward, DecodeUnitsSpanningKvHeads) {
  Tensor layout({18, 1, 12}, DType::u8);
  for (std::int64_t i = 0; i < layout.numel(); ++i) layout.as<std::uint8_t>()[i] = (test::rng()() % 3) != 0;
  Case c;
  c.batch = 3;
  c.heads_q = 18;
  c.heads_kv = 6;
  c.seqlen_q = 1;
  c.seqlen_k = 700;
  c.head_dim = 32;
  c.softcap = 10.0f;
  c.mask.block_layout = layout;
  c.mask.block_q = 1;
  c.mask.block_k = 64;
  run_case(c);
  Case varlen;
  varlen.batch = 4;
  varlen.heads_q = 8;
  varlen.heads_kv = 4;
  varlen.head_dim = 64;
  varlen.lengths_q = {1, 1, 0, 1};
  varlen.lengths_k = {600, 1, 5, 0};
  varlen.mask.causal = true;
  run_case(varlen);
}

TEST(CpuForward, PrefillSplitsWhenOneSequenceIsLong) {
  Case c;
  c.heads_q = 1;
  c.seqlen_q = 64;
  c.seqlen_k = 1100;
  c.head_dim = 16;
  run_case(c);
}

// A paged cache: K / V in pages of a pool, per-sequence block tables and lengths; each sequence
// checked against the reference on its own contiguous keys.
TEST(CpuForward, PagedCacheMatchesContiguous) {
  const int B = 3, Hq = 4, Hkv = 2, D = 32, page = 16, max_pages = 6, num_pages = 20, Sq = 3;
  const std::vector<int> lengths = {70, 1, 96};
  RestoreCpuSettings restore;
  for (DType dt : {DType::f32, DType::f16}) {
    Tensor k_pool = randn({num_pages, page, Hkv, D}, dt), v_pool = randn({num_pages, page, Hkv, D}, dt);
    std::vector<std::int32_t> ids(num_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), test::rng());
    std::vector<std::int32_t> table(B * max_pages, -1);
    for (int b = 0, next = 0; b < B; ++b)
      for (int t = 0; t < (lengths[b] + page - 1) / page; ++t) table[b * max_pages + t] = ids[next++];
    Tensor block_table = test::i32(table), seqlens = test::i32(std::vector<std::int32_t>(lengths.begin(), lengths.end()));
    Tensor q = randn({B, Sq, Hq, D}, dt);
    Tensor out({B, Sq, Hq, D}, dt), lse({B, Hq, Sq}, DType::f32);

    // Resolve a contiguous call of the same shapes, then point k / v at the pages.
    Tensor k_shape({B, max_pages * page, Hkv, D}, dt), v_shape({B, max_pages * page, Hkv, D}, dt);
    ForwardArgs args{q, k_shape, v_shape, out, lse, {}, {}, {}};
    args.params.mask = Mask::causal_mask();
    detail::AttentionProblem p = detail::resolve_forward(args, Backend::cpu);
    p.seqlens_k = seqlens.as<std::int32_t>();
    p.k = k_pool.data();
    p.v = v_pool.data();
    for (detail::TokenLayout* l : {&p.k_layout, &p.v_layout}) {
      *l = detail::TokenLayout{};
      l->token_stride = Hkv * D;
      l->head_stride = D;
      l->block_table = block_table.as<std::int32_t>();
      l->block_table_stride = max_pages;
      l->page_size = page;
      l->page_stride = std::int64_t(page) * Hkv * D;
    }
    for (cpu::Isa isa : cpu::supported_isas()) {
      cpu::set_isa(isa);
      test::poison(out);
      test::poison(lse);
      std::vector<std::byte> ws(cpu::forward_workspace_size(p));
      cpu::forward(p, {ws.data(), ws.size()});
      for (int b = 0; b < B; ++b) {
        const int sk = lengths[b];
        Tensor q1({1, Sq, Hq, D}, dt), k1({1, sk, Hkv, D}, dt), v1({1, sk, Hkv, D}, dt);
        const std::size_t es = dtype_size(dt);
        std::memcpy(q1.data(), static_cast<char*>(q.data()) + b * q1.nbytes(), q1.nbytes());
        for (int t = 0; t < sk; ++t) {
          const std::int64_t src = (std::int64_t(table[b * max_pages + t / page]) * page + t % page) * Hkv * D;
          std::memcpy(static_cast<char*>(k1.data()) + t * Hkv * D * es, static_cast<char*>(k_pool.data()) + src * es,
                      Hkv * D * es);
          std::memcpy(static_cast<char*>(v1.data()) + t * Hkv * D * es, static_cast<char*>(v_pool.data()) + src * es,
                      Hkv * D * es);
        }
        Tensor o1({1, Sq, Hq, D}, DType::f64), l1({1, Hq, Sq}, DType::f64);
        ForwardArgs a1{q1, k1, v1, o1, l1, {}, {}, args.params};
        attention_forward(a1, Backend::reference);
        Tensor got_o = convert(TensorView::contiguous(static_cast<char*>(out.data()) + b * q1.nbytes(), dt,
                                                      {1, Sq, Hq, D}),
                               DType::f64);
        Tensor got_l = convert(TensorView::contiguous(lse.as<float>() + b * Hq * Sq, DType::f32, {1, Hq, Sq}),
                               DType::f64);
        const std::string where = std::string(cpu::isa_name(isa)) + " sequence " + std::to_string(b);
        expect_close(got_o, o1, 1e-5, unit_roundoff(dt), "out " + where);
        expect_close(got_l, l1, 1e-4, 0.0, "lse " + where);
      }
    }
  }
}

// q, k, v as views into one fused (B, S, 3, H, D) projection output, out with padded heads.
TEST(CpuForward, StridedViews) {
  const int B = 2, S = 75, H = 4, D = 32;
  RestoreCpuSettings restore;
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor qkv = randn({B, S, 3, H, D}, dt);
    auto part = [&](int which) {
      TensorView t = TensorView::contiguous(static_cast<char*>(qkv.data()) + which * H * D * dtype_size(dt), dt,
                                            {B, S, H, D});
      t.stride = {S * 3 * H * D, 3 * H * D, D, 1};
      return t;
    };
    Tensor out_storage({B, S, H, D + 8}, dt);
    TensorView out = TensorView::contiguous(out_storage.data(), dt, {B, S, H, D});
    out.stride = {S * H * (D + 8), H * (D + 8), D + 8, 1};
    Tensor lse({B, H, S}, DType::f32), ref_out({B, S, H, D}, DType::f64), ref_lse({B, H, S}, DType::f64);
    ForwardArgs ref{part(0), part(1), part(2), ref_out, ref_lse, {}, {}, {}};
    ref.params.mask = Mask::causal_mask();
    attention_forward(ref, Backend::reference);
    ForwardArgs args = ref;
    args.out = out;
    args.lse = lse;
    for (cpu::Isa isa : cpu::supported_isas()) {
      cpu::set_isa(isa);
      test::poison(out);
      attention_forward(args, Backend::cpu);
      expect_close(out, ref_out, 1e-5, unit_roundoff(dt), std::string("out ") + cpu::isa_name(isa));
      expect_close(lse, ref_lse, 1e-5, 0.0, std::string("lse ") + cpu::isa_name(isa));
    }
  }
}

// A workspace sized while the pool had one thread still serves cpu::forward after the pool
// grew (it uses only the threads the workspace covers; the public entry point instead asks for
// a workspace of the current size), and concurrent callers do not interfere.
TEST(CpuForward, WorkspaceSizedForFewerThreadsAndConcurrentCalls) {
  RestoreCpuSettings restore;
  Tensor q = randn({1, 1, 8, 64}, DType::f32), k = randn({1, 3000, 2, 64}, DType::f32);
  Tensor v = randn({1, 3000, 2, 64}, DType::f32);
  Tensor ref_out({1, 1, 8, 64}, DType::f64);
  ForwardArgs ref{q, k, v, ref_out, {}, {}, {}, {}};
  attention_forward(ref, Backend::reference);
  cpu::set_num_threads(1);
  Tensor out({1, 1, 8, 64}, DType::f32);
  ForwardArgs a{q, k, v, out, {}, {}, {}, {}};
  const detail::AttentionProblem p = detail::resolve_forward(a, Backend::cpu);
  std::vector<std::byte> ws(cpu::forward_workspace_size(p));
  cpu::set_num_threads(2);
  ASSERT_GT(cpu::forward_workspace_size(p), ws.size());
  test::poison(out);
  cpu::forward(p, {ws.data(), ws.size()});
  expect_close(out, ref_out, 1e-5, 0.0, "out after the pool grew");

  Tensor out2({1, 1, 8, 64}, DType::f32);
  test::poison(out);
  test::poison(out2);
  std::thread other([&] {
    ForwardArgs b = a;
    b.out = out2;
    for (int r = 0; r < 20; ++r) attention_forward(b, Backend::cpu);
  });
  for (int r = 0; r < 20; ++r) attention_forward(a, Backend::cpu);
  other.join();
  expect_close(out, ref_out, 1e-5, 0.0, "out, concurrent caller 1");
  expect_close(out2, ref_out, 1e-5, 0.0, "out, concurrent caller 2");
}

TEST(CpuForward, RejectsASmallWorkspace) {
  Tensor q = randn({1, 8, 2, 16}, DType::f32), k = randn({1, 8, 2, 16}, DType::f32), v = randn({1, 8, 2, 16}, DType::f32);
  Tensor out({1, 8, 2, 16}, DType::f32);
  ForwardArgs a{q, k, v, out, {}, {}, {}, {}};
  const std::size_t need = attention_forward_workspace_size(a, Backend::cpu);
  ASSERT_GT(need, 0u);
  std::vector<std::byte> ws(need - 1);
  EXPECT_THROW(attention_forward(a, {ws.data(), ws.size()}, Backend::cpu), Error);
}

// MLA's absorbed decode attends over the latent cache: one kv head of 576 (kv_lora_rank 512 +
// rope 64) with values of 512, every query head sharing it (MQA). Decode (split-KV over a
// long context) and a short causal prefill, in f32 and bf16.
TEST(CpuForward, MlaAbsorbedHeadDims576And512) {
  for (DType dt : {DType::f32, DType::bf16}) {
    Case decode;
    decode.batch = 2;
    decode.heads_q = 16;
    decode.heads_kv = 1;
    decode.seqlen_q = 1;
    decode.seqlen_k = 700;
    decode.head_dim = 576;
    decode.head_dim_v = 512;
    decode.dtype = dt;
    decode.mask.causal = true;
    run_case(decode);
    Case prefill = decode;
    prefill.batch = 1;
    prefill.seqlen_q = 6;
    prefill.seqlen_k = 45;
    run_case(prefill);
  }
}

}  // namespace
}  // namespace attn
