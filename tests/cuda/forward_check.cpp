#include "cuda/forward_check.hpp"
#include "cuda/device_tensors.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <cstring>
#include <tuple>
#include <sstream>

#include "cuda/backend.hpp"
#include "cuda/case_lists.hpp"
#include "cuda/output_check.hpp"
#include "validate.hpp"

namespace attn::test::cuda {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// A strided view of `base` (same dtype and device).
TensorView view_of(const TensorView& base, std::int64_t offset, const Shape& shape, const Shape& stride) {
  TensorView v = base;
  v.data = static_cast<char*>(base.data) + offset * std::int64_t(dtype_size(base.dtype));
  v.ndim = int(shape.size());
  for (std::size_t d = 0; d < shape.size(); ++d) {
    v.shape[d] = shape[d];
    v.stride[d] = stride[d];
  }
  return v;
}

std::vector<int> offsets_of(const std::vector<int>& lens) {
  std::vector<int> cu(lens.size() + 1, 0);
  std::partial_sum(lens.begin(), lens.end(), cu.begin() + 1);
  return cu;
}

/// Unit roundoff of the storage type: the relative error of one rounding.
double unit_roundoff(DType t) { return t == DType::bf16 ? 1.0 / 256 : 1.0 / 2048; }

}  // namespace

