// `attn bench` and `attn demo` in-process, the FLOP counter they share, and the `attn` program
// itself (dispatch, help, exit codes) through the built binary.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include <sys/wait.h>

#include <gtest/gtest.h>

#include "apps/temp_dir.hpp"
#include "attn/commands.hpp"
#include "attn/counters.hpp"
#include "attn/measure.hpp"
#include "reference/reference.hpp"

namespace attn {
namespace {

struct Result {
  int code;
  std::string out, err;
};

Result run(cli::CommandFn fn, const cli::Argv& args) {
  std::ostringstream out, err;
  const int code = cli::run_command(fn, args, out, err);
  return {code, out.str(), err.str()};
}

/// Just enough JSON to check the bench's output: a strict parser that throws on any error.
struct Json {
  enum Kind { null, boolean, number, string, array, object } kind = null;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  static Json parse(const std::string& text) {
    std::size_t pos = 0;
    Json j = value(text, pos);
    ws(text, pos);
    if (pos != text.size()) throw std::runtime_error("trailing text at " + std::to_string(pos));
    return j;
  }

 private:
  static void ws(const std::string& s, std::size_t& p) {
    while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
  }
  static void expect(const std::string& s, std::size_t& p, char c) {
    ws(s, p);
    if (p >= s.size() || s[p] != c) throw std::runtime_error(std::string("expected ") + c + " at " + std::to_string(p));
    ++p;
  }
  static std::string str_lit(const std::string& s, std::size_t& p) {
    expect(s, p, '"');
    std::string out;
    while (p < s.size() && s[p] != '"') {
      if (s[p] == '\\') ++p;
      out += s[p++];
    }
    expect(s, p, '"');
    return out;
  }
  static Json value(const std::string& s, std::size_t& p) {
    ws(s, p);
    Json j;
    if (p >= s.size()) throw std::runtime_error("unexpected end");
    const char c = s[p];
    if (c == '{') {
      j.kind = object;
      ++p;
      ws(s, p);
      if (s[p] == '}') return ++p, j;
      do {
        const std::string key = str_lit(s, p);
        expect(s, p, ':');
        j.fields[key] = value(s, p);
        ws(s, p);
      } while (s[p] == ',' && ++p);
      expect(s, p, '}');
    } else if (c == '[') {
      j.kind = array;
      ++p;
      ws(s, p);
      if (s[p] == ']') return ++p, j;
      do {
        j.items.push_back(value(s, p));
        ws(s, p);
      } while (s[p] == ',' && ++p);
      expect(s, p, ']');
    } else if (c == '"') {
      j.kind = string;
      j.str = str_lit(s, p);
    } else if (s.compare(p, 4, "null") == 0) {
      p += 4;
    } else if (s.compare(p, 4, "true") == 0 || s.compare(p, 5, "false") == 0) {
      j.kind = boolean;
      j.num = s[p] == 't';
      p += s[p] == 't' ? 4 : 5;
    } else {
      j.kind = number;
      std::size_t used = 0;
      j.num = std::stod(s.substr(p, 32), &used);
      p += used;
    }
    return j;
  }
};

void check_bench_json(const Result& r, std::size_t rows) {
  ASSERT_EQ(r.code, 0) << r.err;
  Json j;
  ASSERT_NO_THROW(j = Json::parse(r.out)) << r.out;
  EXPECT_GT(j.fields["ceilings"].fields["fma_peak_gflops"].num, 0);
  const Json& list = j.fields["rows"];
  ASSERT_EQ(list.items.size(), rows);
  for (const Json& row : list.items) {
    Json copy = row;
    EXPECT_GT(copy.fields["median_ms"].num, 0);
    EXPECT_GT(copy.fields["gflops"].num, 0);
    EXPECT_GT(copy.fields["flops"].num, 0);
    EXPECT_GT(copy.fields["peak_rss_mib"].num, 0);
    EXPECT_GE(copy.fields["runs"].num, 1);
  }
}

TEST(BenchCommand, QuickJsonParses) {
  // The reference is slow; the S128 rows (full, f16 and bf16 causal; forward and backward) suffice.
  check_bench_json(run(cli::bench_command, {"--quick", "--json", "--backend", "reference", "--filter", "S128"}), 6);
}

TEST(BenchCommand, ListsLabelsWithoutRunning) {
  const Result r = run(cli::bench_command, {"--list", "--filter", "S16384 H8"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "attention window 256,0 B1 S16384 H8 D128 f32 fwd\n"
            "attention window 256,0 B1 S16384 H8 D128 f32 bwd\n");
}

TEST(BenchCommand, BadArgumentsNameThemselves) {
  for (const auto& [args, what] : std::vector<std::pair<cli::Argv, std::string>>{
           {{"--threads", "0"}, "--threads"},
           {{"--backend", "cuda"}, "--backend"},  // no CUDA build: the GPU bench cannot run
           {{"--backend", "tpu"}, "--backend"},
           {{"--backend", "reference"}, "--backend"},  // the oracle only with --quick
           {{"--quick", "--filter", "no such row"}, "--filter"},
           {{"--json=1"}, "--json"},
       }) {
    const Result r = run(cli::bench_command, args);
    EXPECT_EQ(r.code, 2) << what;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  }
}

TEST(Measure, ChildResultsErrorsAndCrashesComeBack) {
  const cli::Measurement m = cli::measure_in_child([] { return std::function<void()>([] {}); }, {3, 4, 0.0, false});
  EXPECT_EQ(m.runs, 3);
  EXPECT_GE(m.median_ms, m.min_ms);
  EXPECT_GE(m.peak_rss_mib, m.base_rss_mib);
  try {
    cli::measure_in_child([]() -> std::function<void()> { throw Error("attn: setup: no"); }, {});
    ADD_FAILURE() << "the child's error was lost";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "attn: setup: no");
  }
  try {
    cli::measure_in_child([] { return std::function<void()>([] { std::raise(SIGTERM); }); }, {});
    ADD_FAILURE() << "the child's death was lost";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("signal " + std::to_string(SIGTERM)), std::string::npos) << e.what();
  }
}

TEST(Counters, AllowedPairsMatchTheReferencePredicate) {
  const cli::Shape s{2, 77, 130, 4, 2, 16, 8, DType::f32};
  for (const cli::Pattern& p : {cli::full_pattern(), cli::causal_pattern(), cli::window_pattern(9, 3),
                                cli::dilated_pattern(5, 2), cli::strided_pattern(7), cli::fixed_pattern(8, 3),
                                cli::block_sparse_pattern(s, 16, 3), cli::global_pattern(4, {2, 50, 129})}) {
    std::int64_t want = 0;
    for (int i = 0; i < s.seqlen_q; ++i)
      for (int j = 0; j < s.seqlen_k; ++j) want += reference::mask_allows(p.mask, i, j, s.seqlen_q, s.seqlen_k, 0);
    EXPECT_EQ(cli::allowed_pairs(s, p.mask), want * s.batch * s.heads_q) << p.name;
  }
  EXPECT_EQ(cli::forward_flops(s, 10), 2.0 * (16 + 8) * 10);
  EXPECT_EQ(cli::backward_flops(s, 10), 2.5 * cli::forward_flops(s, 10));
}

TEST(DemoCommand, ReferenceTourPasses) {
  const Result r = run(cli::demo_command, {"--backend", "reference"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  for (const char* m : {"full", "causal", "GQA", "window", "dilated", "strided", "fixed", "block-sparse", "global",
                        "soft-cap", "varlen", "backward"})
    EXPECT_NE(r.out.find(std::string("\n") + m + " "), std::string::npos) << m;
  EXPECT_EQ(r.out.find(" NO "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(" NO\n"), std::string::npos) << r.out;
  for (const char* row : {"mha prefill", "mha decode step", "mha -> gqa conversion", "mla absorbed vs expanded",
                          "cache bytes per token, mla", "linear attention state", "paged decode vs contiguous"})
    EXPECT_NE(r.out.find(std::string("\n  ") + row + " "), std::string::npos) << row;
}

TEST(DemoCommand, CpuTourPasses) {
  const Result r = run(cli::demo_command, {});
  if (r.code == 2 && r.err.find("not built yet") != std::string::npos) GTEST_SKIP() << r.err;
  EXPECT_EQ(r.code, 0) << r.err << r.out;
}

/// Runs the built `attn` with `args`; returns the exit code and what it printed on each stream.
Result run_binary(const std::string& args) {
  test::TempDir dir;
  const std::string cmd = std::string(ATTN_CLI_PATH) + " " + args + " >" + (dir / "out") + " 2>" + (dir / "err");
  const int status = std::system(cmd.c_str());
  const auto slurp = [](const std::string& path) {
    std::ifstream f(path);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir / "out"), slurp(dir / "err")};
}

// Through the program, not in-process: the bench forks per row, and a child forked from a process
// whose CPU thread pool already exists (other tests here ran kernels) would wait on threads it lacks.
TEST(BenchCommand, CpuQuickJsonParses) {
  const Result r = run_binary("bench --quick --json --threads 2");
  if (r.code == 2 && r.err.find("not built yet") != std::string::npos) GTEST_SKIP() << r.err;
  // 18 attention rows, then paged and contiguous decode, MLA absorbed and expanded, linear
  // and softmax attention.
  check_bench_json(r, 24);
  Json j = Json::parse(r.out);
  EXPECT_GT(j.fields["ceilings"].fields["memcpy_gbytes_per_s"].num, 0);
  EXPECT_GT(j.fields["ceilings"].fields["stream_read_gbytes_per_s"].num, 0);
  std::map<std::string, int> groups;
  for (Json& row : j.fields["rows"].items) {
    ++groups[row.fields["group"].str];
    if (row.fields["group"].str == "decode") EXPECT_GT(row.fields["vs_memcpy"].num, 0);
  }
  EXPECT_EQ(groups["decode"], 2);
  EXPECT_EQ(groups["mla"], 2);
  EXPECT_EQ(groups["linear"], 2);
}

TEST(BenchCommand, ListsTheLayerRows) {
  const Result r = run(cli::bench_command, {"--list", "--filter", "decode"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "decode paged 16 B16 S1/4096 H32/8 D128 f16 fwd\n"
            "decode contiguous B16 S1/4096 H32/8 D128 f16 fwd\n");
  const Result mla = run(cli::bench_command, {"--list", "--filter", "mla"});
  EXPECT_NE(mla.out.find("mla absorbed B1 L4096 H128 R512 P64"), std::string::npos) << mla.out;
  const Result linear = run(cli::bench_command, {"--list", "--filter", "S16384 H4 D64"});
  EXPECT_EQ(linear.out,
            "linear linear causal B1 S16384 H4 D64 f32 fwd\n"
            "linear softmax causal B1 S16384 H4 D64 f32 fwd\n");
}

TEST(Program, DispatchesAndReportsErrorsInOneLine) {
  Result r = run_binary("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* c : {"attention", "bench", "demo"}) EXPECT_NE(r.out.find(c), std::string::npos) << c;
  r = run_binary("");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("usage"), std::string::npos);
  r = run_binary("frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "attn: unknown command 'frobnicate' (try attn --help)\n");
  r = run_binary("attention --window x");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "attn: --window: expected L,R with L,R >= -1, got 'x'\n");
  r = run_binary("bench --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--filter"), std::string::npos);
}

}  // namespace
}  // namespace attn
