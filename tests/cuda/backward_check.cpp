#include "cuda/backward_check.hpp"
#include "cuda/case_lists.hpp"
#include "cuda/device_tensors.hpp"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <tuple>

namespace attn::test::cuda {
namespace {

/// Unit roundoff of the storage type as the forward checks count it (one rounding's bound x 2).
double unit_roundoff(DType t) { return t == DType::bf16 ? 1.0 / 256 : 1.0 / 2048; }

std::string sci(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", x);
  return buf;
}

/// Compares one gradient (rows of `dim` elements) with the float64 reference: every element
/// within 6u of its value plus the tensor's rms, plus 3u of its row's rms, plus its `slack`
/// (catches NaN, unwritten and misplaced values), every row within 6u of its norm plus u of the rms row norm plus the norm
/// of its slack, the tensor within 3u in relative l2: the rounding of P and dS to the storage
/// dtype and of the result, with room for the f32 sums. Rows flagged in `zero_rows` (fully
/// masked queries) must be exactly 0.
///
/// `slack` (per element, or empty) is what the rounding of `out` to the storage dtype moves the
/// exact gradient: every FlashAttention backward computes D_i = dO_i . O_i from the stored O, and
/// where P is nearly one-hot dS = P (dP - D) cancels down to that error (and to the f32
/// rounding of D and dP where it cancels exactly).
void compare(const char* name, const Tensor& got, const Tensor& ref, int dim, double u,
             const std::vector<double>& slack, const std::vector<char>& zero_rows, std::ostringstream& why,
             int& failures, std::ostringstream& summary) {
  auto fail = [&](const std::string& what) {
    if (failures++ < 6) why << name << " " << what << "; ";
  };
  const std::int64_t n = ref.numel(), rows = n / dim;
  double ref2 = 0, err2 = 0;
  for (std::int64_t i = 0; i < n; ++i) ref2 += read_element(ref, i) * read_element(ref, i);
  const double rms = std::sqrt(ref2 / double(std::max<std::int64_t>(n, 1)));
  const double rms_row = rms * std::sqrt(double(dim));
  double worst_row = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    double row_err2 = 0, row_ref2 = 0, row_slack2 = 0;
    const bool zero = !zero_rows.empty() && zero_rows[std::size_t(r)] != 0;
    // An element that cancels to near 0 still carries the rounding of its row's terms: dq_i sums
    // dS_ij k_j with dS_ij rounded to the storage dtype, an error of about u / 2 of the row's
    // magnitude, which can far exceed the tensor's rms in a row with few allowed keys (seen once,
    // causal_sq_gt_sk_fully_masked_rows: dq off by 1.08x the bound, bit-identical on the sm80
    // and sm90 kernels).
    double this_row2 = 0;
    for (int e = 0; e < dim; ++e) this_row2 += read_element(ref, r * dim + e) * read_element(ref, r * dim + e);
    const double row_term = 3 * u * std::sqrt(this_row2 / dim);
    for (int e = 0; e < dim; ++e) {
      const std::int64_t i = r * dim + e;
      const double g = read_element(got, i), x = read_element(ref, i);
      const double sl = slack.empty() ? 0.0 : slack[std::size_t(i)];
      const double bound = 6 * u * (std::abs(x) + rms) + row_term + sl;
      if (zero ? g != 0.0 : !(std::abs(g - x) <= bound))
        fail("[" + std::to_string(r) + "][" + std::to_string(e) + "] = " + sci(g) + ", expected " + sci(x) +
             (zero ? " (fully masked row)" : " +- " + sci(bound)));
      row_err2 += (g - x) * (g - x);
      row_ref2 += x * x;
      row_slack2 += sl * sl;
    }
    err2 += row_err2;
    const double row_err = std::sqrt(row_err2), row_norm = std::sqrt(row_ref2);
    const double row_tol = 6 * u * row_norm + u * rms_row + std::sqrt(row_slack2);
    worst_row = std::max(worst_row, row_err / (row_tol + 1e-30));
    if (!(row_err <= row_tol))
      fail("row " + std::to_string(r) + " error " + sci(row_err) + " > " + sci(row_tol) + " (norm " + sci(row_norm) + ")");
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  if (!(rel <= 3 * u)) fail("relative l2 error " + sci(rel) + " > " + sci(3 * u));
  summary << name << " rel_l2 " << sci(rel) << " row_err/tol " << sci(worst_row) << "; ";
}

double max_abs(const TensorView& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(read_element(t, i)));
  return m;
}

std::vector<int> offsets_of(const std::vector<int>& lens) {
  std::vector<int> cu(lens.size() + 1, 0);
  std::partial_sum(lens.begin(), lens.end(), cu.begin() + 1);
  return cu;
}

}  // namespace