CheckResult check_forward(const FwdCase& c, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  const bool varlen = !c.lens_q.empty();
  const bool paged = c.page_size > 0;
  const bool packed_ref = varlen || paged;  // the reference sees packed tensors
  const int B = varlen ? int(c.lens_q.size()) : c.batch;
  const int Hq = c.heads_q, Hk = c.heads_kv, D = c.head_dim, Dv = c.head_dim_v;
  std::vector<int> lq(std::size_t(B), c.seqlen_q), lk(std::size_t(B), c.seqlen_k);
  if (varlen) lq = c.lens_q;
  if (!c.lens_k.empty()) lk = c.lens_k;
  const std::vector<int> cu_q = offsets_of(lq), cu_k = offsets_of(lk);
  const int max_sq = *std::max_element(lq.begin(), lq.end()), max_sk = *std::max_element(lk.begin(), lk.end());
  const std::int64_t Tq = cu_q.back(), Tk = cu_k.back();

  // Host inputs in the storage dtype; the reference reads exactly these values.
  Tensor qkv_h, q_h, k_h, v_h;
  TensorView qv, kv, vv;
  if (c.qkv_packed) {
    const std::int64_t S = c.seqlen_q, H = Hq;
    qkv_h = host_randn({B, S, 3, H, D}, c.dtype, c.sigma, gen);
    const Shape shape{B, S, H, D}, stride{S * 3 * H * D, 3 * H * D, D, 1};
    qv = view_of(qkv_h.view(), 0, shape, stride);
    kv = view_of(qkv_h.view(), H * D, shape, stride);
    vv = view_of(qkv_h.view(), 2 * H * D, shape, stride);
    // v keeps unit variance whatever sigma says: only the logits are meant to be huge.
    for (std::int64_t i = 0; i < vv.numel(); ++i) write_element(vv, i, std::normal_distribution<double>()(gen));
  } else {
    q_h = packed_ref ? host_randn({Tq, Hq, D}, c.dtype, c.sigma, gen)
                     : host_randn({B, c.seqlen_q, Hq, D}, c.dtype, c.sigma, gen);
    k_h = packed_ref ? host_randn({Tk, Hk, D}, c.dtype, c.sigma, gen)
                     : host_randn({B, c.seqlen_k, Hk, D}, c.dtype, c.sigma, gen);
    v_h = packed_ref ? host_randn({Tk, Hk, Dv}, c.dtype, 1.0, gen) : host_randn({B, c.seqlen_k, Hk, Dv}, c.dtype, 1.0, gen);
    qv = q_h.view();
    kv = k_h.view();
    vv = v_h.view();
  }

  const CaseMasks masks = make_case_masks(c, Hq, max_sq, max_sk, gen);
  const Mask& mask_h = masks.host;
  const Mask& mask_d = masks.device;

  AttentionParams params;
  params.scale = c.scale;
  params.softcap = c.softcap;

  // Reference, float64 outputs.
  Tensor cu_q_h = host_i32(cu_q), cu_k_h = host_i32(cu_k);
  const Shape out_shape = packed_ref ? Shape{Tq, Hq, Dv} : Shape{B, c.seqlen_q, Hq, Dv};
  const Shape lse_shape = packed_ref ? Shape{Hq, Tq} : Shape{B, Hq, c.seqlen_q};
  Tensor out_ref = host_tensor(out_shape, DType::f64), lse_ref = host_tensor(lse_shape, DType::f64);
  {
    ForwardArgs ra;
    ra.q = qv;
    ra.k = kv;
    ra.v = vv;
    ra.out = out_ref;
    ra.lse = lse_ref;
    if (packed_ref) {
      ra.cu_seqlens_q = cu_q_h;
      ra.cu_seqlens_k = cu_k_h;
    }
    ra.params = params;
    ra.params.mask = mask_h;
    attention_forward(ra, Backend::reference);
  }

  // CUDA run on device copies, outputs poisoned.
  const Shape out_dev_shape = paged ? Shape{B, c.seqlen_q, Hq, Dv} : out_shape;
  const Shape lse_dev_shape = paged ? Shape{B, Hq, c.seqlen_q} : lse_shape;
  Tensor out_d = poisoned_device(out_dev_shape, c.dtype);
  Tensor lse_d = poisoned_device(lse_dev_shape, DType::f32);
  // Each case runs twice on freshly poisoned outputs and must give bitwise the same result:
  // an error that moves between identical runs is a race.
  Tensor first_out, first_lse;
  auto run_twice = [&](auto&& call) {
    call();
    first_out = to_host(out_d);
    first_lse = to_host(lse_d);
    copy(out_d, poisoned_device(out_dev_shape, c.dtype));
    copy(lse_d, poisoned_device(lse_dev_shape, DType::f32));
    call();
  };
  if (!paged) {
    Tensor qkv_d, q_d, k_d, v_d, cu_q_d, cu_k_d;
    ForwardArgs a;
    if (c.qkv_packed) {
      qkv_d = to_device(qkv_h);
      const auto rebase = [&](const TensorView& hv) {
        TensorView dv = hv;
        dv.data = static_cast<char*>(qkv_d.data()) + (static_cast<char*>(hv.data) - static_cast<char*>(qkv_h.data()));
        dv.device = Device::cuda();
        return dv;
      };
      a.q = rebase(qv);
      a.k = rebase(kv);
      a.v = rebase(vv);
    } else {
      q_d = to_device(q_h);
      k_d = to_device(k_h);
      v_d = to_device(v_h);
      a.q = q_d;
      a.k = k_d;
      a.v = v_d;
    }
    if (varlen) {
      cu_q_d = to_device(cu_q_h);
      cu_k_d = to_device(cu_k_h);
      a.cu_seqlens_q = cu_q_d;
      a.cu_seqlens_k = cu_k_d;
    }
    a.out = out_d;
    a.lse = lse_d;
    a.params = params;
    a.params.mask = mask_d;
    run_twice([&] { attention_forward(a, Backend::cuda); });
  } else {
    // Shuffled page pool; pages and page tails that no sequence owns hold NaN, and unused
    // block-table entries are -1, so a read past a sequence's keys shows up as NaN or a fault.
    const int P = c.page_size;
    std::vector<int> pages_of(static_cast<std::size_t>(B));
    int total_pages = 3;
    for (int b = 0; b < B; ++b) total_pages += pages_of[std::size_t(b)] = (lk[std::size_t(b)] + P - 1) / P;
    const int max_pages = std::max(1, *std::max_element(pages_of.begin(), pages_of.end()));
    std::vector<int> perm(static_cast<std::size_t>(total_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    Tensor pool_k = host_tensor({total_pages, P, Hk, D}, c.dtype), pool_v = host_tensor({total_pages, P, Hk, Dv}, c.dtype);
    for (std::int64_t i = 0; i < pool_k.numel(); ++i) write_element(pool_k.view(), i, kNaN);
    for (std::int64_t i = 0; i < pool_v.numel(); ++i) write_element(pool_v.view(), i, kNaN);
    std::vector<int> table(std::size_t(B) * std::size_t(max_pages), -1);
    int next = 0;
    const std::size_t es = dtype_size(c.dtype);
    for (int b = 0; b < B; ++b) {
      for (int pg = 0; pg < pages_of[std::size_t(b)]; ++pg) table[std::size_t(b * max_pages + pg)] = perm[std::size_t(next++)];
      for (int t = 0; t < lk[std::size_t(b)]; ++t) {
        const std::int64_t page = table[std::size_t(b * max_pages + t / P)], slot = page * P + t % P;
        const std::int64_t src = cu_k[std::size_t(b)] + t;
        std::memcpy(static_cast<char*>(pool_k.data()) + std::size_t(slot * Hk * D) * es,
                    static_cast<char*>(k_h.data()) + std::size_t(src * Hk * D) * es, std::size_t(Hk * D) * es);
        std::memcpy(static_cast<char*>(pool_v.data()) + std::size_t(slot * Hk * Dv) * es,
                    static_cast<char*>(v_h.data()) + std::size_t(src * Hk * Dv) * es, std::size_t(Hk * Dv) * es);
      }
    }
    Tensor q_d = to_device(q_h), pool_k_d = to_device(pool_k), pool_v_d = to_device(pool_v);
    Tensor table_d = to_device(host_i32(table)), seqlens_d = to_device(host_i32(lk));

    detail::AttentionProblem p;
    p.batch = B;
    p.heads_q = Hq;
    p.heads_kv = Hk;
    p.head_dim = D;
    p.head_dim_v = Dv;
    p.dtype = c.dtype;
    p.seqlen_q = c.seqlen_q;
    p.seqlen_k = max_sk;
    p.seqlens_k = seqlens_d.as<std::int32_t>();
    p.q = q_d.data();
    p.q_layout.batch_stride = std::int64_t(c.seqlen_q) * Hq * D;
    p.q_layout.token_stride = std::int64_t(Hq) * D;
    p.q_layout.head_stride = D;
    for (auto [layout, data, dim, pool] : {std::tuple{&p.k_layout, &p.k, D, &pool_k_d}, std::tuple{&p.v_layout, &p.v, Dv, &pool_v_d}}) {
      *data = pool->data();
      layout->token_stride = std::int64_t(Hk) * dim;
      layout->head_stride = dim;
      layout->block_table = table_d.as<std::int32_t>();
      layout->block_table_stride = max_pages;
      layout->page_size = P;
      layout->page_stride = std::int64_t(P) * Hk * dim;
    }
    p.out = out_d.data();
    p.out_layout.batch_stride = std::int64_t(c.seqlen_q) * Hq * Dv;
    p.out_layout.token_stride = std::int64_t(Hq) * Dv;
    p.out_layout.head_stride = Dv;
    p.lse = lse_d.as<float>();
    p.lse_layout.batch_stride = std::int64_t(Hq) * c.seqlen_q;
    p.lse_layout.head_stride = c.seqlen_q;
    p.lse_layout.token_stride = 1;
    p.scale = c.scale > 0.0f ? c.scale : 1.0f / std::sqrt(float(D));
    p.softcap = c.softcap;
    p.mask = detail::resolve_mask(mask_d, Hq, c.seqlen_q, max_sk, Device::cuda());
#if defined(ATTN_WITH_CUDA)
    const std::size_t ws_bytes = ::attn::cuda::forward_workspace_size(p);
    Tensor ws_t = ws_bytes > 0 ? Tensor({std::int64_t(ws_bytes)}, DType::u8, Device::cuda()) : Tensor();
    run_twice([&] { ::attn::cuda::forward(p, Workspace{ws_bytes > 0 ? ws_t.data() : nullptr, ws_bytes}); });
#else
    detail::fail("paged checks: this build has no CUDA backend");  // unreachable: no device without it
#endif
  }
  const Tensor out = to_host(out_d), lse = to_host(lse_d);  // synchronises; reports kernel faults
  const bool repeatable = std::memcmp(out.data(), first_out.data(), out.nbytes()) == 0 &&
                          std::memcmp(lse.data(), first_lse.data(), lse.nbytes()) == 0;

  // Every element. A row (token, head) that the reference finds fully masked must be exactly
  // 0 with lse -inf; every other row is checked per element (a loose bound that catches NaN,
  // unwritten and misplaced values), per row and over the whole tensor (tight bounds from the
  // rounding of P and of the output to the storage dtype).
  const double u = unit_roundoff(c.dtype);
  double vmax = 0;
  for (std::int64_t i = 0; i < vv.numel(); ++i) vmax = std::max(vmax, std::abs(read_element(vv, i)));
  OutputCheck check(u, vmax);
  for (std::int64_t tok = 0; tok < Tq; ++tok) {
    const int b = int(std::upper_bound(cu_q.begin(), cu_q.end(), int(tok)) - cu_q.begin()) - 1;
    const std::int64_t i = tok - cu_q[std::size_t(b)];
    for (int h = 0; h < Hq; ++h) {
      // The reference's lse is (Hq, Tq) when packed, else (B, Hq, Sq); the paged run writes (B, Hq, Sq).
      const std::int64_t padded_index = (std::int64_t(b) * Hq + h) * c.seqlen_q + i;
      const double lref = read_element(lse_ref, packed_ref ? std::int64_t(h) * Tq + tok : padded_index);
      const std::int64_t lse_dev_index = paged || !packed_ref ? padded_index : std::int64_t(h) * Tq + tok;
      std::ostringstream at;
      at << "(b " << b << ", i " << i << ", h " << h << ")";
      check.row(at.str(), lref, read_element(lse, lse_dev_index), Dv, [&](int e, double& got, double& ref) {
        const std::int64_t idx = (tok * Hq + h) * Dv + e;
        got = read_element(out, idx);
        ref = read_element(out_ref, idx);
      });
    }
  }
  return check.finish(repeatable);
}

std::vector<FwdCase> forward_cases() {
  std::vector<FwdCase> cs;
  auto add = [&](FwdCase c) { cs.push_back(std::move(c)); };

  add_basic_cases(cs);

  // Queries that fit one 64-row tile (the short tile; longer queries take the 128-row tile at
  // D <= 128), so both tile heights meet the non-decode paths.
  for (int d : {64, 128}) {
    FwdCase c;
    c.name = "short_tile_d" + std::to_string(d);
    c.head_dim = d;
    c.head_dim_v = d;
    c.seqlen_q = 60;
    c.seqlen_k = 300;
    c.causal = d == 128;
    add(c);
  }

  // Masks, one part at a time and some combinations.
  FwdCase m;
  m.heads_q = 2;
  m.heads_kv = 2;
  m.seqlen_q = 200;
  m.seqlen_k = 200;
  auto mask_case = [&](const std::string& name, auto&& set) {
    FwdCase c = m;
    c.name = name;
    set(c);
    add(c);
  };
  add_mask_cases(cs, m);
  mask_case("causal_f16", [](FwdCase& c) { c.causal = true; c.dtype = DType::f16; });
  mask_case("softcap_causal", [](FwdCase& c) { c.softcap = 30.0f; c.sigma = 4.0; c.causal = true; });
  mask_case("huge_logits_bf16", [](FwdCase& c) { c.sigma = 8.0; });
  mask_case("huge_logits_f16", [](FwdCase& c) { c.sigma = 8.0; c.dtype = DType::f16; });
  // Queries past one 64-row tile take the Hopper kernel on sm_90: no key tile at all there.
  mask_case("empty_keys_tall", [](FwdCase& c) { c.seqlen_q = 100; c.seqlen_k = 0; c.small = true; });

  // GQA groups.
  for (auto [hq, hk] : {std::pair{6, 2}, {8, 1}, {16, 2}}) {
    FwdCase c;
    c.name = "gqa_" + std::to_string(hq) + "_" + std::to_string(hk);
    c.head_dim = 64;
    c.head_dim_v = 64;
    c.heads_q = hq;
    c.heads_kv = hk;
    c.seqlen_q = 150;
    c.seqlen_k = 150;
    c.causal = hk == 2;
    add(c);
  }

  add_varlen_cases(cs, 128);

  // Single tokens and decode shapes: GQA packing, KV splits (combine kernel), empty splits.
  auto decode = [&](const std::string& name, auto&& set) {
    FwdCase c;
    c.name = name;
    c.batch = 3;
    c.seqlen_q = 1;
    c.seqlen_k = 777;
    c.heads_q = 32;
    c.heads_kv = 8;
    set(c);
    add(c);
  };
  decode("seqlen_1", [](FwdCase& c) { c.seqlen_k = 1; c.heads_q = 4; c.heads_kv = 4; c.small = true; });
  decode("decode_gqa4", [](FwdCase& c) { c.small = true; });
  decode("decode_mqa_long", [](FwdCase& c) { c.batch = 1; c.heads_q = 8; c.heads_kv = 1; c.seqlen_k = 2000; });
  decode("decode_spec4_causal", [](FwdCase& c) { c.seqlen_q = 4; c.heads_q = 16; c.heads_kv = 4; c.causal = true; });
  decode("decode_window_empty_splits", [](FwdCase& c) { c.window_left = 100; c.window_right = 0; c.batch = 1; });
  decode("decode_d256_f16", [](FwdCase& c) { c.head_dim = 256; c.head_dim_v = 256; c.dtype = DType::f16; });
  decode("decode_d192x128_softcap", [](FwdCase& c) { c.head_dim = 192; c.head_dim_v = 128; c.softcap = 20.0f; });
  decode("decode_mha", [](FwdCase& c) { c.heads_q = 8; c.heads_kv = 8; });
  // A per-head block layout rules out GQA packing; a shared one keeps it. Block row 0 of head
  // 0 is empty, so that head's query is fully masked across every split.
  decode("decode_layout_per_head", [](FwdCase& c) { c.block_q = 1; c.block_k = 16; c.per_head_layout = true; });
  decode("decode_layout_shared", [](FwdCase& c) { c.block_q = 1; c.block_k = 48; c.seqlen_q = 3; c.causal = true; });

  // Paged K/V with several page sizes and ragged per-sequence lengths.
  auto paged = [&](const std::string& name, auto&& set) {
    FwdCase c;
    c.name = name;
    c.batch = 3;
    c.seqlen_q = 1;
    c.heads_q = 8;
    c.heads_kv = 2;
    c.lens_k = {1, 300, 1000};
    set(c);
    add(c);
  };
  paged("paged_16_decode", [](FwdCase& c) { c.page_size = 16; });
  paged("paged_1_decode", [](FwdCase& c) { c.page_size = 1; c.small = true; });
  paged("paged_7_spec5_causal", [](FwdCase& c) { c.page_size = 7; c.seqlen_q = 5; c.causal = true; c.small = true; });
  paged("paged_64_prefill_causal", [](FwdCase& c) {
    c.page_size = 64;
    c.seqlen_q = 150;
    c.lens_k = {150, 150, 150};
  });
  paged("paged_16_d64_f16", [](FwdCase& c) { c.page_size = 16; c.head_dim = 64; c.head_dim_v = 64; c.dtype = DType::f16; });
  paged("paged_16_window", [](FwdCase& c) { c.page_size = 16; c.window_left = 40; c.window_right = 0; });

  // Long keys over few CTAs: the Hopper kernel's KV splits (D = 128, queries past one 64-row
  // tile), with GQA 2 and 3 and several query tiles.
  FwdCase l;
  l.name = "splits_d128_gqa2";
  l.batch = 1;
  l.heads_q = 2;
  l.heads_kv = 1;
  l.seqlen_q = 130;
  l.seqlen_k = 1100;
  add(l);
  l.name = "splits_d128_causal_window_f16";
  l.causal = true;
  l.window_left = 300;
  l.dtype = DType::f16;
  add(l);
  l.name = "prefill_d128_gqa3_causal";
  l.batch = 2;
  l.heads_q = 6;
  l.heads_kv = 2;
  l.seqlen_q = 384;
  l.seqlen_k = 384;
  l.window_left = -1;
  l.dtype = DType::bf16;
  add(l);

  // The Hopper kernel's persistent grid with few items each: small enough for the sanitizers,
  // which run it with ATTN_CUDA_FWD_CTAS=2 so that each CTA takes many items (scripts/gpu_check).
  FwdCase g;
  g.name = "persistent_d128_gqa3_window";
  g.batch = 2;
  g.heads_q = 3;
  g.heads_kv = 1;
  g.seqlen_q = 300;
  g.seqlen_k = 300;
  g.causal = true;
  g.window_left = 100;
  g.small = true;
  add(g);
  g.name = "persistent_d128_f16_full";
  g.dtype = DType::f16;
  g.causal = false;
  g.window_left = -1;
  g.seqlen_q = 200;
  add(g);
  g.name = "persistent_d64_causal";  // the Hopper kernel at head dim 64
  g.dtype = DType::bf16;
  g.head_dim = 64;
  g.head_dim_v = 64;
  g.causal = true;
  g.seqlen_q = 330;
  g.seqlen_k = 330;
  add(g);
  g.name = "persistent_d256_f16_window";  // and at head dim 256 (64-key tiles)
  g.dtype = DType::f16;
  g.head_dim = 256;
  g.head_dim_v = 256;
  g.window_left = 70;
  g.seqlen_q = 290;
  g.seqlen_k = 310;
  add(g);
  g.name = "splits_d256_gqa2";  // its KV splits: one query tile per head, long keys
  g.dtype = DType::bf16;
  g.batch = 1;
  g.heads_q = 2;
  g.causal = false;
  g.window_left = -1;
  g.seqlen_q = 100;
  g.seqlen_k = 1500;
  g.small = false;
  add(g);

  FwdCase s;
  s.name = "qkv_packed_strides";
  s.qkv_packed = true;
  s.head_dim = 64;
  s.head_dim_v = 64;
  s.seqlen_q = 100;
  s.seqlen_k = 100;
  s.causal = true;
  s.small = true;
  add(s);
  return cs;
}

}  // namespace attn::test::cuda
