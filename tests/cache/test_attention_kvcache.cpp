// attention_with_kvcache against the packed (varlen) oracle, which never sees a cache: paged
// and contiguous caches must give the same rows, new tokens must land where the lengths
// say, and a rejected call must leave the cache as it was. Tests named *Cpu* run the CPU
// kernel; until it is built they skip.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attn/attention_kvcache.hpp"
#include "attn/kv_cache.hpp"
#include "attn/paged_cache.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using test::randn;

struct Shape {
  int B = 2, Sq = 1, Snew = 1, Hq = 4, Hk = 2, D = 16, Dv = 16, page_size = 16;
  std::vector<int> cached;  // tokens already in the cache, per sequence
};

/// One batch: every sequence's full K/V (cached prefix then new tokens), queries, and the
/// same data laid out as a contiguous cache and as a shuffled paged cache.
struct Scenario {
  Shape s;
  DType dtype;
  std::vector<Tensor> k_full, v_full;  // per sequence (L_b, Hk, D / Dv)
  Tensor q, k_new, v_new, cache_seqlens;
  Tensor k_cont, v_cont;             // (B, Smax, Hk, D)
  Tensor k_pool, v_pool, table;      // (P, S, Hk, D), i32 (B, M)

  Scenario(const Shape& shape, DType dt) : s(shape), dtype(dt) {
    std::mt19937_64& rng = test::rng();
    q = randn({s.B, s.Sq, s.Hq, s.D}, dt);
    k_new = randn({s.B, s.Snew, s.Hk, s.D}, dt);
    v_new = randn({s.B, s.Snew, s.Hk, s.Dv}, dt);
    cache_seqlens = test::i32(std::vector<std::int32_t>(s.cached.begin(), s.cached.end()));
    int smax = 1, pages = 0, width = 1;
    for (int c : s.cached) {
      smax = std::max(smax, c + s.Snew);
      width = std::max(width, (c + s.Snew + s.page_size - 1) / s.page_size);
    }
    smax += 3;  // spare capacity that must stay untouched
    pages = s.B * width + 2;
    k_cont = Tensor({s.B, smax, s.Hk, s.D}, dt);
    v_cont = Tensor({s.B, smax, s.Hk, s.Dv}, dt);
    k_pool = Tensor({pages, s.page_size, s.Hk, s.D}, dt);
    v_pool = Tensor({pages, s.page_size, s.Hk, s.Dv}, dt);
    for (const Tensor* t : {&k_cont, &v_cont, &k_pool, &v_pool}) fill_finite(*t, -7.0);
    std::vector<std::int32_t> perm(static_cast<std::size_t>(pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    table = Tensor({s.B, width}, DType::i32);
    for (int i = 0; i < s.B * width; ++i) table.as<std::int32_t>()[i] = perm[std::size_t(i)];
    for (int b = 0; b < s.B; ++b) {
      const int c = s.cached[std::size_t(b)], L = c + s.Snew;
      k_full.push_back(randn({L, s.Hk, s.D}, dt));
      v_full.push_back(randn({L, s.Hk, s.Dv}, dt));
      for (int t = 0; t < s.Snew; ++t) {  // the new tokens are the tail of the full sequence
        copy_row(k_full.back(), c + t, k_new, (b * s.Snew + t));
        copy_row(v_full.back(), c + t, v_new, (b * s.Snew + t));
      }
      for (int t = 0; t < c; ++t) {
        copy_row(k_cont, b * smax + t, k_full.back(), t);
        copy_row(v_cont, b * smax + t, v_full.back(), t);
        copy_row(k_pool, paged_row(b, t), k_full.back(), t);
        copy_row(v_pool, paged_row(b, t), v_full.back(), t);
      }
    }
  }

  static void fill_finite(const Tensor& t, double x) {
    for (std::int64_t i = 0; i < t.numel(); ++i) write_element(t, i, x);
  }
  /// Copies row `src_row` (Hk * dim elements) of src into row `dst_row` of dst.
  static void copy_row(const Tensor& dst, std::int64_t dst_row, const Tensor& src, std::int64_t src_row) {
    const std::int64_t row = src.size(-1) * src.size(-2);
    const std::size_t bytes = std::size_t(row) * dtype_size(src.dtype());
    std::memcpy(static_cast<char*>(dst.data()) + dst_row * std::int64_t(bytes),
                static_cast<const char*>(src.data()) + src_row * std::int64_t(bytes), bytes);
  }
  std::int64_t paged_row(int b, int t) const {
    const std::int64_t page = table.as<std::int32_t>()[b * table.size(1) + t / s.page_size];
    return page * s.page_size + t % s.page_size;
  }

  KVCacheArgs args(bool paged, const Tensor& out, const Tensor& lse, bool with_new = true) const {
    KVCacheArgs a;
    a.q = q;
    a.k_cache = paged ? k_pool : k_cont;
    a.v_cache = paged ? v_pool : v_cont;
    if (paged) a.block_table = table;
    a.cache_seqlens = cache_seqlens;
    if (with_new && s.Snew > 0) {
      a.k_new = k_new;
      a.v_new = v_new;
    }
    a.out = out;
    a.lse = lse;
    return a;
  }

  /// The oracle on the packed batch: q (B*Sq, Hq, D), k concatenated, cu_seqlens.
  void expected(const AttentionParams& params, Tensor& out, Tensor& lse) const {
    std::vector<std::int32_t> cu_q{0}, cu_k{0};
    for (int b = 0; b < s.B; ++b) {
      cu_q.push_back(cu_q.back() + s.Sq);
      cu_k.push_back(cu_k.back() + std::int32_t(k_full[std::size_t(b)].size(0)));
    }
    Tensor kp({std::max(1, cu_k.back()), s.Hk, s.D}, dtype), vp({std::max(1, cu_k.back()), s.Hk, s.Dv}, dtype);
    for (int b = 0; b < s.B; ++b)
      for (int t = 0; t < cu_k[b + 1] - cu_k[b]; ++t) {
        copy_row(kp, cu_k[b] + t, k_full[std::size_t(b)], t);
        copy_row(vp, cu_k[b] + t, v_full[std::size_t(b)], t);
      }
    Tensor qp = q;
    TensorView qv = q.view();
    qv.ndim = 3;
    qv.shape = {s.B * s.Sq, s.Hq, s.D};
    qv.stride = {s.Hq * s.D, s.D, 1};
    out = Tensor({s.B * s.Sq, s.Hq, s.Dv}, DType::f64);
    Tensor lse_p({s.Hq, s.B * s.Sq}, DType::f64);
    Tensor cq = test::i32(cu_q), ck = test::i32(cu_k);
    ForwardArgs f{qv, kp, vp, out, lse_p, cq, ck, params};
    attention_forward(f, Backend::reference);
    lse = Tensor({s.B, s.Hq, s.Sq}, DType::f64);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h)
        for (int i = 0; i < s.Sq; ++i)
          lse.as<double>()[(b * s.Hq + h) * s.Sq + i] = lse_p.as<double>()[h * s.B * s.Sq + b * s.Sq + i];
  }

  /// After a call: the cache holds every sequence's first L_b tokens, and nothing else changed.
  void check_cache(bool paged) const {
    const Tensor& kc = paged ? k_pool : k_cont;
    const Tensor& vc = paged ? v_pool : v_cont;
    for (int b = 0; b < s.B; ++b)
      for (int t = 0; t < k_full[std::size_t(b)].size(0); ++t) {
        const std::int64_t row = paged ? paged_row(b, t) : b * k_cont.size(1) + t;
        const std::size_t kb = std::size_t(s.Hk * s.D) * dtype_size(dtype), vb = std::size_t(s.Hk * s.Dv) * dtype_size(dtype);
        ASSERT_EQ(std::memcmp(static_cast<char*>(kc.data()) + row * std::int64_t(kb),
                              static_cast<char*>(k_full[std::size_t(b)].data()) + t * std::int64_t(kb), kb), 0)
            << "k of sequence " << b << " position " << t;
        ASSERT_EQ(std::memcmp(static_cast<char*>(vc.data()) + row * std::int64_t(vb),
                              static_cast<char*>(v_full[std::size_t(b)].data()) + t * std::int64_t(vb), vb), 0)
            << "v of sequence " << b << " position " << t;
      }
    std::int64_t touched = 0;
    for (int b = 0; b < s.B; ++b) touched += k_full[std::size_t(b)].size(0);
    std::int64_t untouched = 0;
    for (std::int64_t i = 0; i < kc.numel(); i += s.D) untouched += read_element(kc, i) == -7.0;
    EXPECT_EQ(untouched, kc.numel() / s.D - touched * s.Hk) << "a write landed outside the sequences";
  }
};

void run_case(const Shape& shape, const AttentionParams& params, Backend backend, double tol, DType dtype = DType::f32) {
  for (bool paged : {false, true}) {
    SCOPED_TRACE(testing::Message() << (paged ? "paged" : "contiguous") << " B " << shape.B << " Sq " << shape.Sq
                                    << " Snew " << shape.Snew << " page " << shape.page_size);
    Scenario sc(shape, dtype);
    Tensor out({shape.B, shape.Sq, shape.Hq, shape.Dv}, dtype), lse({shape.B, shape.Hq, shape.Sq}, DType::f32);
    test::poison(out);
    test::poison(lse);
    Tensor want_out, want_lse;
    sc.expected(params, want_out, want_lse);
    KVCacheArgs a = sc.args(paged, out, lse);
    a.params = params;
    try {
      attention_with_kvcache(a, backend);
    } catch (const Error& e) {
      if (backend == Backend::cpu && std::string(e.what()).find("not built yet") != std::string::npos)
        GTEST_SKIP() << "cpu kernels are not built in this tree";
      throw;
    }
    EXPECT_LE(test::max_abs_diff(out, want_out), tol);
    EXPECT_LE(test::max_abs_diff(lse, want_lse), tol);
    sc.check_cache(paged);
  }
}

std::vector<AttentionParams> param_sets() {
  std::vector<AttentionParams> ps(5);
  ps[1].mask = Mask::causal_mask();
  ps[2].mask = Mask::window(4, 1);
  ps[3].mask = Mask::causal_mask();
  ps[3].softcap = 3.0f;
  ps[3].scale = 0.3f;
  ps[4].mask = Mask::causal_mask();
  ps[4].mask.window_left = 2;
  return ps;
}

std::vector<Shape> shapes() {
  std::vector<Shape> v;
  // decode: one query, one new token, GQA, ragged lengths (one empty cache)
  v.push_back({3, 1, 1, 4, 2, 16, 16, 16, {0, 7, 40}});
  // decode without new tokens, MQA, tiny pages
  v.push_back({2, 1, 0, 3, 1, 8, 16, 1, {5, 9}});
  // append / chunked prefill: Sq = Snew, causal over the prefix and each other
  v.push_back({2, 5, 5, 2, 2, 8, 8, 3, {0, 11}});
  // more queries than new tokens (speculative verification), page 4
  v.push_back({2, 3, 2, 4, 4, 16, 8, 4, {6, 1}});
  return v;
}

TEST(AttentionKVCache, ReferenceMatchesPackedOracleOnPagedAndContiguousCaches) {
  for (const Shape& s : shapes())
    for (const AttentionParams& p : param_sets()) run_case(s, p, Backend::reference, 1e-6);
}

TEST(AttentionKVCache, CpuMatchesPackedOracleOnPagedAndContiguousCaches) {
  for (const Shape& s : shapes())
    for (const AttentionParams& p : param_sets()) {
      run_case(s, p, Backend::cpu, 2e-5);
      if (IsSkipped()) return;
    }
}

// f16 / bf16 caches: the output is rounded to the storage type (|out| < 8 for these normal
// values, so bf16's half ulp is <= 2^-6 and f16's <= 2^-9); the kernel may round P once
// more before P.V, hence twice that for it.
TEST(AttentionKVCache, ReferenceLowPrecisionCaches) {
  for (const Shape& s : shapes()) {
    run_case(s, param_sets()[1], Backend::reference, 1.0 / 64, DType::bf16);
    run_case(s, param_sets()[3], Backend::reference, 1.0 / 512, DType::f16);
  }
}

TEST(AttentionKVCache, CpuLowPrecisionCaches) {
  for (const Shape& s : shapes()) {
    run_case(s, param_sets()[1], Backend::cpu, 2.0 / 64, DType::bf16);
    if (IsSkipped()) return;
    run_case(s, param_sets()[3], Backend::cpu, 2.0 / 512, DType::f16);
  }
}

/// Processes a prompt of n tokens through a paged cache in the given chunk sizes (causal),
/// returning the out rows (n, Hq, Dv) and lse (Hq, n).
void chunked_prefill(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int>& chunks, int page_size,
                     Backend backend, Tensor& out, Tensor& lse) {
  const std::int64_t n = q.size(0), Hq = q.size(1), D = q.size(2), Hk = k.size(1), Dv = v.size(2);
  const std::int64_t pages = (n + page_size - 1) / page_size;
  Tensor kp({pages + 1, page_size, Hk, D}, q.dtype()), vp({pages + 1, page_size, Hk, Dv}, q.dtype());
  std::vector<std::int32_t> ids(static_cast<std::size_t>(pages));
  for (std::int64_t i = 0; i < pages; ++i) ids[std::size_t(i)] = std::int32_t(pages - i);  // reversed: non-trivial table
  Tensor table({1, pages}, DType::i32);
  std::copy(ids.begin(), ids.end(), table.as<std::int32_t>());
  out = Tensor({n, Hq, Dv}, DType::f32);
  lse = Tensor({Hq, n}, DType::f32);
  std::int64_t done = 0;
  for (int c : chunks) {
    auto rows = [&](const Tensor& t, std::int64_t first, std::int64_t cnt) {
      TensorView r = t.view();
      r.data = static_cast<char*>(t.data()) + first * t.view().stride[0] * std::int64_t(dtype_size(t.dtype()));
      r.ndim = 4;
      r.shape = {1, cnt, t.size(1), t.size(2)};
      r.stride = {cnt * t.view().stride[0], t.view().stride[0], t.view().stride[1], 1};
      return r;
    };
    Tensor seqlen = test::i32({std::int32_t(done)});
    Tensor chunk_lse({1, Hq, c}, DType::f32);
    KVCacheArgs a;
    a.q = rows(q, done, c);
    a.k_cache = kp;
    a.v_cache = vp;
    a.block_table = table;
    a.cache_seqlens = seqlen;
    a.k_new = rows(k, done, c);
    a.v_new = rows(v, done, c);
    a.out = rows(out, done, c);
    a.lse = chunk_lse;
    a.params.mask = Mask::causal_mask();
    attention_with_kvcache(a, backend);
    for (std::int64_t h = 0; h < Hq; ++h)
      for (std::int64_t i = 0; i < c; ++i) lse.as<float>()[h * n + done + i] = chunk_lse.as<float>()[h * c + i];
    done += c;
  }
}

void check_chunkings(Backend backend, double tol) {
  const int n = 23;
  Tensor q = randn({n, 4, 16}, DType::f32), k = randn({n, 2, 16}, DType::f32), v = randn({n, 2, 16}, DType::f32);
  Tensor one_out, one_lse;
  try {
    chunked_prefill(q, k, v, {n}, 5, backend, one_out, one_lse);
  } catch (const Error& e) {
    if (backend == Backend::cpu && std::string(e.what()).find("not built yet") != std::string::npos)
      GTEST_SKIP() << "cpu kernels are not built in this tree";
    throw;
  }
  // Decode is the chunking into ones: the same rows as the one-shot prefill.
  for (const std::vector<int>& chunks : {std::vector<int>{1, 22}, std::vector<int>{7, 7, 7, 2},
                                         std::vector<int>(23, 1), std::vector<int>{5, 1, 16, 1}}) {
    Tensor out, lse;
    chunked_prefill(q, k, v, chunks, 5, backend, out, lse);
    EXPECT_LE(test::max_abs_diff(out, one_out), tol) << "chunks of " << chunks.size();
    EXPECT_LE(test::max_abs_diff(lse, one_lse), tol) << "chunks of " << chunks.size();
  }
}

TEST(AttentionKVCache, ReferenceChunkedPrefillAndDecodeEqualOneShot) { check_chunkings(Backend::reference, 1e-6); }
TEST(AttentionKVCache, CpuChunkedPrefillAndDecodeEqualOneShot) { check_chunkings(Backend::cpu, 2e-5); }

/// A rejected call names `arg` and leaves caches, outputs and lengths byte for byte as they were.
void expect_rejected(const KVCacheArgs& a, const std::string& arg, Backend backend = Backend::reference) {
  std::vector<std::vector<char>> before;
  for (const TensorView* t : {&a.k_cache, &a.v_cache, &a.out, &a.cache_seqlens})
    before.emplace_back(static_cast<char*>(t->data), static_cast<char*>(t->data) + t->nbytes());
  try {
    attention_with_kvcache(a, backend);
    ADD_FAILURE() << "expected an error naming " << arg;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("attn: " + arg, 0), 0u) << e.what();
  }
  int i = 0;
  for (const TensorView* t : {&a.k_cache, &a.v_cache, &a.out, &a.cache_seqlens})
    EXPECT_EQ(std::memcmp(before[std::size_t(i++)].data(), t->data, t->nbytes()), 0) << "a rejected call wrote";
}

