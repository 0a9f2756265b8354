// `attn attention` end to end, in-process: .npy files in, .npy files out, compared with a
// direct call of the library on the same values; and every bad argument is exit code 2 with
// one line that names it.
#include <gtest/gtest.h>

#include <sstream>

#include "apps/temp_dir.hpp"
#include "attn/attention.hpp"
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

/// The same float32 values through the library directly, outputs in f32.
struct Direct {
  Tensor out, lse, dq, dk, dv;
};

Direct direct(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* dout, const AttentionParams& params,
              Backend backend, const Tensor& cu_q = {}, const Tensor& cu_k = {}) {
  const bool packed = cu_q.defined();
  Direct d;
  std::vector<std::int64_t> oshape(q.view().shape.begin(), q.view().shape.begin() + q.view().ndim);
  oshape.back() = v.size(-1);
  d.out = Tensor(oshape, DType::f32);
  d.lse = packed ? Tensor({q.size(1), q.size(0)}, DType::f32) : Tensor({q.size(0), q.size(2), q.size(1)}, DType::f32);
  ForwardArgs fa{q, k, v, d.out, d.lse, cu_q, cu_k, params};
  attention_forward(fa, backend);
  if (dout != nullptr) {
    d.dq = Tensor(std::span(q.view().shape.data(), std::size_t(q.view().ndim)), DType::f32);
    d.dk = Tensor(std::span(k.view().shape.data(), std::size_t(k.view().ndim)), DType::f32);
    d.dv = Tensor(std::span(v.view().shape.data(), std::size_t(v.view().ndim)), DType::f32);
    BackwardArgs ba;
    ba.q = q;
    ba.k = k;
    ba.v = v;
    ba.out = d.out;
    ba.dout = *dout;
    ba.lse = d.lse;
    ba.dq = d.dq;
    ba.dk = d.dk;
    ba.dv = d.dv;
    ba.cu_seqlens_q = cu_q;
    ba.cu_seqlens_k = cu_k;
    ba.params = params;
    attention_backward(ba, backend);
  }
  return d;
}

void expect_file_equals(const std::string& path, const Tensor& want, double tol) {
  const Tensor got = read_npy(path);
  ASSERT_EQ(got.dtype(), DType::f32) << path;
  ASSERT_EQ(got.view().shape_str(), want.view().shape_str()) << path;
  EXPECT_LE(test::max_abs_diff(got, want), tol) << path;
}

TEST(AttentionCommand, CausalGqaMatchesDirectReference) {
  test::TempDir dir;
  const Tensor q = test::randn({2, 24, 4, 16}, DType::f32), k = test::randn({2, 40, 2, 16}, DType::f32),
               v = test::randn({2, 40, 2, 8}, DType::f32);
  write_npy(dir / "q.npy", q);
  write_npy(dir / "k.npy", k);
  write_npy(dir / "v.npy", v);
  const Result r = run({"--q", dir / "q.npy", "--k", dir / "k.npy", "--v", dir / "v.npy", "--out", dir / "o.npy",
                        "--lse", dir / "lse.npy", "--backend", "reference", "--causal", "--scale", "0.3"});
  ASSERT_EQ(r.code, 0) << r.err;
  AttentionParams p;
  p.mask.causal = true;
  p.scale = 0.3f;
  const Direct d = direct(q, k, v, nullptr, p, Backend::reference);
  expect_file_equals(dir / "o.npy", d.out, 0.0);
  expect_file_equals(dir / "lse.npy", d.lse, 0.0);
}

TEST(AttentionCommand, PackedWindowBackwardMatchesDirectReference) {
  test::TempDir dir;
  const Tensor q = test::randn({30, 2, 8}, DType::f32), k = test::randn({34, 1, 8}, DType::f32),
               v = test::randn({34, 1, 8}, DType::f32), dout = test::randn({30, 2, 8}, DType::f32);
  const Tensor cu_q = test::i32({0, 10, 30}), cu_k = test::i32({0, 14, 34});
  for (const auto& [name, t] : {std::pair{"q", q}, {"k", k}, {"v", v}, {"do", dout}, {"cq", cu_q}, {"ck", cu_k}})
    write_npy(dir / (std::string(name) + ".npy"), t);
  const Result r = run({"--q",
                        dir / "q.npy",
                        "--k",
                        dir / "k.npy",
                        "--v",
                        dir / "v.npy",
                        "--out",
                        dir / "o.npy",
                        "--lse",
                        dir / "lse.npy",
                        "--cu-seqlens-q",
                        dir / "cq.npy",
                        "--cu-seqlens-k",
                        dir / "ck.npy",
                        "--window",
                        "5,2",
                        "--softcap",
                        "4",
                        "--backend",
                        "reference",
                        "--dout",
                        dir / "do.npy",
                        "--dq",
                        dir / "dq.npy",
                        "--dk",
                        dir / "dk.npy",
                        "--dv",
                        dir / "dv.npy"});
  ASSERT_EQ(r.code, 0) << r.err;
  AttentionParams p;
  p.mask = Mask::window(5, 2);
  p.softcap = 4.0f;
  const Direct d = direct(q, k, v, &dout, p, Backend::reference, cu_q, cu_k);
  expect_file_equals(dir / "o.npy", d.out, 0.0);
  expect_file_equals(dir / "lse.npy", d.lse, 0.0);
  expect_file_equals(dir / "dq.npy", d.dq, 0.0);
  expect_file_equals(dir / "dk.npy", d.dk, 0.0);
  expect_file_equals(dir / "dv.npy", d.dv, 0.0);
}

