// attention_with_kvcache on CUDA tensors against the same call on host copies (the CPU path's
// float64 reference backend): decode, speculative decode and chunked appends over contiguous
// caches and shuffled page pools (pages of 1, 5 and 16 tokens), GQA groups 1, 3 and 4, causal
// and window masks, soft-capping, per-sequence lengths including 0. The updated caches must
// equal the host path's byte for byte; out and lse follow forward_check's tolerances. Plus the
// errors: a rejected call names the argument and leaves the device caches as they were.
// Skips when no CUDA device is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attn/attention_kvcache.hpp"
#include "cuda/device_tensors.hpp"

namespace attn {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
using test::cuda::host_i32;
using test::cuda::host_randn;
using test::cuda::host_tensor;
using test::cuda::Shape;
using test::cuda::to_device;
using test::cuda::to_host;

struct KvCase {
  std::string name;
  DType dtype = DType::bf16;
  int head_dim = 128;
  int head_dim_v = 128;
  int heads_q = 4;
  int heads_kv = 4;
  int seqlen_q = 1;
  int seqlen_new = 1;  ///< 0: no k_new / v_new
  std::vector<int> cache_lens;  ///< tokens already cached, per sequence
  int page_size = 0;            ///< 0: contiguous caches
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.0f;
};

void PrintTo(const KvCase& c, std::ostream* os) { *os << c.name; }

Tensor copy_of(const Tensor& h) { return to_host(h); }  // copy() serves host to host too

Tensor poisoned(const Shape& shape, DType dtype) {
  Tensor t = host_tensor(shape, dtype);
  for (std::int64_t i = 0; i < t.numel(); ++i) write_element(t.view(), i, kNaN);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

/// Unit roundoff of the storage type: the relative error of one rounding.
double unit_roundoff(DType t) { return t == DType::bf16 ? 1.0 / 256 : 1.0 / 2048; }

/// Host inputs of one case. Cache slots at or past each sequence's final length (and the
/// slots the append fills) hold NaN, as do spare pages; unused block-table entries are -1.
/// A read past a sequence's keys, or a missing append, then shows up as NaN.
struct HostInputs {
  int B = 0, Snew = 0;
  Tensor q, k_cache, v_cache, table, lens, k_new, v_new;

  HostInputs(const KvCase& c, std::mt19937_64& gen) {
    B = int(c.cache_lens.size());
    Snew = c.seqlen_new;
    const int Hk = c.heads_kv, D = c.head_dim, Dv = c.head_dim_v;
    std::vector<int> final_len(static_cast<std::size_t>(B));
    for (int b = 0; b < B; ++b) final_len[std::size_t(b)] = c.cache_lens[std::size_t(b)] + Snew;
    q = host_randn({B, c.seqlen_q, c.heads_q, D}, c.dtype, 1.0, gen);
    lens = host_i32(c.cache_lens, {B});
    if (Snew > 0) {
      k_new = host_randn({B, Snew, Hk, D}, c.dtype, 1.0, gen);
      v_new = host_randn({B, Snew, Hk, Dv}, c.dtype, 1.0, gen);
    }
    const Tensor k_vals = host_randn({B, std::max(1, *std::max_element(final_len.begin(), final_len.end())), Hk, D},
                                     c.dtype, 1.0, gen);
    const Tensor v_vals = host_randn({B, k_vals.size(1), Hk, Dv}, c.dtype, 1.0, gen);
    // Token t of sequence b lives at cache row slot(b, t); cached tokens take k_vals / v_vals.
    auto fill = [&](Tensor& cache, const Tensor& vals, int dim, auto&& slot) {
      const std::size_t row = std::size_t(Hk) * std::size_t(dim) * dtype_size(c.dtype);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < c.cache_lens[std::size_t(b)]; ++t)
          std::memcpy(static_cast<char*>(cache.data()) + std::size_t(slot(b, t)) * row,
                      static_cast<const char*>(vals.data()) + (std::size_t(b) * std::size_t(vals.size(1)) + t) * row, row);
    };
    if (c.page_size == 0) {
      const int smax = *std::max_element(final_len.begin(), final_len.end()) + 3;
      k_cache = poisoned({B, smax, Hk, D}, c.dtype);
      v_cache = poisoned({B, smax, Hk, Dv}, c.dtype);
      auto slot = [&](int b, int t) { return std::int64_t(b) * smax + t; };
      fill(k_cache, k_vals, D, slot);
      fill(v_cache, v_vals, Dv, slot);
      return;
    }
    // A shuffled pool with two spare pages; table rows one entry wider than the longest need.
    const int P = c.page_size;
    std::vector<int> pages_of(static_cast<std::size_t>(B));
    int total = 2;
    for (int b = 0; b < B; ++b) total += pages_of[std::size_t(b)] = (final_len[std::size_t(b)] + P - 1) / P;
    const int width = *std::max_element(pages_of.begin(), pages_of.end()) + 1;
    std::vector<int> perm(static_cast<std::size_t>(total));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    std::vector<int> rows(std::size_t(B) * std::size_t(width), -1);
    int next = 0;
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < pages_of[std::size_t(b)]; ++i) rows[std::size_t(b * width + i)] = perm[std::size_t(next++)];
    table = host_i32(rows, {B, width});
    k_cache = poisoned({total, P, Hk, D}, c.dtype);
    v_cache = poisoned({total, P, Hk, Dv}, c.dtype);
    auto slot = [&](int b, int t) { return std::int64_t(rows[std::size_t(b * width + t / P)]) * P + t % P; };
    fill(k_cache, k_vals, D, slot);
    fill(v_cache, v_vals, Dv, slot);
  }