TEST(AttentionKVCache, RejectsBadArgumentsNamingThemAndChangesNothing) {
  const Shape s{2, 2, 2, 4, 2, 8, 8, 4, {3, 5}};
  Scenario sc(s, DType::f32);
  Tensor out({s.B, s.Sq, s.Hq, s.Dv}, DType::f32), lse({s.B, s.Hq, s.Sq}, DType::f32);
  for (bool paged : {false, true}) {
    SCOPED_TRACE(paged ? "paged" : "contiguous");
    KVCacheArgs a = sc.args(paged, out, lse);
    {
      Tensor too_long = test::i32({3, std::int32_t(paged ? sc.table.size(1) * s.page_size - 1 : sc.k_cont.size(1) - 1)});
      KVCacheArgs b = a;
      b.cache_seqlens = too_long;
      expect_rejected(b, paged ? "block_table" : "k_cache");
    }
    {
      Tensor neg = test::i32({3, -1});
      KVCacheArgs b = a;
      b.cache_seqlens = neg;
      expect_rejected(b, "cache_seqlens");
    }
    {
      Tensor short_lens = test::i32({3});
      KVCacheArgs b = a;
      b.cache_seqlens = short_lens;
      expect_rejected(b, "cache_seqlens");
    }
    {
      KVCacheArgs b = a;
      b.v_new = {};
      expect_rejected(b, "k_new");
    }
    {
      Tensor wrong = randn({s.B, s.Snew, s.Hk, s.D + 8}, DType::f32);
      KVCacheArgs b = a;
      b.k_new = wrong;
      expect_rejected(b, "k_new");
    }
    {
      Tensor wrong({s.B, s.Hq, s.Sq + 1}, DType::f32);
      KVCacheArgs b = a;
      b.lse = wrong;
      expect_rejected(b, "lse");
    }
    {
      Tensor wrong({s.B, s.Sq, s.Hq, s.Dv + 1}, DType::f32);
      KVCacheArgs b = a;
      b.out = wrong;
      expect_rejected(b, "out");
    }
    {
      KVCacheArgs b = a;
      b.params.mask.window_left = -2;  // checked before the new tokens are written
      expect_rejected(b, "window");
    }
    {
      Tensor half_q = randn({s.B, s.Sq, s.Hq, s.D}, DType::f16);
      KVCacheArgs b = a;
      b.q = half_q;
      expect_rejected(b, "k_cache");
    }
  }
  KVCacheArgs a = sc.args(true, out, lse);
  {
    Tensor bad = Tensor({s.B, sc.table.size(1)}, DType::i32);
    std::memcpy(bad.data(), sc.table.data(), sc.table.nbytes());
    bad.as<std::int32_t>()[1] = std::int32_t(sc.k_pool.size(0));  // sequence 0's second page
    KVCacheArgs b = a;
    b.block_table = bad;
    expect_rejected(b, "block_table");
  }
  {
    // Both sequences' rows point at the same pages: their new tokens would collide.
    Tensor shared = Tensor({s.B, sc.table.size(1)}, DType::i32);
    for (int b = 0; b < s.B; ++b)
      for (int i = 0; i < sc.table.size(1); ++i) shared.as<std::int32_t>()[b * sc.table.size(1) + i] = sc.table.as<std::int32_t>()[i];
    Tensor same = test::i32({3, 3});
    KVCacheArgs b = a;
    b.block_table = shared;
    b.cache_seqlens = same;
    expect_rejected(b, "block_table");
  }
  {
    KVCacheArgs b = a;
    b.block_table = sc.cache_seqlens;  // 1-d
    expect_rejected(b, "block_table");
  }
  // The cuda backend wants device tensors (and a CUDA build); these are on the CPU.
  expect_rejected(a, "backend", Backend::cuda);
}

