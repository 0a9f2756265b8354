// `attn bench`: runs the suites of bench_suites.cpp for one backend and prints a table (or
// JSON) of time, GFLOP/s and peak memory per row, beside ceilings measured in the same run.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <ostream>
#include <string>
#include <thread>

#include <unistd.h>

#include "args.hpp"
#include "bench.hpp"
#include "ceilings.hpp"
#include "commands.hpp"

namespace attn::cli {
namespace {

const Usage kUsage{
    "bench",
    "times attention forward and backward on preset shapes; GFLOP/s counts only what the mask keeps",
    {
        {"--backend", "cpu|cuda|reference", "which kernels (default cpu; reference only with --quick)"},
        {"--quick", "", "small shapes that run in seconds (tests, CI)"},
        {"--filter", "SUBSTR", "only rows whose label contains SUBSTR, e.g. 'causal' or 'bwd'"},
        {"--json", "", "print JSON instead of a table"},
        {"--list", "", "print the labels of the rows (after --filter) without running them"},
        {"--threads", "N", "threads for the kernels (ATTN_NUM_THREADS), SGEMM and FMA loop (default: all cores)"},
    }};

// The memory rows' goal: a long sequence in a fixed, small footprint (no S x S buffer anywhere).
constexpr double kMemoryTargetMiB = 256.0;

struct Ceilings {
  int sgemm_n = 0;
  double sgemm = 0;  ///< GFLOP/s; 0 without cblas
  double fma = 0;
  std::size_t stream_bytes = 0;  ///< buffer of the bandwidth ceilings
  double stream_read = 0;        ///< GB/s read
  double memcpy = 0;             ///< GB/s read + written
};

struct Row {
  const BenchCase* c;
  Measurement m;
  std::string error;  ///< the row's attn::Error (e.g. a pass the backend lacks); empty when it ran
  double gflops() const { return m.median_ms > 0 ? c->flops / (m.median_ms * 1e6) : 0; }
  double gbytes() const { return m.median_ms > 0 ? c->bytes / (m.median_ms * 1e6) : 0; }
  /// Fraction of the ceiling that bounds the row: the copy bandwidth or the SGEMM rate; 0 when unknown.
  double vs_ceiling(const Ceilings& ceil) const {
    if (c->memory_bound) return ceil.memcpy > 0 ? gbytes() / ceil.memcpy : 0;
    return ceil.sgemm > 0 ? gflops() / ceil.sgemm : 0;
  }
};

/// The CPU's model name from /proc/cpuinfo, so saved results say what they ran on.
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string fixed(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, x);
  return buf;
}

std::string pad(std::string s, std::size_t width, bool right = false) {
  if (s.size() >= width) return s + " ";
  const std::string fill(width - s.size(), ' ');
  return (right ? fill + s : s + fill) + " ";
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

void print_table_header(std::ostream& out, const BenchOptions& o, const Ceilings& c) {
  out << "attn bench: backend " << backend_name(o.backend) << ", " << o.threads << " thread(s) on " << cpu_model()
      << " (" << std::thread::hardware_concurrency() << " logical cores)" << (o.quick ? ", quick shapes" : "") << "\n";
  out << "ceilings measured now: SGEMM " << c.sgemm_n << "^3 via OpenBLAS "
      << (c.sgemm > 0 ? fixed(c.sgemm, 1) + " GFLOP/s" : std::string("n/a (built without cblas)"))
      << ", FMA peak loop (" << fma_peak_isa() << ") " << fixed(c.fma, 1) << " GFLOP/s\n"
      << "memory over " << (c.stream_bytes >> 20) << " MiB: stream read " << fixed(c.stream_read, 1)
      << " GB/s, memcpy " << fixed(c.memcpy, 1) << " GB/s (read + written)\n\n";
  out << pad("group", 10) << pad("pattern", 26) << pad("shape", 24) << pad("dtype", 5) << pad("pass", 4)
      << pad("median ms", 11, true) << pad("GFLOP/s", 9, true) << pad("GB/s", 8, true) << pad("vs ceiling", 12, true)
      << pad("peak MiB", 9, true) << '\n';
}

void print_table_row(std::ostream& out, const Row& r, const Ceilings& c) {
  out << pad(r.c->group, 10) << pad(r.c->name, 26) << pad(r.c->shape, 24) << pad(dtype_name(r.c->dtype), 5)
      << pad(r.c->pass, 4);
  if (!r.error.empty()) {
    out << "  failed: " << r.error << std::endl;
    return;
  }
  const double vs = r.vs_ceiling(c);
  out << pad(fixed(r.m.median_ms, 3), 11, true) << pad(fixed(r.gflops(), 1), 9, true)
      << pad(fixed(r.gbytes(), 1), 8, true)
      << pad(vs > 0 ? fixed(100.0 * vs, 1) + (r.c->memory_bound ? "% copy" : "% gemm") : "-", 12, true)
      << pad(fixed(r.m.peak_rss_mib, 1), 9, true) << std::endl;  // flushed: big rows take a while
}

void print_json(std::ostream& out, const BenchOptions& o, const Ceilings& c, const std::vector<Row>& rows) {
  out << "{\n  \"backend\": " << json_string(backend_name(o.backend)) << ",\n  \"cpu\": " << json_string(cpu_model())
      << ",\n  \"logical_cores\": " << std::thread::hardware_concurrency() << ",\n  \"threads\": " << o.threads
      << ",\n  \"quick\": " << (o.quick ? "true" : "false") << ",\n  \"ceilings\": {\"sgemm_n\": " << c.sgemm_n
      << ", \"sgemm_gflops\": " << (c.sgemm > 0 ? fixed(c.sgemm, 3) : "null")
      << ", \"fma_peak_gflops\": " << fixed(c.fma, 3) << ", \"fma_isa\": " << json_string(fma_peak_isa())
      << ", \"stream_bytes\": " << c.stream_bytes << ", \"stream_read_gbytes_per_s\": " << fixed(c.stream_read, 3)
      << ", \"memcpy_gbytes_per_s\": " << fixed(c.memcpy, 3) << "},\n  \"rows\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    out << (i ? "," : "") << "\n    {\"label\": " << json_string(r.c->label())
        << ", \"group\": " << json_string(r.c->group) << ", \"pattern\": " << json_string(r.c->name)
        << ", \"shape\": " << json_string(r.c->shape) << ", \"dtype\": " << json_string(dtype_name(r.c->dtype))
        << ", \"pass\": " << json_string(r.c->pass);
    if (!r.error.empty()) {
      out << ", \"error\": " << json_string(r.error) << "}";
      continue;
    }
    out << ", \"flops\": " << fixed(r.c->flops, 0) << ", \"bytes\": " << fixed(r.c->bytes, 0)
        << ", \"median_ms\": " << fixed(r.m.median_ms, 4) << ", \"min_ms\": " << fixed(r.m.min_ms, 4)
        << ", \"runs\": " << r.m.runs << ", \"gflops\": " << fixed(r.gflops(), 3)
        << ", \"gbytes_per_s\": " << fixed(r.gbytes(), 3)
        << ", \"vs_sgemm\": " << (c.sgemm > 0 ? fixed(r.gflops() / c.sgemm, 4) : "null")
        << (r.c->memory_bound ? ", \"vs_memcpy\": " + fixed(r.vs_ceiling(c), 4) : std::string())
        << ", \"peak_rss_mib\": " << fixed(r.m.peak_rss_mib, 2) << ", \"base_rss_mib\": " << fixed(r.m.base_rss_mib, 2);
    if (r.c->group == "memory") out << ", \"rss_target_mib\": " << fixed(kMemoryTargetMiB, 0);
    out << "}";
  }
  out << "\n  ]\n}\n";
}

const Row* find_row(const std::vector<Row>& rows, const std::string& group, const std::string& name_prefix) {
  for (const Row& r : rows)
    if (r.c->group == group && r.c->name.rfind(name_prefix, 0) == 0 && r.error.empty()) return &r;
  return nullptr;
}

const char* verdict(bool met) { return met ? "met" : "MISSED"; }

/// The layer rows' goals, judged on this run's numbers (issue targets; see docs/PERF-cli2.md).
void print_targets(std::ostream& out, const std::vector<Row>& rows, const Ceilings& c) {
  const Row* paged = find_row(rows, "decode", "paged");
  const Row* contiguous = find_row(rows, "decode", "contiguous");
  if (paged != nullptr && contiguous != nullptr) {
    const double vs_contiguous = paged->gbytes() / contiguous->gbytes(), vs_copy = paged->vs_ceiling(c);
    out << "decode: paged reads " << fixed(paged->gbytes(), 1) << " GB/s, " << fixed(100 * vs_contiguous, 0)
        << "% of contiguous (target >= 90%: " << verdict(vs_contiguous >= 0.9) << "), " << fixed(100 * vs_copy, 0)
        << "% of memcpy (target >= 60%: " << verdict(vs_copy >= 0.6) << ")\n";
  }
  const Row* absorbed = find_row(rows, "mla", "absorbed");
  const Row* expanded = find_row(rows, "mla", "expanded");
  if (absorbed != nullptr && expanded != nullptr)
    out << "mla decode: absorbed " << fixed(absorbed->m.median_ms, 2) << " ms, expanded " << fixed(expanded->m.median_ms, 2)
        << " ms (target: absorbed faster: " << verdict(absorbed->m.median_ms < expanded->m.median_ms)
        << ")\n";
  for (const char* name : {"linear", "softmax"}) {
    std::vector<const Row*> grown;
    for (const Row& r : rows)
      if (r.c->group == "linear" && r.c->name.rfind(name, 0) == 0 && r.error.empty()) grown.push_back(&r);
    if (grown.size() < 2) continue;
    out << name << " causal, time at 4x the length:";
    bool met = true;
    for (std::size_t i = 1; i < grown.size(); ++i) {
      const double ratio = grown[i]->m.median_ms / grown[i - 1]->m.median_ms;
      met = met && ratio <= 5.0;
      out << " " << fixed(ratio, 2) << "x";
    }
    out << (std::string(name) == "linear" ? std::string(" (target <= 5x: ") + verdict(met) + ")" : " (quadratic: ~16x)")
        << '\n';
  }
}

/// --backend cuda: the GPU bench is bench/gpu_bench.py (PyTorch peers in the same process, CUDA
/// events), run on the C ABI library built beside this binary. This process becomes it.
int exec_gpu_bench(const Args& args) {
  if (!cuda_available())
    args.fail("--backend", "cuda is not available (this build has no CUDA backend, or no GPU is visible)");
  for (const char* o : {"--filter", "--list", "--threads", "--json"})
    if (args.has(o)) args.fail(o, "not with --backend cuda (bench/gpu_bench.py runs its own rows; --quick passes on)");
  const std::filesystem::path binary_dir = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  const std::string lib = (binary_dir / "libattn_gpu_capi.so").string();
  const std::string script = std::string(ATTN_SOURCE_DIR) + "/bench/gpu_bench.py";
  if (!std::filesystem::exists(lib))
    args.fail("--backend", "cuda: " + lib + " is missing (build the attn_gpu_capi target)");
  if (!std::filesystem::exists(script)) args.fail("--backend", "cuda: " + script + " is missing");
  if (std::system("python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1") != 0)
    args.fail("--backend", "cuda: the GPU bench needs python3 with a CUDA build of torch");
  std::vector<std::string> words = {"python3", script, "--lib", lib};
  if (args.has("--quick")) words.push_back("--quick");
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  std::cout.flush();
  execvp("python3", argv.data());
  args.fail("--backend", std::string("cuda: could not run python3: ") + std::strerror(errno));
}

}  // namespace

int bench_command(const Argv& argv, std::ostream& out) {
  const Args args(kUsage, argv);
  if (args.help()) {
    kUsage.print(out);
    return 0;
  }
  BenchOptions o;
  o.quick = args.has("--quick");
  o.threads = args.integer("--threads", 1, 4096, int(std::max(1u, std::thread::hardware_concurrency())));
  const std::string backend_text = args.get("--backend").value_or("cpu");
  if (backend_text != "cpu" && backend_text != "cuda" && backend_text != "reference")
    args.fail("--backend", "expected cpu, cuda or reference, got '" + backend_text + "'");
  o.backend = parse_backend(backend_text.c_str(), "--backend");
  if (o.backend == Backend::cuda) return exec_gpu_bench(args);
  // The CPU kernels size their thread pool from ATTN_NUM_THREADS; the forked children inherit it.
  if (args.has("--threads")) setenv("ATTN_NUM_THREADS", std::to_string(o.threads).c_str(), 1);

  std::vector<BenchSuite> suites;
  for (BenchSuite& s : bench_suites())
    if (s.backend == o.backend) suites.push_back(std::move(s));
  if (suites.empty())
    args.fail("--backend", std::string("no bench suite for ") + backend_name(o.backend) + " is built yet");

  const std::string filter = args.get("--filter").value_or("");
  std::vector<std::pair<const BenchSuite*, BenchCase>> cases;
  for (const BenchSuite& s : suites)
    for (BenchCase& c : s.cases(o))
      if (c.label().find(filter) != std::string::npos) cases.emplace_back(&s, std::move(c));
  if (cases.empty()) args.fail("--filter", "no row matches '" + filter + "'");
  if (args.has("--list")) {
    for (const auto& entry : cases) out << entry.second.label() << '\n';
    return 0;
  }

  // Ceilings first, each in its own child like the rows, so the parent stays small and
  // unthreaded for the forks that follow.
  Ceilings ceil;
  ceil.sgemm_n = o.quick ? 512 : 2048;
  // Bandwidth buffers well past the 32 MiB-class last-level caches, so they measure DRAM.
  ceil.stream_bytes = std::size_t(o.quick ? 128 : 512) << 20;
  // The FMA loop goes first: OpenBLAS's threads keep spinning for a while after a GEMM and would
  // take cycles from it.
  const auto measured = compute_in_child([&](std::array<double, 8>& v) {
    v[1] = fma_peak_gflops(o.threads, o.quick ? 0.05 : 0.3);
    v[2] = stream_read_gbytes(o.threads, ceil.stream_bytes);
    v[3] = memcpy_gbytes(o.threads, ceil.stream_bytes);
    v[0] = sgemm_gflops(ceil.sgemm_n, o.threads);
  });
  ceil.sgemm = measured[0];
  ceil.fma = measured[1];
  ceil.stream_read = measured[2];
  ceil.memcpy = measured[3];

  const bool json = args.has("--json");
  if (!json) print_table_header(out, o, ceil);
  // A failing row (say, a pass the backend does not have yet) is reported in its place and the
  // others still run; the command then fails as a whole.
  std::vector<Row> rows;
  std::size_t failed = 0;
  for (const auto& [suite, c] : cases) {
    Row row{&c, {}, {}};
    try {
      row.m = suite->measure(c, o);
    } catch (const Error& e) {
      const std::string what = e.what();
      row.error = what.rfind("attn: ", 0) == 0 ? what.substr(6) : what;  // the prefix is added once, at the end
      ++failed;
    }
    rows.push_back(row);
    if (!json) print_table_row(out, rows.back(), ceil);
  }
  if (json) {
    print_json(out, o, ceil, rows);
  } else if (failed < rows.size()) {
    double base = 0;
    for (const Row& r : rows) base = std::max(base, r.m.base_rss_mib);
    out << "\nGFLOP/s counts only the pairs the mask keeps (forward 4*D per pair, backward 2.5x); median of "
           "timed runs after a warm-up.\nGB/s: the call's tensors (decode: the K/V read), per second; vs ceiling: of "
           "memcpy for decode rows, of SGEMM for the others.\npeak MiB: getrusage maxrss of a child forked per row (includes the "
        << fixed(base, 1) << " MiB the process had before the row allocated).\n";
    for (const Row& r : rows)
      if (r.c->group == "memory" && r.error.empty())
        out << "memory " << r.c->shape << " " << r.c->pass << ": peak " << fixed(r.m.peak_rss_mib, 1)
            << " MiB, target under " << fixed(kMemoryTargetMiB, 0)
            << " MiB: " << (r.m.peak_rss_mib < kMemoryTargetMiB ? "met" : "MISSED") << '\n';
    // Quick shapes fit in cache and take microseconds: nothing to judge the targets on.
    if (!o.quick) print_targets(out, rows, ceil);
  }
  for (const Row& r : rows)
    if (!r.error.empty())
      detail::fail("bench: ", failed, " of ", rows.size(), " rows failed; the first (", r.c->label(), "): ", r.error);
  return 0;
}

}  // namespace attn::cli
