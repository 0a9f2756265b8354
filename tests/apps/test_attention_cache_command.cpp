// `attn attention --k-cache ...` end to end, in-process: attention over a contiguous or paged
// cache with an append, compared with a direct attention_with_kvcache call on the same values;
// the paged form against the contiguous one; and bad arguments (exit code 2, one line naming the
// option, no output files).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "apps/temp_dir.hpp"
#include "attn/attention_kvcache.hpp"
#include "attn/commands.hpp"
#include "attn/npy.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using cli::read_npy;
using cli::write_npy;

struct Result {
  int code;
  std::string out, err;
};

Result run(const cli::Argv& args) {
  std::ostringstream out, err;
  const int code = cli::run_command(cli::attention_command, args, out, err);
  return {code, out.str(), err.str()};
}

// B 2 sequences of 5 and 11 cached tokens, 3 new each, GQA 4/2, D 16, Dv 8, pages of 4.
constexpr int kB = 2, kSq = 3, kSnew = 3, kHq = 4, kHk = 2, kD = 16, kDv = 8, kPage = 4, kSmax = 16;
const std::vector<std::int32_t> kLens = {5, 11};
// Pages of each sequence, deliberately out of order and interleaved; 9 pages in the pool.
const std::vector<std::int32_t> kTable = {7, 2, 5, 0, 3, 8, 1, 6};

Tensor table_tensor() {
  Tensor t({kB, 4}, DType::i32);
  std::copy(kTable.begin(), kTable.end(), t.as<std::int32_t>());
  return t;
}

/// The inputs in both layouts: a contiguous cache and a page pool holding the same tokens.
struct Inputs {
  Tensor q, kc, vc, k_new, v_new, pool_k, pool_v;
  Inputs() {
    q = test::randn({kB, kSq, kHq, kD}, DType::f32);
    kc = test::randn({kB, kSmax, kHk, kD}, DType::f32);
    vc = test::randn({kB, kSmax, kHk, kDv}, DType::f32);
    k_new = test::randn({kB, kSnew, kHk, kD}, DType::f32);
    v_new = test::randn({kB, kSnew, kHk, kDv}, DType::f32);
    pool_k = test::randn({9, kPage, kHk, kD}, DType::f32);
    pool_v = test::randn({9, kPage, kHk, kDv}, DType::f32);
    // Token t of sequence b lives in slot t % kPage of page kTable[b][t / kPage].
    const std::int64_t krow = kHk * kD, vrow = kHk * kDv;
    for (int b = 0; b < kB; ++b)
      for (int t = 0; t < kSmax; ++t) {
        const std::int64_t slot = std::int64_t(kTable[std::size_t(b * 4 + t / kPage)]) * kPage + t % kPage;
        std::copy_n(kc.as<float>() + (b * kSmax + t) * krow, krow, pool_k.as<float>() + slot * krow);
        std::copy_n(vc.as<float>() + (b * kSmax + t) * vrow, vrow, pool_v.as<float>() + slot * vrow);
      }
  }
};

Tensor copy_of(const Tensor& t) {
  Tensor c(std::span(t.view().shape.data(), std::size_t(t.view().ndim)), t.dtype());
  copy(c, t);
  return c;
}

void expect_file_equals(const std::string& path, const Tensor& want, double tol) {
  const Tensor got = read_npy(path);
  ASSERT_EQ(got.dtype(), DType::f32) << path;
  ASSERT_EQ(got.view().shape_str(), want.view().shape_str()) << path;
  EXPECT_LE(test::max_abs_diff(got, want), tol) << path;
}

class CacheCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    write_npy(dir_ / "q.npy", in_.q);
    write_npy(dir_ / "kc.npy", in_.kc);
    write_npy(dir_ / "vc.npy", in_.vc);
    write_npy(dir_ / "kn.npy", in_.k_new);
    write_npy(dir_ / "vn.npy", in_.v_new);
    write_npy(dir_ / "pk.npy", in_.pool_k);
    write_npy(dir_ / "pv.npy", in_.pool_v);
    write_npy(dir_ / "cs.npy", test::i32(kLens));
    write_npy(dir_ / "bt.npy", table_tensor());
  }
  cli::Argv command(bool paged, const std::string& backend, const std::string& tag) const {
    return {"--q", dir_ / "q.npy", "--k-cache", dir_ / (paged ? "pk.npy" : "kc.npy"), "--v-cache",
            dir_ / (paged ? "pv.npy" : "vc.npy"), "--cache-seqlens", dir_ / "cs.npy", "--k-new", dir_ / "kn.npy",
            "--v-new", dir_ / "vn.npy", "--out", dir_ / ("o" + tag + ".npy"), "--lse", dir_ / ("l" + tag + ".npy"),
            "--k-cache-out", dir_ / ("kco" + tag + ".npy"), "--v-cache-out", dir_ / ("vco" + tag + ".npy"),
            "--causal", "--backend", backend};
  }
  /// The library called directly on copies of the inputs, on the reference backend.
  void expect_matches_direct(bool paged, const std::string& tag, double tol) const {
    KVCacheArgs a;
    a.params.mask = Mask::causal_mask();
    a.q = in_.q;
    const Tensor kc = copy_of(paged ? in_.pool_k : in_.kc), vc = copy_of(paged ? in_.pool_v : in_.vc);
    const Tensor lens = test::i32(kLens), table = table_tensor();
    a.k_cache = kc;
    a.v_cache = vc;
    if (paged) a.block_table = table;
    a.cache_seqlens = lens;
    a.k_new = in_.k_new;
    a.v_new = in_.v_new;
    const Tensor out({kB, kSq, kHq, kDv}, DType::f32), lse({kB, kHq, kSq}, DType::f32);
    a.out = out;
    a.lse = lse;
    attention_with_kvcache(a, Backend::reference);
    expect_file_equals(dir_ / ("o" + tag + ".npy"), out, tol);
    expect_file_equals(dir_ / ("l" + tag + ".npy"), lse, tol);
    expect_file_equals(dir_ / ("kco" + tag + ".npy"), kc, 0.0);
    expect_file_equals(dir_ / ("vco" + tag + ".npy"), vc, 0.0);
  }
  test::TempDir dir_;
  Inputs in_;
};

TEST_F(CacheCommand, ContiguousAndPagedMatchDirectReference) {
  for (const bool paged : {false, true}) {
    cli::Argv args = command(paged, "reference", paged ? "p" : "c");
    if (paged) args.insert(args.end(), {"--block-table", dir_ / "bt.npy"});
    const Result r = run(args);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find(paged ? "paged" : "contiguous"), std::string::npos) << r.out;
    expect_matches_direct(paged, paged ? "p" : "c", 1e-6);
  }
  // Paged and contiguous hold the same tokens, so they give the same attention.
  EXPECT_LE(test::max_abs_diff(read_npy(dir_ / "op.npy"), read_npy(dir_ / "oc.npy")), 1e-6);
}

TEST_F(CacheCommand, CpuPagedMatchesReference) {
  cli::Argv args = command(true, "cpu", "p");
  args.insert(args.end(), {"--block-table", dir_ / "bt.npy"});
  const Result r = run(args);
  if (r.code == 2 && r.err.find("not built yet") != std::string::npos) GTEST_SKIP() << r.err;
  ASSERT_EQ(r.code, 0) << r.err;
  expect_matches_direct(true, "p", 2e-5);
}

// --backend cuda against --backend cpu on the same files (bf16, head dim 64): pages of 5 tokens
// (a multiple of no tile) and a contiguous cache, with an append. Outputs within the rounding
// of two bf16 results; the updated caches exactly equal.
TEST(CacheCommandCuda, MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  constexpr int B = 2, Sq = 2, Snew = 2, Hq = 4, Hk = 2, D = 64, page = 5, pages = 9, width = 4, smax = 20;
  test::TempDir dir;
  write_npy(dir / "q.npy", test::randn({B, Sq, Hq, D}, DType::f32));
  write_npy(dir / "kc.npy", test::randn({B, smax, Hk, D}, DType::f32));
  write_npy(dir / "vc.npy", test::randn({B, smax, Hk, D}, DType::f32));
  write_npy(dir / "pk.npy", test::randn({pages, page, Hk, D}, DType::f32));
  write_npy(dir / "pv.npy", test::randn({pages, page, Hk, D}, DType::f32));
  write_npy(dir / "kn.npy", test::randn({B, Snew, Hk, D}, DType::f32));
  write_npy(dir / "vn.npy", test::randn({B, Snew, Hk, D}, DType::f32));
  write_npy(dir / "cs.npy", test::i32({3, 17}));  // 17 + 2 new crosses into the fourth page
  Tensor table({B, width}, DType::i32);
  const std::vector<std::int32_t> rows = {4, 0, 8, 2, 7, 1, 5, 3};
  std::copy(rows.begin(), rows.end(), table.as<std::int32_t>());
  write_npy(dir / "bt.npy", table);
  for (const bool paged : {false, true}) {
    const auto command = [&](const std::string& backend) {
      cli::Argv a = {"--q", dir / "q.npy", "--k-cache", dir / (paged ? "pk.npy" : "kc.npy"), "--v-cache",
                     dir / (paged ? "pv.npy" : "vc.npy"), "--cache-seqlens", dir / "cs.npy", "--k-new",
                     dir / "kn.npy", "--v-new", dir / "vn.npy", "--out", dir / ("o_" + backend + ".npy"), "--lse",
                     dir / ("l_" + backend + ".npy"), "--k-cache-out", dir / ("kco_" + backend + ".npy"),
                     "--v-cache-out", dir / ("vco_" + backend + ".npy"), "--causal", "--dtype", "bf16",
                     "--backend", backend};
      if (paged) a.insert(a.end(), {"--block-table", dir / "bt.npy"});
      return a;
    };
    for (const std::string backend : {"cpu", "cuda"}) {
      const Result r = run(command(backend));
      ASSERT_EQ(r.code, 0) << backend << ": " << r.err;
    }
    EXPECT_LE(test::max_abs_diff(read_npy(dir / "o_cuda.npy"), read_npy(dir / "o_cpu.npy")), 2e-2) << paged;
    EXPECT_LE(test::max_abs_diff(read_npy(dir / "l_cuda.npy"), read_npy(dir / "l_cpu.npy")), 1e-4) << paged;
    EXPECT_EQ(test::max_abs_diff(read_npy(dir / "kco_cuda.npy"), read_npy(dir / "kco_cpu.npy")), 0.0) << paged;
    EXPECT_EQ(test::max_abs_diff(read_npy(dir / "vco_cuda.npy"), read_npy(dir / "vco_cpu.npy")), 0.0) << paged;
  }
}