TEST(AttentionKVCache, ContiguousCacheAppendThenAttend) {
  const int B = 2, Hq = 2, Hk = 1, D = 8;
  KVCache cache(B, 12, Hk, D, D, DType::f32);
  Tensor k0 = randn({B, 3, Hk, D}, DType::f32), v0 = randn({B, 3, Hk, D}, DType::f32);
  cache.append(k0, v0);  // 3 tokens to each
  Tensor k1 = randn({4, Hk, D}, DType::f32), v1 = randn({4, Hk, D}, DType::f32);
  cache.append(1, k1, v1);  // 4 more to sequence 1
  EXPECT_EQ(cache.length(0), 3);
  EXPECT_EQ(cache.length(1), 7);
  Tensor too_many = randn({6, Hk, D}, DType::f32);
  EXPECT_THROW(cache.append(1, too_many, too_many), Error);
  EXPECT_EQ(cache.length(1), 7);
  Tensor wrong_heads = randn({B, 1, 2, D}, DType::f32);
  EXPECT_THROW(cache.append(wrong_heads, wrong_heads), Error);

  Tensor q = randn({B, 1, Hq, D}, DType::f32), out({B, 1, Hq, D}, DType::f32);
  KVCacheArgs a;
  a.q = q;
  a.k_cache = cache.k();
  a.v_cache = cache.v();
  a.cache_seqlens = cache.seqlens();
  a.out = out;
  attention_with_kvcache(a, Backend::reference);
  // Sequence 1 alone against its 7 gathered tokens.
  Tensor k({1, 7, Hk, D}, DType::f32), v({1, 7, Hk, D}, DType::f32), want({1, 1, Hq, D}, DType::f32);
  std::memcpy(k.data(), k0.as<float>() + 3 * Hk * D, 3 * Hk * D * 4);
  std::memcpy(k.as<float>() + 3 * Hk * D, k1.data(), 4 * Hk * D * 4);
  std::memcpy(v.data(), v0.as<float>() + 3 * Hk * D, 3 * Hk * D * 4);
  std::memcpy(v.as<float>() + 3 * Hk * D, v1.data(), 4 * Hk * D * 4);
  TensorView q1 = q.view();
  q1.data = q.as<float>() + Hq * D;
  q1.shape[0] = 1;
  ForwardArgs f{q1, k, v, want, {}, {}, {}, {}};
  attention_forward(f, Backend::reference);
  for (int i = 0; i < Hq * D; ++i) EXPECT_EQ(out.as<float>()[Hq * D + i], want.as<float>()[i]);
  cache.reset(1);
  EXPECT_EQ(cache.length(1), 0);
}

