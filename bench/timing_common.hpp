// What the timing harnesses in bench/ share: inputs, the timed loop, the SGEMM ceiling.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <initializer_list>
#include <string>
#include <variant>
#include <vector>

#include <sys/mman.h>

#include "attn/tensor.hpp"
#include "cpu/thread_pool.hpp"

#if defined(ATTN_HAVE_CBLAS)
#include <cblas.h>
#endif

namespace attn::bench {

/// A command-line flag: "--name VALUE" into an int or a string, or a bare "--name" setting a bool.
struct Flag {
  const char* name;
  std::variant<int*, std::string*, bool*> target;
};

/// Sets the flags' targets from argv; an unknown flag or a missing value exits with status 2.
inline void parse_flags(int argc, char** argv, std::initializer_list<Flag> flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const Flag* flag = std::find_if(flags.begin(), flags.end(), [&](const Flag& f) { return a == f.name; });
    if (flag == flags.end()) {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      std::exit(2);
    }
    if (bool* const* on = std::get_if<bool*>(&flag->target)) {
      **on = true;
      continue;
    }
    if (++i == argc) {
      std::fprintf(stderr, "missing value for %s\n", a.c_str());
      std::exit(2);
    }
    if (int* const* n = std::get_if<int*>(&flag->target)) **n = std::atoi(argv[i]);
    else **std::get_if<std::string*>(&flag->target) = argv[i];
  }
}

/// Uniform values in [-0.5, 0.5) from a linear congruential generator: cheap enough for
/// tensors of gigabytes, and the same on every run.
inline void fill_random(Tensor& t, unsigned seed) {
  unsigned state = seed;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    state = state * 1664525u + 1013904223u;
    write_element(t, i, double(state >> 8) / double(1u << 24) - 0.5);
  }
}

inline double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

/// Wall seconds (best, median) and the best CPU seconds of the process per run: on a shared,
/// loaded machine CPU time moves far less than wall time, so A/B comparisons use it.
struct Stats {
  double best, median, cpu_best;
};

/// One warm-up run (page faults, pool start-up), then max(reps, 1) timed runs.
template <class F>
Stats time_runs(int reps, F&& run) {
  run();
  std::vector<double> t, c;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu_seconds();
    run();
    c.push_back(process_cpu_seconds() - c0);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2], *std::min_element(c.begin(), c.end())};
}

/// With n > 0, times an OpenBLAS n^3 SGEMM on the pool's thread count and prints it as the
/// ceiling the kernels are compared with.
inline void print_sgemm_ceiling(int n, int reps) {
  if (n <= 0) return;
#if defined(ATTN_HAVE_CBLAS)
  std::vector<float> a(std::size_t(n) * n, 0.5f), b(std::size_t(n) * n, 0.25f), c(std::size_t(n) * n);
  openblas_set_num_threads(cpu::num_threads());
  const Stats g = time_runs(reps, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  std::printf("openblas sgemm %d^3 threads=%d: best %.4f s, median %.4f s, %.1f GFLOP/s (best), cpu %.4f s\n", n,
              cpu::num_threads(), g.best, g.median, 2.0 * n * n * double(n) / g.best * 1e-9, g.cpu_best);
#else
  (void)reps;
  std::printf("openblas sgemm: not built (OpenBLAS was not found)\n");
#endif
}

/// Asks for transparent huge pages on a tensor's memory (before it is first touched): K / V
/// rows are heads * dim apart, so with 4 KiB pages every row of a tile can cost a TLB miss.
inline void advise_huge_pages(const attn::Tensor& t) {
  const std::uintptr_t page = 4096, begin = (reinterpret_cast<std::uintptr_t>(t.data()) + page - 1) / page * page;
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(t.data()) + t.nbytes();
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace attn::bench