  /// The call's arguments over these tensors (or their device copies).
  KVCacheArgs args(const KvCase& c, const Tensor& q_, const Tensor& kc, const Tensor& vc, const Tensor& bt,
                   const Tensor& cs, const Tensor& kn, const Tensor& vn, const Tensor& out, const Tensor& lse) const {
    KVCacheArgs a;
    a.q = q_;
    a.k_cache = kc;
    a.v_cache = vc;
    if (bt.defined()) a.block_table = bt;
    a.cache_seqlens = cs;
    if (kn.defined()) {
      a.k_new = kn;
      a.v_new = vn;
    }
    a.out = out;
    a.lse = lse;
    a.params.mask.causal = c.causal;
    a.params.mask.window_left = c.window_left;
    a.params.mask.window_right = c.window_right;
    a.params.softcap = c.softcap;
    return a;
  }
};

/// Device copies of the inputs; outputs poisoned with NaN.
struct DeviceInputs {
  Tensor q, k_cache, v_cache, table, lens, k_new, v_new, out, lse;
  DeviceInputs(const KvCase& c, const HostInputs& h) {
    q = to_device(h.q);
    k_cache = to_device(h.k_cache);
    v_cache = to_device(h.v_cache);
    if (h.table.defined()) table = to_device(h.table);
    lens = to_device(h.lens);
    if (h.k_new.defined()) {
      k_new = to_device(h.k_new);
      v_new = to_device(h.v_new);
    }
    out = to_device(poisoned({h.B, c.seqlen_q, c.heads_q, c.head_dim_v}, c.dtype));
    lse = to_device(poisoned({h.B, c.heads_q, c.seqlen_q}, DType::f32));
  }
  KVCacheArgs args(const KvCase& c, const HostInputs& h) const {
    return h.args(c, q, k_cache, v_cache, table, lens, k_new, v_new, out, lse);
  }
};

class CudaKvCache : public ::testing::TestWithParam<KvCase> {};