/// A PagedKVCache driving attention: shared prefix (prefix hit), a fork, decode for all
/// three sequences in one call, equal to attention over each sequence's own tokens.
TEST(AttentionKVCache, PagedCacheDecodeBatchWithSharedPrefixAndFork) {
  const int Hq = 4, Hk = 2, D = 8, ps = 4;
  PagedCacheConfig cfg;
  cfg.num_pages = 16;
  cfg.page_size = ps;
  cfg.heads_kv = Hk;
  cfg.head_dim = D;
  PagedKVCache cache(cfg);
  // K/V of a token are a function of the prefix; tests use the token id as the seed.
  auto kv_for = [&](std::int32_t id, int which) {
    Tensor t({1, Hk, D}, DType::f32);
    for (int e = 0; e < Hk * D; ++e) t.as<float>()[e] = std::sin(float(id * 31 + e * 7 + which * 1000));
    return t;
  };
  auto write_tokens = [&](BlockManager::SeqId s, std::int64_t from) {
    const auto& toks = cache.manager().table(s).tokens;
    for (std::int64_t p = from; p < std::int64_t(toks.size()); ++p)
      cache.write(0, s, p, kv_for(toks[std::size_t(p)] + std::int32_t(p) * 100, 0), kv_for(toks[std::size_t(p)] + std::int32_t(p) * 100, 1));
  };
  const std::vector<std::int32_t> sys = {5, 6, 7, 8, 9, 10, 11, 12, 13};
  const auto a = cache.add_sequence(sys);
  write_tokens(a.seq, a.cached_tokens);
  std::vector<std::int32_t> other = sys;
  other.resize(8);
  other.push_back(77);
  other.push_back(78);
  const auto b = cache.add_sequence(other);
  EXPECT_EQ(b.cached_tokens, 8);
  write_tokens(b.seq, b.cached_tokens);
  const auto c = cache.fork(a.seq);
  std::vector<BlockManager::SeqId> seqs = {a.seq, b.seq, c};
  // One decode step: append a token to each (the fork copies its shared tail), attend.
  std::int32_t next = 40;
  for (auto s : seqs) cache.append(s, std::vector<std::int32_t>{next++});
  for (auto s : seqs) write_tokens(s, cache.length(s) - 1);
  Tensor table = cache.block_table(seqs), lens = cache.seqlens(seqs);
  Tensor q = randn({3, 1, Hq, D}, DType::f32), out({3, 1, Hq, D}, DType::f32);
  KVCacheArgs args;
  args.q = q;
  args.k_cache = cache.layer(0).k();
  args.v_cache = cache.layer(0).v();
  args.block_table = table;
  args.cache_seqlens = lens;
  args.out = out;
  attention_with_kvcache(args, Backend::reference);
  for (int i = 0; i < 3; ++i) {
    const std::int64_t L = cache.length(seqs[std::size_t(i)]);
    Tensor k({1, L, Hk, D}, DType::f32), v({1, L, Hk, D}, DType::f32), want({1, 1, Hq, D}, DType::f32);
    const auto& toks = cache.manager().table(seqs[std::size_t(i)]).tokens;
    for (std::int64_t p = 0; p < L; ++p) {
      std::memcpy(k.as<float>() + p * Hk * D, kv_for(toks[std::size_t(p)] + std::int32_t(p) * 100, 0).data(), Hk * D * 4);
      std::memcpy(v.as<float>() + p * Hk * D, kv_for(toks[std::size_t(p)] + std::int32_t(p) * 100, 1).data(), Hk * D * 4);
    }
    TensorView qi = q.view();
    qi.data = q.as<float>() + i * Hq * D;
    qi.shape[0] = 1;
    ForwardArgs f{qi, k, v, want, {}, {}, {}, {}};
    attention_forward(f, Backend::reference);
    for (int e = 0; e < Hq * D; ++e) EXPECT_EQ(out.as<float>()[i * Hq * D + e], want.as<float>()[e]) << "seq " << i;
  }
}