TEST(AttentionCommand, BlockSparseGlobalsAndBf16RoundingMatchDirectReference) {
  test::TempDir dir;
  const Tensor q = test::randn({1, 32, 2, 16}, DType::f32), k = test::randn({1, 32, 2, 16}, DType::f32),
               v = test::randn({1, 32, 2, 16}, DType::f32);
  Tensor layout({2, 4, 4}, DType::u8);
  for (int i = 0; i < 32; ++i) layout.as<std::uint8_t>()[i] = std::uint8_t((i * 7) % 3 == 0);
  const Tensor globals = test::i32({3, 17});
  for (const auto& [name, t] : {std::pair{"q", q}, {"k", k}, {"v", v}, {"lay", layout}, {"g", globals}})
    write_npy(dir / (std::string(name) + ".npy"), t);
  const Result r =
      run({"--q", dir / "q.npy", "--k", dir / "k.npy", "--v", dir / "v.npy", "--out", dir / "o.npy", "--block-sparse",
           dir / "lay.npy", "--block", "8,8", "--global", dir / "g.npy", "--dtype", "bf16", "--backend=reference"});
  ASSERT_EQ(r.code, 0) << r.err;
  AttentionParams p;
  p.mask.block_layout = layout;
  p.mask.block_q = p.mask.block_k = 8;
  p.mask.global_tokens = globals;
  // --dtype rounds the inputs; the reference then reads the rounded values.
  const Direct d =
      direct(convert(q, DType::bf16), convert(k, DType::bf16), convert(v, DType::bf16), nullptr, p, Backend::reference);
  expect_file_equals(dir / "o.npy", d.out, 0.0);
}

/// The CPU kernels against the reference through the command; skipped until they are built.
TEST(AttentionCommand, CpuForwardMatchesReference) {
  test::TempDir dir;
  const Tensor q = test::randn({1, 64, 4, 32}, DType::f32), k = test::randn({1, 80, 2, 32}, DType::f32),
               v = test::randn({1, 80, 2, 32}, DType::f32);
  for (const auto& [name, t] : {std::pair{"q", q}, {"k", k}, {"v", v}})
    write_npy(dir / (std::string(name) + ".npy"), t);
  const Result r = run({"--q", dir / "q.npy", "--k", dir / "k.npy", "--v", dir / "v.npy", "--out", dir / "o.npy",
                        "--lse", dir / "lse.npy", "--window", "20,3", "--backend", "cpu"});
  if (r.code == 2 && r.err.find("not built yet") != std::string::npos) GTEST_SKIP() << r.err;
  ASSERT_EQ(r.code, 0) << r.err;
  AttentionParams p;
  p.mask = Mask::window(20, 3);
  const Direct d = direct(q, k, v, nullptr, p, Backend::reference);
  expect_file_equals(dir / "o.npy", d.out, 1e-5);
  expect_file_equals(dir / "lse.npy", d.lse, 1e-5);
}

TEST(AttentionCommand, CpuBackwardMatchesReference) {
  test::TempDir dir;
  const Tensor q = test::randn({1, 64, 4, 32}, DType::f32), k = test::randn({1, 64, 2, 32}, DType::f32),
               v = test::randn({1, 64, 2, 32}, DType::f32), dout = test::randn({1, 64, 4, 32}, DType::f32);
  for (const auto& [name, t] : {std::pair{"q", q}, {"k", k}, {"v", v}, {"do", dout}})
    write_npy(dir / (std::string(name) + ".npy"), t);
  const Result r = run({"--q", dir / "q.npy", "--k", dir / "k.npy", "--v", dir / "v.npy", "--out", dir / "o.npy",
                        "--causal", "--backend", "cpu", "--dout", dir / "do.npy", "--dq", dir / "dq.npy", "--dk",
                        dir / "dk.npy", "--dv", dir / "dv.npy"});
  if (r.code == 2 && r.err.find("not built yet") != std::string::npos) GTEST_SKIP() << r.err;
  ASSERT_EQ(r.code, 0) << r.err;
  AttentionParams p;
  p.mask.causal = true;
  const Direct d = direct(q, k, v, &dout, p, Backend::reference);
  expect_file_equals(dir / "o.npy", d.out, 1e-5);
  expect_file_equals(dir / "dq.npy", d.dq, 1e-4);
  expect_file_equals(dir / "dk.npy", d.dk, 1e-4);
  expect_file_equals(dir / "dv.npy", d.dv, 1e-4);
}