TEST_P(CudaKvCache, MatchesCpuPath) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const KvCase& c = GetParam();
  const std::uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const HostInputs h(c, gen);
  DeviceInputs d(c, h);

  // The host path (float64 reference) on copies of the same values, f32 outputs.
  const Tensor kc_ref = copy_of(h.k_cache), vc_ref = copy_of(h.v_cache);
  const Tensor out_ref = host_tensor({h.B, c.seqlen_q, c.heads_q, c.head_dim_v}, DType::f32);
  const Tensor lse_ref = host_tensor({h.B, c.heads_q, c.seqlen_q}, DType::f32);
  attention_with_kvcache(h.args(c, h.q, kc_ref, vc_ref, h.table, h.lens, h.k_new, h.v_new, out_ref, lse_ref),
                         Backend::reference);

  attention_with_kvcache(d.args(c, h), Backend::cuda);
  const Tensor out = to_host(d.out), lse = to_host(d.lse);  // synchronises; reports kernel faults
  EXPECT_TRUE(same_bytes(to_host(d.k_cache), kc_ref)) << "k_cache after the append differs";
  EXPECT_TRUE(same_bytes(to_host(d.v_cache), vc_ref)) << "v_cache after the append differs";
  EXPECT_TRUE(same_bytes(to_host(d.lens), h.lens)) << "cache_seqlens changed";

  // Every element (forward_check.cpp's bounds): fully masked rows exactly 0 with lse -inf;
  // others per element, per row and over the whole tensor.
  const double u = unit_roundoff(c.dtype);
  double vmax = 0;
  for (const Tensor* t : {&h.v_cache, &h.v_new})
    if (t->defined())
      for (std::int64_t i = 0; i < t->numel(); ++i) {
        const double x = read_element(t->view(), i);
        if (std::isfinite(x)) vmax = std::max(vmax, std::abs(x));
      }
  const int Dv = c.head_dim_v;
  int failures = 0;
  std::ostringstream why;
  auto fail = [&](const std::string& what) {
    if (failures++ < 5) why << what << "; ";
  };
  double err2 = 0, ref2 = 0;
  for (int b = 0; b < h.B; ++b)
    for (int i = 0; i < c.seqlen_q; ++i)
      for (int hq = 0; hq < c.heads_q; ++hq) {
        const std::string at = "(b " + std::to_string(b) + ", i " + std::to_string(i) + ", h " + std::to_string(hq) + ")";
        const std::int64_t li = (std::int64_t(b) * c.heads_q + hq) * c.seqlen_q + i;
        const double lref = read_element(lse_ref, li), lgot = read_element(lse, li);
        const bool lse_ok = std::isinf(lref) || std::isinf(lgot) ? lgot == lref
                                                                  : std::abs(lgot - lref) <= 2e-4 * (1 + std::abs(lref));
        if (!lse_ok) fail("lse " + at + " = " + std::to_string(lgot) + ", expected " + std::to_string(lref));
        double row_err2 = 0, row_ref2 = 0;
        for (int e = 0; e < Dv; ++e) {
          const std::int64_t oi = ((std::int64_t(b) * c.seqlen_q + i) * c.heads_q + hq) * Dv + e;
          const double got = read_element(out, oi), ref = read_element(out_ref, oi);
          if (std::isinf(lref)) {
            if (got != 0.0) fail("out " + at + " = " + std::to_string(got) + " in a fully masked row");
            continue;
          }
          if (!std::isfinite(got) || std::abs(got - ref) > 4 * u * (std::abs(ref) + vmax))
            fail("out " + at + "[" + std::to_string(e) + "] = " + std::to_string(got) + ", expected " +
                 std::to_string(ref));
          row_err2 += (got - ref) * (got - ref);
          row_ref2 += ref * ref;
        }
        if (std::isinf(lref)) continue;
        err2 += row_err2;
        ref2 += row_ref2;
        if (!(std::sqrt(row_err2) <= 6 * u * std::sqrt(row_ref2) + 1e-3 * u))
          fail("out row " + at + " relative error " + std::to_string(std::sqrt(row_err2 / (row_ref2 + 1e-300))));
      }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  if (!(rel <= 3 * u)) fail("out relative l2 error " + std::to_string(rel) + " > " + std::to_string(3 * u));
  EXPECT_EQ(failures, 0) << failures << " failures: " << why.str() << " (rel_l2 " << rel << ")";
}