/// A sliding-window layer gives back pages behind its window; attention with the window mask
/// over the table that now points released entries at page 0 is unchanged.
TEST(AttentionKVCache, WindowReleasedPagesDoNotChangeWindowedAttention) {
  const int Hq = 2, Hk = 1, D = 8, ps = 4, W = 5;
  PagedCacheConfig cfg;
  cfg.num_pages = 8;
  cfg.page_size = ps;
  cfg.heads_kv = Hk;
  cfg.head_dim = D;
  PagedKVCache cache(cfg);
  const auto filler = cache.add_sequence(std::vector<std::int32_t>(ps, 1)).seq;  // page 0 holds another sequence
  cache.write(0, filler, 0, randn({ps, Hk, D}, DType::f32), randn({ps, Hk, D}, DType::f32));
  const std::int64_t L = 19;
  const auto s = cache.add_sequence(std::vector<std::int32_t>(std::size_t(L), 2)).seq;
  cache.write(0, s, 0, randn({L, Hk, D}, DType::f32), randn({L, Hk, D}, DType::f32));
  const std::vector<BlockManager::SeqId> seqs = {s};
  Tensor q = randn({1, 1, Hq, D}, DType::f32), before({1, 1, Hq, D}, DType::f32), after({1, 1, Hq, D}, DType::f32);
  auto attend = [&](const Tensor& out) {
    Tensor table = cache.block_table(seqs), lens = cache.seqlens(seqs);
    KVCacheArgs a;
    a.q = q;
    a.k_cache = cache.layer(0).k();
    a.v_cache = cache.layer(0).v();
    a.block_table = table;
    a.cache_seqlens = lens;
    a.out = out;
    a.params.mask = Mask::window(W, 0);
    attention_with_kvcache(a, Backend::reference);
  };
  attend(before);
  const std::int32_t used = cache.manager().stats().pages_used;
  cache.release_before(s, L - 1 - W);  // the query at position L - 1 reads keys >= L - 1 - W
  EXPECT_EQ(cache.manager().stats().pages_used, used - 3);
  EXPECT_EQ(cache.manager().table(s).pages[0], BlockTable::kReleased);
  attend(after);
  for (int e = 0; e < Hq * D; ++e) EXPECT_EQ(after.as<float>()[e], before.as<float>()[e]);
}