TEST(CacheCommandHelp, ListsTheCacheOptions) {
  const Result r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* opt : {"--k-cache", "--v-cache", "--cache-seqlens", "--block-table", "--k-new", "--v-new",
                          "--k-cache-out", "--v-cache-out"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
}

TEST_F(CacheCommand, BadArgumentsNameTheOption) {
  const auto expect_rejected = [&](cli::Argv args, const std::string& what) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << what;
    EXPECT_NE(r.err.find(what), std::string::npos) << "message '" << r.err << "' does not name " << what;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
    for (const char* f : {"oc.npy", "lc.npy", "kcoc.npy", "vcoc.npy"})
      EXPECT_FALSE(std::filesystem::exists(dir_ / f)) << what << ": " << f;
  };
  const auto with = [&](std::vector<std::string> extra) {
    cli::Argv a = command(false, "reference", "c");
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const auto without = [&](const std::string& option) {
    cli::Argv a = command(false, "reference", "c");
    const auto it = std::find(a.begin(), a.end(), option);
    a.erase(it, it + 2);
    return a;
  };
  write_npy(dir_ / "bad_table.npy", [] {
    Tensor t = table_tensor();
    t.as<std::int32_t>()[1] = 9;  // past the pool's 9 pages
    return t;
  }());
  write_npy(dir_ / "long.npy", test::i32({5, 14}));  // 14 + 3 new > 16 slots
  write_npy(dir_ / "kn3.npy", test::randn({kB, kSnew, 3, kD}, DType::f32));
  expect_rejected(without("--cache-seqlens"), "--cache-seqlens");
  expect_rejected(without("--v-cache"), "--v-cache");
  expect_rejected(without("--v-new"), "--v-new");
  expect_rejected(with({"--k", dir_ / "kc.npy"}), "--k");
  expect_rejected(with({"--dout", dir_ / "q.npy"}), "--dout");
  expect_rejected(with({"--cu-seqlens-q", dir_ / "cs.npy"}), "--cu-seqlens-q");
  if (!cuda_available()) expect_rejected(command(false, "cuda", "c"), "--backend");  // no GPU here
  cli::Argv a = without("--cache-seqlens");
  a.insert(a.end(), {"--cache-seqlens", dir_ / "q.npy"});
  expect_rejected(a, "--cache-seqlens");  // float, not int32
  a = without("--cache-seqlens");
  a.insert(a.end(), {"--cache-seqlens", dir_ / "long.npy"});
  expect_rejected(a, "--k-cache");  // the sequence does not fit
  a = without("--k-new");
  a.insert(a.end(), {"--k-new", dir_ / "kn3.npy"});
  expect_rejected(a, "--k-new");
  a = command(true, "reference", "c");
  a.insert(a.end(), {"--block-table", dir_ / "bad_table.npy"});
  expect_rejected(a, "--block-table");
  // The cache-only options without --k-cache.
  expect_rejected({"--q", dir_ / "q.npy", "--k", dir_ / "q.npy", "--v", dir_ / "q.npy", "--out", dir_ / "oc.npy",
                   "--block-table", dir_ / "bt.npy"},
                  "--block-table");
}

}  // namespace
}  // namespace attn