std::vector<KvCase> kvcache_cases() {
  std::vector<KvCase> cs;
  auto add = [&](KvCase c) { cs.push_back(std::move(c)); };
  // Decode: one query, one new token (or none); lengths 0 and past the split-KV threshold.
  add({.name = "decode_contiguous_g1_lse", .cache_lens = {0, 37, 300}});
  add({.name = "decode_contiguous_no_new_g4_splitkv", .heads_q = 8, .heads_kv = 2, .seqlen_new = 0,
       .cache_lens = {0, 1500, 2049, 7}});
  add({.name = "decode_paged16_g3_causal", .heads_q = 6, .heads_kv = 2, .cache_lens = {0, 16, 1000}, .page_size = 16,
       .causal = true});
  add({.name = "decode_paged1_g4_softcap", .heads_q = 8, .heads_kv = 2, .cache_lens = {3, 0, 77}, .page_size = 1,
       .softcap = 20.0f});
  add({.name = "decode_paged5_window_f16_d64", .dtype = DType::f16, .head_dim = 64, .head_dim_v = 64, .heads_q = 2,
       .heads_kv = 2, .cache_lens = {0, 4, 5, 123}, .page_size = 5, .window_left = 20, .window_right = 0});
  add({.name = "decode_paged5_no_new_g3", .heads_q = 3, .heads_kv = 1, .seqlen_new = 0, .cache_lens = {9, 0, 610},
       .page_size = 5});
  add({.name = "decode_paged16_d192x128", .head_dim = 192, .head_dim_v = 128, .heads_q = 4, .heads_kv = 2,
       .cache_lens = {33, 500}, .page_size = 16});
  // Speculative decode: 3 queries, 1 new token; causal leaves early queries of short sequences empty.
  add({.name = "spec3_paged16_g4_causal", .heads_q = 8, .heads_kv = 2, .seqlen_q = 3, .cache_lens = {0, 15, 40},
       .page_size = 16, .causal = true});
  // Chunked appends: Sq = Snew new tokens attend to the prefix and causally within the chunk.
  add({.name = "append7_contiguous_g3_causal", .heads_q = 6, .heads_kv = 2, .seqlen_q = 7, .seqlen_new = 7,
       .cache_lens = {0, 100, 33}, .causal = true});
  add({.name = "append9_paged5_g4_causal_window", .heads_q = 4, .heads_kv = 1, .seqlen_q = 9, .seqlen_new = 9,
       .cache_lens = {0, 12, 71}, .page_size = 5, .causal = true, .window_left = 16, .window_right = 0});
  add({.name = "append20_paged16_softcap_f16_d64", .dtype = DType::f16, .head_dim = 64, .head_dim_v = 64,
       .heads_q = 2, .heads_kv = 2, .seqlen_q = 20, .seqlen_new = 20, .cache_lens = {40, 0}, .page_size = 16,
       .softcap = 15.0f});
  add({.name = "prefill70_paged1_g4_causal_d64", .head_dim = 64, .head_dim_v = 64, .heads_q = 4, .heads_kv = 1,
       .seqlen_q = 70, .seqlen_new = 70, .cache_lens = {0, 50}, .page_size = 1, .causal = true});
  add({.name = "append5_contiguous_window_d256", .head_dim = 256, .head_dim_v = 256, .heads_q = 2, .heads_kv = 2,
       .seqlen_q = 5, .seqlen_new = 5, .cache_lens = {8, 200}, .window_left = 32, .window_right = 4});
  return cs;
}

INSTANTIATE_TEST_SUITE_P(All, CudaKvCache, ::testing::ValuesIn(kvcache_cases()),
                         [](const ::testing::TestParamInfo<KvCase>& info) { return info.param.name; });

// ---- errors: named, and nothing written ----

/// A small paged or contiguous decode-and-append on the device (bf16, D 64, GQA 2).
struct ErrorSetup {
  KvCase c;
  std::mt19937_64 gen{std::random_device{}()};
  HostInputs h;
  DeviceInputs d;
  explicit ErrorSetup(int page_size)
      : c{.name = "errors", .head_dim = 64, .head_dim_v = 64, .heads_q = 4, .heads_kv = 2, .seqlen_new = 2,
          .cache_lens = {3, 6}, .page_size = page_size},
        h(c, gen),
        d(c, h) {}
  KVCacheArgs args() const { return d.args(c, h); }
};

/// The call throws an error whose message starts with `arg`, and the device caches, outputs
/// and lengths are byte for byte as they were.
void expect_rejected(const ErrorSetup& s, const KVCacheArgs& a, const std::string& arg) {
  const Tensor kc = to_host(s.d.k_cache), vc = to_host(s.d.v_cache), out = to_host(s.d.out), lse = to_host(s.d.lse);
  try {
    attention_with_kvcache(a, Backend::cuda);
    ADD_FAILURE() << "expected an error naming " << arg;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("attn: " + arg, 0), 0u) << e.what();
  }
  EXPECT_TRUE(same_bytes(to_host(s.d.k_cache), kc)) << arg << ": a rejected call wrote k_cache";
  EXPECT_TRUE(same_bytes(to_host(s.d.v_cache), vc)) << arg << ": a rejected call wrote v_cache";
  EXPECT_TRUE(same_bytes(to_host(s.d.out), out)) << arg << ": a rejected call wrote out";
  EXPECT_TRUE(same_bytes(to_host(s.d.lse), lse)) << arg << ": a rejected call wrote lse";
}

