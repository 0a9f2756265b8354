#include "cuda/mla_check.hpp"
#include "cuda/output_check.hpp"
#include "cuda/device_tensors.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "attn/attention.hpp"
#include "attn/tensor.hpp"
#if defined(ATTN_WITH_CUDA)
#include "cuda/backend.hpp"
#endif

namespace attn::test::cuda {
namespace {

constexpr int kD = 576, kDv = 512;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// The first `dv` channels of a (..., 1, d) tensor, as the kernel reads values.
TensorView leading_channels(const TensorView& k, int dv) {
  TensorView v = k;
  v.shape[std::size_t(k.ndim - 1)] = dv;
  return v;
}

double unit_roundoff(DType t) { return t == DType::bf16 ? 1.0 / 256 : 1.0 / 2048; }

}  // namespace

CheckResult check_mla(const MlaCase& c, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  const int B = int(c.lens_k.size()), H = c.heads, Sq = c.seqlen_q;
  const std::vector<int>& lk = c.lens_k;
  std::vector<int> cu_k(std::size_t(B) + 1, 0);
  std::partial_sum(lk.begin(), lk.end(), cu_k.begin() + 1);
  const int max_sk = *std::max_element(lk.begin(), lk.end());
  const std::int64_t Tk = cu_k.back(), Tq = std::int64_t(B) * Sq;
  const float scale = c.scale > 0.0f ? c.scale : float(1.0 / std::sqrt(192.0));

  // Inputs rounded to the storage dtype once; the reference reads the same values in f64.
  Tensor q_h = host_tensor({B, Sq, H, kD}, c.dtype), lat_h = host_tensor({Tk, 1, kD}, c.dtype);
  for (std::int64_t i = 0; i < q_h.numel(); ++i) write_element(q_h.view(), i, normal(gen));
  for (std::int64_t i = 0; i < lat_h.numel(); ++i) write_element(lat_h.view(), i, normal(gen));
  const Tensor q64 = convert(q_h.view(), DType::f64), lat64 = convert(lat_h.view(), DType::f64);

  // Reference: out (Tq, H, 512) and lse (H, Tq) in f64, Tq = B * Sq. Heads are independent
  // in an MQA, so the float64 loops (about 0.2 GFLOP/s) run per (sequence, 8 heads) on every
  // core, each as a batch of one over strided views: q (1, Sq, 8, 576), k (1, len, 1, 576) and
  // v its first 512 channels.
  Tensor out_ref = host_tensor({Tq, H, kDv}, DType::f64), lse_ref = host_tensor({H, Tq}, DType::f64);
  AttentionParams params;
  params.scale = scale;
  params.mask.causal = c.causal;
  {
    constexpr int kHeadsPerTask = 8;
    const int chunks = (H + kHeadsPerTask - 1) / kHeadsPerTask, tasks = B * chunks;
    std::atomic<int> next_task{0};
    std::vector<std::string> errors(static_cast<std::size_t>(tasks));
    auto work = [&] {
      for (int task; (task = next_task++) < tasks;) {
        const int b = task / chunks, h0 = task % chunks * kHeadsPerTask, hc = std::min(kHeadsPerTask, H - h0);
        const std::int64_t len = lk[std::size_t(b)];
        auto view = [](const Tensor& t, std::int64_t offset, const Shape& shape, const Shape& stride) {
          TensorView v = t.view();
          v.data = t.as<double>() + offset;
          v.ndim = int(shape.size());
          for (std::size_t d = 0; d < shape.size(); ++d) {
            v.shape[d] = shape[d];
            v.stride[d] = stride[d];
          }
          return v;
        };
        ForwardArgs ra;
        ra.q = view(q64, (std::int64_t(b) * Sq * H + h0) * kD, {1, Sq, hc, kD}, {Sq * H * kD, H * kD, kD, 1});
        ra.k = view(lat64, cu_k[std::size_t(b)] * std::int64_t(kD), {1, len, 1, kD}, {len * kD, kD, kD, 1});
        ra.v = leading_channels(ra.k, kDv);
        ra.out = view(out_ref, (std::int64_t(b) * Sq * H + h0) * kDv, {1, Sq, hc, kDv}, {Sq * H * kDv, H * kDv, kDv, 1});
        ra.lse = view(lse_ref, std::int64_t(h0) * Tq + std::int64_t(b) * Sq, {1, hc, Sq}, {H * Tq, Tq, 1});
        ra.params = params;
        try {
          attention_forward(ra, Backend::reference);
        } catch (const std::exception& e) {
          errors[std::size_t(task)] = e.what();
        }
      }
    };
    std::vector<std::thread> pool(std::max(1u, std::thread::hardware_concurrency()));
    for (auto& t : pool) t = std::thread(work);
    for (auto& t : pool) t.join();
    for (const std::string& e : errors) ATTN_CHECK(e.empty(), "mla case ", c.name, ": reference failed: ", e);
  }

  Tensor out_d = poisoned_device({B, Sq, H, kDv}, c.dtype), lse_d = poisoned_device({B, H, Sq}, DType::f32);
  Tensor first_out, first_lse;
  // Each case runs twice on freshly poisoned outputs and must give bitwise the same result.
  auto run_twice = [&](auto&& call) {
    call();
    first_out = to_host(out_d);
    first_lse = to_host(lse_d);
    copy(out_d, poisoned_device({B, Sq, H, kDv}, c.dtype));
    copy(lse_d, poisoned_device({B, H, Sq}, DType::f32));
    call();
  };
  Tensor q_d = to_device(q_h);
  const std::size_t es = dtype_size(c.dtype);
  if (c.page_size == 0) {
    // Padded cache (B, max_sk, 1, 576) through the public API; v a view of k.
    for (int len : lk) ATTN_CHECK(len == max_sk, "mla case ", c.name, ": a padded cache needs equal lengths");
    Tensor k_d = to_device(lat_h);
    ForwardArgs a;
    a.q = q_d;
    a.k = TensorView::contiguous(k_d.data(), c.dtype, {B, max_sk, 1, kD}, Device::cuda());
    a.v = leading_channels(a.k, kDv);
    a.out = out_d;
    a.lse = lse_d;
    a.params = params;
    run_twice([&] { attention_forward(a, Backend::cuda); });
  } else {
#if defined(ATTN_WITH_CUDA)
    // Shuffled page pool; pages and page tails that no sequence owns hold NaN, and unused
    // block-table entries are -1, so a read past a sequence's keys shows up as NaN or a fault.
    const int P = c.page_size;
    std::vector<int> pages_of(std::size_t(B), 0);
    int total_pages = 3;
    for (int b = 0; b < B; ++b) total_pages += pages_of[std::size_t(b)] = (lk[std::size_t(b)] + P - 1) / P;
    const int max_pages = std::max(1, *std::max_element(pages_of.begin(), pages_of.end()));
    std::vector<int> perm(static_cast<std::size_t>(total_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    Tensor pool = host_tensor({total_pages, P, 1, kD}, c.dtype);
    for (std::int64_t i = 0; i < pool.numel(); ++i) write_element(pool.view(), i, kNaN);
    std::vector<int> table(std::size_t(B) * std::size_t(max_pages), -1);
    int next = 0;
    for (int b = 0; b < B; ++b) {
      for (int pg = 0; pg < pages_of[std::size_t(b)]; ++pg) table[std::size_t(b * max_pages + pg)] = perm[std::size_t(next++)];
      for (int t = 0; t < lk[std::size_t(b)]; ++t) {
        const std::int64_t slot = std::int64_t(table[std::size_t(b * max_pages + t / P)]) * P + t % P;
        std::memcpy(static_cast<char*>(pool.data()) + std::size_t(slot * kD) * es,
                    static_cast<char*>(lat_h.data()) + std::size_t((cu_k[std::size_t(b)] + t) * kD) * es,
                    std::size_t(kD) * es);
      }
    }
    Tensor pool_d = to_device(pool), table_d = to_device(host_i32(table)), seqlens_d = to_device(host_i32(lk));
    detail::AttentionProblem p;
    p.batch = B;
    p.heads_q = H;
    p.heads_kv = 1;
    p.head_dim = kD;
    p.head_dim_v = kDv;
    p.dtype = c.dtype;
    p.seqlen_q = Sq;
    p.seqlen_k = max_sk;
    p.seqlens_k = seqlens_d.as<std::int32_t>();
    p.q = q_d.data();
    p.q_layout.batch_stride = std::int64_t(Sq) * H * kD;
    p.q_layout.token_stride = std::int64_t(H) * kD;
    p.q_layout.head_stride = kD;
    // One pool for both: v is k's first 512 channels, with k's layout.
    p.k = p.v = pool_d.data();
    p.k_layout.token_stride = kD;
    p.k_layout.head_stride = kD;
    p.k_layout.block_table = table_d.as<std::int32_t>();
    p.k_layout.block_table_stride = max_pages;
    p.k_layout.page_size = P;
    p.k_layout.page_stride = std::int64_t(P) * kD;
    p.v_layout = p.k_layout;
    p.out = out_d.data();
    p.out_layout.batch_stride = std::int64_t(Sq) * H * kDv;
    p.out_layout.token_stride = std::int64_t(H) * kDv;
    p.out_layout.head_stride = kDv;
    p.lse = lse_d.as<float>();
    p.lse_layout.batch_stride = std::int64_t(H) * Sq;
    p.lse_layout.head_stride = Sq;
    p.lse_layout.token_stride = 1;
    p.scale = scale;
    p.mask.causal = c.causal;
    const std::size_t ws_bytes = ::attn::cuda::forward_workspace_size(p);
    Tensor ws = ws_bytes > 0 ? Tensor({std::int64_t(ws_bytes)}, DType::u8, Device::cuda()) : Tensor();
    run_twice([&] { ::attn::cuda::forward(p, Workspace{ws_bytes > 0 ? ws.data() : nullptr, ws_bytes}); });
#else
    detail::fail("mla checks: this build has no CUDA backend");  // unreachable: no device without it
#endif
  }
  const Tensor out = to_host(out_d), lse = to_host(lse_d);  // synchronises; reports kernel faults
  const bool repeatable = std::memcmp(out.data(), first_out.data(), out.nbytes()) == 0 &&
                          std::memcmp(lse.data(), first_lse.data(), lse.nbytes()) == 0;

  // Every element, with forward_check.cpp's bounds: a fully masked row must be exactly 0 with
  // lse -inf; others per element (loose: catches NaN, unwritten, misplaced), per row and over
  // the tensor (tight: the rounding of P and of the output to the storage dtype).
  const double u = unit_roundoff(c.dtype);
  double vmax = 0;
  for (std::int64_t i = 0; i < lat64.numel(); ++i)
    if (i % kD < kDv) vmax = std::max(vmax, std::abs(lat64.as<double>()[i]));
  OutputCheck check(u, vmax);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < Sq; ++i)
      for (int h = 0; h < H; ++h) {
        const std::int64_t tok = std::int64_t(b) * Sq + i;
        std::ostringstream at;
        at << "(b " << b << ", i " << i << ", h " << h << ")";
        check.row(at.str(), read_element(lse_ref, std::int64_t(h) * Tq + tok),
                  read_element(lse, (std::int64_t(b) * H + h) * Sq + i), kDv, [&](int e, double& got, double& ref) {
                    const std::int64_t idx = (tok * H + h) * kDv + e;
                    got = read_element(out, idx);
                    ref = read_element(out_ref, idx);
                  });
      }
  return check.finish(repeatable);
}

std::vector<MlaCase> mla_cases() {
  std::vector<MlaCase> cs;
  // Context lengths 1 (a single key; under causal with two queries the first sees nothing),
  // 63 (one partial tile), 1000, 4097 (one key past a tile boundary), ragged in one batch:
  // every split ends somewhere different. The float64 reference costs 2 (576 + 512) flops per
  // (query, head, key) in plain loops, so 128 heads see the long lengths once per dtype path.
  const std::vector<int> ragged{1, 63, 1000, 4097};
  auto add = [&](const std::string& name, int heads, int sq, bool causal, int page, DType dt,
                 std::vector<int> lens, bool small = false) {
    MlaCase c;
    c.name = name;
    c.heads = heads;
    c.seqlen_q = sq;
    c.causal = causal;
    c.page_size = page;
    c.dtype = dt;
    c.lens_k = std::move(lens);
    c.small = small;
    cs.push_back(c);
  };
  for (int page : {64, 17}) {
    const std::string tag = "_page" + std::to_string(page);
    add("mla_h16" + tag + "_sq1", 16, 1, false, page, DType::bf16, ragged);
    add("mla_h16" + tag + "_sq2_causal", 16, 2, true, page, DType::bf16, ragged);
  }
  add("mla_h128_page64_sq1", 128, 1, false, 64, DType::bf16, ragged);
  add("mla_h128_page17_sq2_causal", 128, 2, true, 17, DType::bf16, {1, 63, 1000});
  add("mla_h128_page64_sq1_f16", 128, 1, false, 64, DType::f16, {63, 1000});
  add("mla_h64_page64_sq2_f16", 64, 2, false, 64, DType::f16, {1000, 63});
  // Speculative decode: 4 queries x 32 heads are two 64-row blocks of two queries each.
  add("mla_h32_page64_sq4_causal", 32, 4, true, 64, DType::bf16, {1, 1000});
  add("mla_h16_page17_sq2_small", 16, 2, true, 17, DType::bf16, {1, 70, 130}, true);
  // No split: every key in one 32-key tile; and 66 sequences x 2 row blocks, enough CTAs to
  // fill an H100's 132 SMs, with three key tiles each.
  add("mla_h16_one_tile", 16, 1, false, 64, DType::bf16, {1, 17, 32, 30}, true);
  std::vector<int> many;
  for (int b = 0; b < 66; ++b) many.push_back(65 + b % 16);
  add("mla_h128_b66_no_split", 128, 1, false, 64, DType::bf16, many);
  // A padded cache through attention_forward, and an explicit scale.
  add("mla_h128_padded_api", 128, 1, false, 0, DType::bf16, {300, 300});
  add("mla_h16_padded_scale_causal", 16, 3, true, 0, DType::f16, {129, 129, 129});
  cs.back().scale = 0.05f;
  return cs;
}

}  // namespace attn::test::cuda