/// An engine's loop: per-sequence prefill, then batched decode steps that write k_new / v_new
/// through the cache call. The paged cache (tables growing page by page) and the contiguous
/// cache must give the same rows at every step.
void decode_loop(Backend backend, double tol) {
  const int Hq = 4, Hk = 2, D = 16, ps = 4, steps = 9;
  const std::vector<int> prompt_len = {5, 9, 14};
  const int B = int(prompt_len.size());
  PagedCacheConfig cfg;
  cfg.num_pages = 32;
  cfg.page_size = ps;
  cfg.heads_kv = Hk;
  cfg.head_dim = D;
  PagedKVCache paged(cfg);
  KVCache cont(B, 32, Hk, D, D, DType::f32);
  std::vector<BlockManager::SeqId> seqs;
  auto call = [&](const KVCacheArgs& base, bool use_paged, const Tensor& table, const Tensor& lens) {
    KVCacheArgs a = base;
    a.k_cache = use_paged ? paged.layer(0).k() : cont.k();
    a.v_cache = use_paged ? paged.layer(0).v() : cont.v();
    if (use_paged) a.block_table = table;
    a.cache_seqlens = lens;
    a.params.mask = Mask::causal_mask();
    attention_with_kvcache(a, backend);
  };
  for (int b = 0; b < B; ++b) {  // prefill, one sequence per call
    const int n = prompt_len[std::size_t(b)];
    const auto added = paged.add_sequence(std::vector<std::int32_t>(std::size_t(n), 7 + b));
    ASSERT_EQ(added.cached_tokens, 0);
    seqs.push_back(added.seq);
    Tensor k = randn({n, Hk, D}, DType::f32), v = randn({n, Hk, D}, DType::f32);
    TensorView k4 = k.view(), v4 = v.view();
    for (TensorView* t : {&k4, &v4}) {
      t->ndim = 4;
      t->shape = {1, n, Hk, D};
      t->stride = {n * Hk * D, Hk * D, D, 1};
    }
    Tensor q = randn({1, n, Hq, D}, DType::f32), out({1, n, Hq, D}, DType::f32);
    KVCacheArgs a;
    a.q = q;
    a.k_new = k4;
    a.v_new = v4;
    a.out = out;
    const std::vector<BlockManager::SeqId> one = {added.seq};
    call(a, true, paged.block_table(one), test::i32({0}));
    cont.append(b, k, v);
  }
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    Tensor lens = paged.seqlens(seqs);
    for (auto s : seqs) paged.append(s, std::vector<std::int32_t>{step});
    Tensor table = paged.block_table(seqs);
    Tensor q = randn({B, 1, Hq, D}, DType::f32), k = randn({B, 1, Hk, D}, DType::f32), v = randn({B, 1, Hk, D}, DType::f32);
    Tensor out_paged({B, 1, Hq, D}, DType::f32), out_cont({B, 1, Hq, D}, DType::f32);
    test::poison(out_paged);
    test::poison(out_cont);
    KVCacheArgs a;
    a.q = q;
    a.k_new = k;
    a.v_new = v;
    a.out = out_paged;
    call(a, true, table, lens);
    a.out = out_cont;
    call(a, false, Tensor(), cont.seqlens());
    cont.advance(1);
    EXPECT_LE(test::max_abs_diff(out_paged, out_cont), tol);
    for (int b = 0; b < B; ++b) ASSERT_EQ(cont.length(b), paged.length(seqs[std::size_t(b)]));
  }
}

TEST(AttentionKVCache, ReferencePagedDecodeLoopEqualsContiguous) { decode_loop(Backend::reference, 0.0); }

TEST(AttentionKVCache, CpuPagedDecodeLoopEqualsContiguous) {
  try {
    decode_loop(Backend::cpu, 1e-6);
  } catch (const Error& e) {
    if (std::string(e.what()).find("not built yet") == std::string::npos) throw;
    GTEST_SKIP() << "cpu kernels are not built in this tree";
  }
}

}  // namespace
}  // namespace attn