CheckResult check_backward(const BwdCase& c, std::uint64_t seed, bool repeat_bitwise) {
  std::mt19937_64 gen(seed);
  const bool varlen = !c.lens_q.empty();
  const int B = varlen ? int(c.lens_q.size()) : c.batch;
  const int Hq = c.heads_q, Hk = c.heads_kv, D = c.head_dim, Dv = c.head_dim_v > 0 ? c.head_dim_v : D;
  const std::vector<int> lq = varlen ? c.lens_q : std::vector<int>(std::size_t(B), c.seqlen_q);
  const std::vector<int> lk = varlen ? c.lens_k : std::vector<int>(std::size_t(B), c.seqlen_k);
  const std::vector<int> cu_q = offsets_of(lq), cu_k = offsets_of(lk);
  const int max_sq = *std::max_element(lq.begin(), lq.end()), max_sk = *std::max_element(lk.begin(), lk.end());
  const std::int64_t Tq = cu_q.back(), Tk = cu_k.back();
  const Shape q_shape = varlen ? Shape{Tq, Hq, D} : Shape{B, c.seqlen_q, Hq, D};
  const Shape k_shape = varlen ? Shape{Tk, Hk, D} : Shape{B, c.seqlen_k, Hk, D};
  const Shape o_shape = varlen ? Shape{Tq, Hq, Dv} : Shape{B, c.seqlen_q, Hq, Dv};
  const Shape v_shape = varlen ? Shape{Tk, Hk, Dv} : Shape{B, c.seqlen_k, Hk, Dv};
  const Shape lse_shape = varlen ? Shape{Hq, Tq} : Shape{B, Hq, c.seqlen_q};

  const Tensor q_h = host_randn(q_shape, c.dtype, c.sigma, gen), k_h = host_randn(k_shape, c.dtype, c.sigma, gen);
  const Tensor v_h = host_randn(v_shape, c.dtype, 1.0, gen), dout_h = host_randn(o_shape, c.dtype, 1.0, gen);

  const CaseMasks masks = make_case_masks(c, Hq, max_sq, max_sk, gen);
  const Mask& mask_h = masks.host;
  const Mask& mask_d = masks.device;
  AttentionParams params;
  params.scale = c.scale;
  params.softcap = c.softcap;

  // Reference forward (out rounded to the storage dtype, lse f32) and backward (f64 gradients).
  Tensor cu_q_h = host_i32(cu_q), cu_k_h = host_i32(cu_k);
  Tensor out_h = host_tensor(o_shape, c.dtype), lse_h = host_tensor(lse_shape, DType::f32);
  Tensor dq_ref = host_tensor(q_shape, DType::f64), dk_ref = host_tensor(k_shape, DType::f64),
         dv_ref = host_tensor(v_shape, DType::f64);
  // The float64 reference on this case's inputs, mask and params (packed when varlen).
  auto reference_forward = [&](const Tensor& out, const Tensor& lse) {
    ForwardArgs f;
    f.q = q_h;
    f.k = k_h;
    f.v = v_h;
    f.out = out;
    f.lse = lse;
    if (varlen) {
      f.cu_seqlens_q = cu_q_h;
      f.cu_seqlens_k = cu_k_h;
    }
    f.params = params;
    f.params.mask = mask_h;
    attention_forward(f, Backend::reference);
  };
  auto reference_backward = [&](const Tensor& out, const Tensor& lse, const Tensor& dout, const Tensor& dq,
                                const Tensor& dk, const Tensor& dv) {
    BackwardArgs r;
    r.q = q_h;
    r.k = k_h;
    r.v = v_h;
    r.out = out;
    r.dout = dout;
    r.lse = lse;
    r.dq = dq;
    r.dk = dk;
    r.dv = dv;
    if (varlen) {
      r.cu_seqlens_q = cu_q_h;
      r.cu_seqlens_k = cu_k_h;
    }
    r.params = params;
    r.params.mask = mask_h;
    attention_backward(r, Backend::reference);
  };
  reference_forward(out_h, lse_h);
  reference_backward(out_h, lse_h, dout_h, dq_ref, dk_ref, dv_ref);

  // The slack of compare(): dD_i = dO_i . (O_stored - O_exact) shifts dS_ij by -P_ij dD_i
  // (times the soft-cap factor, at most 1), so dq_i by at most scale |dD_i| max|k| and dk_j by
  // at most scale max|q| sum_i P_ij |dD_i|, which one more reference backward computes as dv
  // with dout_i = |dD_i| in every column.
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(double(D));
  std::vector<double> dq_slack(std::size_t(dq_ref.numel())), dk_slack(std::size_t(dk_ref.numel()));
  std::vector<char> masked_rows(std::size_t(dq_ref.numel() / D));
  std::vector<double> dv_slack;
  const double u = unit_roundoff(c.dtype);
  {
    Tensor out_exact = host_tensor(o_shape, DType::f64), lse_exact = host_tensor(lse_shape, DType::f64);
    reference_forward(out_exact, lse_exact);
    Tensor dd = host_tensor(o_shape, DType::f64);
    const double kmax = max_abs(k_h.view()), qmax = max_abs(q_h.view()), vmax = max_abs(v_h.view());
    const std::int64_t rows = out_exact.numel() / Dv;
    for (std::int64_t r = 0; r < rows; ++r) {
      double delta = 0, magnitude = 0;
      for (int e = 0; e < Dv; ++e) {
        const std::int64_t i = r * Dv + e;
        const double o = read_element(out_h, i), g = read_element(dout_h, i);
        delta += g * (o - read_element(out_exact, i));
        magnitude += std::abs(g) * (std::abs(o) + vmax);
      }
      // Plus the f32 rounding of the dot products D_i and dP_ij themselves (a few units in the
      // last place of their terms' magnitudes): exact cancellation, as with a single allowed
      // key, leaves that instead of 0.
      delta = std::abs(delta) + 8 * std::ldexp(magnitude, -24);
      for (int e = 0; e < Dv; ++e) write_element(dd.view(), r * Dv + e, std::abs(delta));
      for (int e = 0; e < D; ++e) dq_slack[std::size_t(r * D + e)] = 2 * scale * std::abs(delta) * kmax;
      // Row r is (token, head); the lse is (B, Hq, Sq) padded or (Hq, Tq) packed.
      const std::int64_t h = r % Hq, t = r / Hq;
      const std::int64_t lse_index = varlen ? h * Tq + t : (t / c.seqlen_q * Hq + h) * c.seqlen_q + t % c.seqlen_q;
      masked_rows[std::size_t(r)] = std::isinf(read_element(lse_exact, lse_index)) ? 1 : 0;
    }
    Tensor dq_w = host_tensor(q_shape, DType::f64), dk_w = host_tensor(k_shape, DType::f64),
           dv_w = host_tensor(v_shape, DType::f64);
    reference_backward(out_exact, lse_exact, dd, dq_w, dk_w, dv_w);
    for (std::int64_t j = 0; j < dk_w.numel() / D; ++j)
      for (int e = 0; e < D; ++e)
        dk_slack[std::size_t(j * D + e)] = 2 * scale * qmax * read_element(dv_w, j * Dv);

    // dV = P^T dO takes P rounded to the storage dtype, which moves dv_jc by up to
    // (u / 2) sum_i P_ij |dO_ic|: where the terms cancel, that exceeds 6u (|dv_jc| + rms) (seen
    // once in causal_d128_f16: one element at 1.03x). One more reference backward gives the
    // sum, as dv with dout = |dO|; the slack is twice the bound, u times the sum.
    for (std::int64_t i = 0; i < dd.numel(); ++i) write_element(dd.view(), i, std::abs(read_element(dout_h, i)));
    reference_backward(out_exact, lse_exact, dd, dq_w, dk_w, dv_w);
    dv_slack.resize(std::size_t(dv_w.numel()));
    for (std::int64_t i = 0; i < dv_w.numel(); ++i) dv_slack[std::size_t(i)] = u * read_element(dv_w, i);
  }

  Tensor q_d = to_device(q_h), k_d = to_device(k_h), v_d = to_device(v_h), out_d = to_device(out_h),
         dout_d = to_device(dout_h), lse_d = to_device(lse_h), cu_q_d, cu_k_d;
  BackwardArgs a;
  a.q = q_d;
  a.k = k_d;
  a.v = v_d;
  a.out = out_d;
  a.dout = dout_d;
  a.lse = lse_d;
  if (varlen) {
    cu_q_d = to_device(cu_q_h);
    cu_k_d = to_device(cu_k_h);
    a.cu_seqlens_q = cu_q_d;
    a.cu_seqlens_k = cu_k_d;
  }
  a.params = params;
  a.params.mask = mask_d;
  a.deterministic = c.deterministic;
  auto run = [&](Tensor& dq, Tensor& dk, Tensor& dv) {
    Tensor dq_d = poisoned_device(q_shape, c.dtype), dk_d = poisoned_device(k_shape, c.dtype),
           dv_d = poisoned_device(v_shape, c.dtype);
    a.dq = dq_d;
    a.dk = dk_d;
    a.dv = dv_d;
    attention_backward(a, Backend::cuda);
    dq = to_host(dq_d);  // synchronises; reports kernel faults
    dk = to_host(dk_d);
    dv = to_host(dv_d);
  };
  Tensor dq, dk, dv;
  run(dq, dk, dv);

  std::ostringstream why, summary;
  int failures = 0;
  compare("dq", dq, dq_ref, D, u, dq_slack, masked_rows, why, failures, summary);
  compare("dk", dk, dk_ref, D, u, dk_slack, {}, why, failures, summary);
  compare("dv", dv, dv_ref, Dv, u, dv_slack, {}, why, failures, summary);
  if (repeat_bitwise) {
    Tensor dq2, dk2, dv2;
    run(dq2, dk2, dv2);
    for (auto [name, x, y] : {std::tuple{"dq", &dq, &dq2}, std::tuple{"dk", &dk, &dk2}, std::tuple{"dv", &dv, &dv2}}) {
      const std::size_t bytes = std::size_t(x->numel()) * dtype_size(c.dtype);
      if (std::memcmp(x->data(), y->data(), bytes) != 0) {
        ++failures;
        why << name << " differs bitwise between two deterministic runs; ";
      }
    }
  }
  if (failures > 0) summary << failures << " failures: " << why.str();
  return {failures == 0, summary.str()};
}