TEST(CudaKvCacheErrors, CapacityOverflowChangesNothing) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (const int page_size : {0, 5}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    ErrorSetup s(page_size);
    // One slot more than the cache (or the sequence's table row) holds.
    const std::int64_t cap = page_size == 0 ? s.h.k_cache.size(1) : s.h.table.size(1) * page_size;
    const Tensor too_long = to_device(host_i32({3, int(cap) - s.c.seqlen_new + 1}, {2}));
    KVCacheArgs a = s.args();
    a.cache_seqlens = too_long;
    expect_rejected(s, a, page_size == 0 ? "k_cache" : "block_table");
  }
}

TEST(CudaKvCacheErrors, BadPageIdChangesNothing) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  ErrorSetup s(5);
  Tensor bad = copy_of(s.h.table);
  bad.as<std::int32_t>()[s.h.table.size(1) + 1] = std::int32_t(s.h.k_cache.size(0));  // sequence 1's second page
  const Tensor bad_d = to_device(bad);
  KVCacheArgs a = s.args();
  a.block_table = bad_d;
  expect_rejected(s, a, "block_table");
}

TEST(CudaKvCacheErrors, EveryTensorMustBeOnTheDevice) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  ErrorSetup s(16);
  const KVCacheArgs base = s.args();
  auto on_host = [&](TensorView KVCacheArgs::*member, const Tensor& host_copy, const std::string& name) {
    KVCacheArgs a = base;
    a.*member = host_copy;
    expect_rejected(s, a, name);
  };
  on_host(&KVCacheArgs::k_cache, s.h.k_cache, "k_cache");
  on_host(&KVCacheArgs::v_cache, s.h.v_cache, "v_cache");
  on_host(&KVCacheArgs::block_table, s.h.table, "block_table");
  on_host(&KVCacheArgs::cache_seqlens, s.h.lens, "cache_seqlens");
  on_host(&KVCacheArgs::k_new, s.h.k_new, "k_new");
  on_host(&KVCacheArgs::v_new, s.h.v_new, "v_new");
  const Tensor out_h = to_host(s.d.out), lse_h = to_host(s.d.lse);
  on_host(&KVCacheArgs::out, out_h, "out");
  on_host(&KVCacheArgs::lse, lse_h, "lse");
}

TEST(CudaKvCacheErrors, F32AndStridedLengthsAreRejectedBeforeTheAppend) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  ErrorSetup s(0);
  {
    // f32 everywhere: valid for the cpu path, not for the cuda kernels.
    const Tensor q = to_device(convert(s.h.q, DType::f32)), kc = to_device(convert(s.h.k_cache, DType::f32)),
                 vc = to_device(convert(s.h.v_cache, DType::f32)), kn = to_device(convert(s.h.k_new, DType::f32)),
                 vn = to_device(convert(s.h.v_new, DType::f32)),
                 out = to_device(convert(to_host(s.d.out), DType::f32));
    KVCacheArgs a = s.h.args(s.c, q, kc, vc, Tensor(), s.d.lens, kn, vn, out, s.d.lse);
    const Tensor kc_before = to_host(kc);
    try {
      attention_with_kvcache(a, Backend::cuda);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("f16 and bf16"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(same_bytes(to_host(kc), kc_before)) << "a rejected f32 call wrote k_cache";
  }
  {
    // cache_seqlens as every other int of a device buffer: the kernels read it in place.
    const Tensor wide = to_device(host_i32({3, 0, 6, 0}, {4}));
    TensorView strided = wide;
    strided.shape[0] = 2;
    strided.stride[0] = 2;
    KVCacheArgs a = s.args();
    a.cache_seqlens = strided;
    expect_rejected(s, a, "cache_seqlens");
  }
}

}  // namespace
}  // namespace attn