TEST(AttentionCommand, HelpListsEveryOption) {
  const Result r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* opt : {"--q", "--window", "--block-sparse", "--cu-seqlens-q", "--dout", "--softcap"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
}

class BadArguments : public ::testing::Test {
 protected:
  void SetUp() override {
    write_npy(dir_ / "q.npy", test::randn({1, 8, 2, 8}, DType::f32));
    write_npy(dir_ / "k.npy", test::randn({1, 8, 2, 8}, DType::f32));
    write_npy(dir_ / "v.npy", test::randn({1, 8, 2, 8}, DType::f32));
    write_npy(dir_ / "k16.npy", test::randn({1, 8, 2, 16}, DType::f32));
    write_npy(dir_ / "ints.npy", test::i32({1, 2, 3}));
    write_npy(dir_ / "cq.npy", test::i32({0, 8}));
  }
  /// A complete valid command plus `extra`, with `drop` removed (an option and its value).
  cli::Argv command(std::vector<std::string> extra, const std::string& drop = "") const {
    cli::Argv a;
    for (const char* name : {"q", "k", "v"}) {
      if (drop == std::string("--") + name) continue;
      a.push_back(std::string("--") + name);
      a.push_back(dir_ / (std::string(name) + ".npy"));
    }
    a.push_back("--out");
    a.push_back(dir_ / "o.npy");
    a.push_back("--backend");
    a.push_back("reference");
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  /// Exit code 2, one line on stderr that names `what`, and no output file.
  void expect_rejected(const cli::Argv& args, const std::string& what) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << what;
    EXPECT_NE(r.err.find(what), std::string::npos) << "message '" << r.err << "' does not name " << what;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
    EXPECT_EQ(r.err.rfind("attn: ", 0), 0u) << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir_ / "o.npy")) << what;
  }
  test::TempDir dir_;
};

TEST_F(BadArguments, EachNamesTheArgument) {
  ASSERT_EQ(run(command({})).code, 0);  // the base command is valid
  std::filesystem::remove(dir_ / "o.npy");
  expect_rejected(command({"--window", "x"}), "--window");
  expect_rejected(command({"--window", "4"}), "--window");
  expect_rejected(command({"--window", "4,-2"}), "--window");
  expect_rejected(command({"--dilation", "-1"}), "--dilation");
  expect_rejected(command({"--dilation", "2"}), "--dilation");  // without a window
  expect_rejected(command({"--strided", "0"}), "--strided");
  expect_rejected(command({"--fixed", "4,5"}), "--fixed");
  expect_rejected(command({"--block-sparse", dir_ / "ints.npy"}), "--block");
  expect_rejected(command({"--block-sparse", dir_ / "ints.npy", "--block", "4,4"}), "--block-sparse");
  expect_rejected(command({"--global", dir_ / "q.npy"}), "--global");
  expect_rejected(command({"--scale", "0"}), "--scale");
  expect_rejected(command({"--scale", "abc"}), "--scale");
  expect_rejected(command({"--softcap", "-1"}), "--softcap");
  expect_rejected(command({"--dtype", "f8"}), "--dtype");
  expect_rejected(command({"--backend", "gpu"}), "--backend");
  expect_rejected(command({"--backend", "cuda"}), "--backend");  // this build has no CUDA
  expect_rejected(command({"--dq", dir_ / "dq.npy"}), "--dq");
  expect_rejected(command({"--dout", dir_ / "q.npy", "--dq", "a", "--dk", "b"}), "--dv");
  expect_rejected(command({"--cu-seqlens-q", dir_ / "cq.npy"}), "--cu-seqlens-k");
  expect_rejected(command({"--causal=yes"}), "--causal");
  expect_rejected(command({"--causal", "--causal"}), "--causal");
  expect_rejected(command({"--bogus"}), "--bogus");
  expect_rejected(command({"stray"}), "stray");
  expect_rejected(command({"--lse"}), "--lse");
  expect_rejected(command({}, "--q"), "--q");
  expect_rejected(command({"--q", dir_ / "ints.npy"}, "--q"), "--q");
  expect_rejected(command({"--q", dir_ / "cq.npy"}, "--q"), "--q");  // int32
  write_npy(dir_ / "flat.npy", test::randn({8}, DType::f32));
  expect_rejected(command({"--v", dir_ / "flat.npy"}, "--v"), "--v");
  expect_rejected(command({"--cu-seqlens-q", dir_ / "cq.npy", "--cu-seqlens-k", dir_ / "cq.npy"}), "--q");
  expect_rejected(command({"--q", dir_ / "missing.npy"}, "--q"), "missing.npy");
  // Errors from the library itself are one line too, naming the library's argument.
  expect_rejected(command({"--k", dir_ / "k16.npy"}, "--k"), "k: expected head_dim");
}

}  // namespace
}  // namespace attn