std::vector<BwdCase> backward_cases() {
  std::vector<BwdCase> cs;
  auto add = [&](BwdCase c) { cs.push_back(std::move(c)); };

  add_basic_cases(cs);

  // Masks, one part at a time and some combinations.
  BwdCase m;
  m.heads_q = 2;
  m.heads_kv = 2;
  m.seqlen_q = 200;
  m.seqlen_k = 200;
  // D 128: on an H100 the masks and varlen batches then also reach the Hopper kernel (which
  // takes D 128 and 64); the sm80 kernel's masking is the same at every D.
  m.head_dim = 128;
  auto mask_case = [&](const std::string& name, auto&& set) {
    BwdCase c = m;
    c.name = name;
    set(c);
    add(c);
  };
  add_mask_cases(cs, m);
  mask_case("causal_d128_f16", [](BwdCase& c) { c.causal = true; c.dtype = DType::f16; c.head_dim = 128; });
  mask_case("causal_sq_gt_sk_d192x128", [](BwdCase& c) { c.causal = true; c.seqlen_q = 250; c.seqlen_k = 100; c.head_dim = 192; c.head_dim_v = 128; });
  mask_case("global_strided", [](BwdCase& c) { c.global_tokens = {7, 100}; c.strided = 9; });
  mask_case("softcap_window_d256", [](BwdCase& c) { c.softcap = 20.0f; c.sigma = 2.0; c.window_left = 40; c.window_right = 3; c.head_dim = 256; });
  mask_case("softcap_causal_d128", [](BwdCase& c) { c.softcap = 30.0f; c.sigma = 4.0; c.causal = true; c.head_dim = 128; });
  mask_case("large_logits_bf16", [](BwdCase& c) { c.sigma = 3.0; });
  // The Hopper kernel at D 64 (each warpgroup's dQ over its own keys).
  mask_case("window_d64_f16", [](BwdCase& c) { c.window_left = 70; c.window_right = 5; c.head_dim = 64; c.dtype = DType::f16; });
  mask_case("causal_sq_gt_sk_d64", [](BwdCase& c) { c.causal = true; c.seqlen_q = 260; c.seqlen_k = 130; c.head_dim = 64; });
  // Many visits per key block (stages reused over and over while the warpgroups run apart),
  // the per-element mask path, and soft-cap.
  mask_case("softcap_global_gqa_d64", [](BwdCase& c) {
    c.softcap = 25.0f; c.sigma = 2.0; c.global_tokens = {3, 300}; c.window_left = 100; c.window_right = 40;
    c.seqlen_q = 520; c.seqlen_k = 450; c.heads_q = 6; c.heads_kv = 2; c.head_dim = 64;
  });
  mask_case("empty_queries", [](BwdCase& c) { c.seqlen_q = 0; c.seqlen_k = 9; c.small = true; });

  // GQA groups, including 3.
  for (auto [hq, hk] : {std::pair{6, 2}, {8, 1}, {3, 1}}) {
    BwdCase c;
    c.name = "gqa_" + std::to_string(hq) + "_" + std::to_string(hk);
    c.head_dim = hq == 3 ? 128 : 64;
    c.heads_q = hq;
    c.heads_kv = hk;
    c.seqlen_q = 150;
    c.seqlen_k = 150;
    c.causal = hk == 2;
    add(c);
  }

  const BwdCase v = add_varlen_cases(cs, 128);

  // Deterministic mode: bitwise-repeatable and still correct, under masks that skip tiles.
  for (auto [name, causal, hq] : {std::tuple{"deterministic", false, 4}, std::tuple{"deterministic_causal_gqa", true, 6}}) {
    BwdCase c;
    c.name = name;
    c.deterministic = true;
    c.causal = causal;
    c.heads_q = hq;
    c.heads_kv = 2;
    c.seqlen_q = 300;
    c.seqlen_k = 260;
    c.small = !causal;
    add(c);
  }
  BwdCase w = v;
  w.name = "deterministic_varlen_window";
  w.deterministic = true;
  w.small = false;
  add(w);
  BwdCase y;
  y.name = "deterministic_d64_window";  // the Hopper kernel's two partial dQ sums per tile, in order
  y.deterministic = true;
  y.head_dim = 64;
  y.window_left = 90;
  y.window_right = 20;
  y.seqlen_q = 300;
  y.seqlen_k = 300;
  y.small = true;
  add(y);
  BwdCase x;
  x.name = "deterministic_d256_gqa3_causal";
  x.deterministic = true;
  x.causal = true;
  x.head_dim = 256;
  x.heads_q = 3;
  x.heads_kv = 1;
  x.seqlen_q = 170;
  x.seqlen_k = 230;
  add(x);
  return cs;
}

}  // namespace attn::test::cuda
