// `attn bench`'s building blocks: cases (one timed row each), suites (families of cases with
// their way of timing), and the list of suites.
//
// Adding rows:
//   - more attention shapes or masks: a line in the table of bench_attention.cpp;
//   - a new operation (paged decode, MLA, linear attention): a function returning BenchCases,
//     whose flops/bytes come from counters.hpp (or new counters beside them), and a suite for
//     it in bench_suites.cpp;
//   - another device: a suite whose `measure` times there (CUDA: events, in-process).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "measure.hpp"

namespace attn::cli {

struct BenchOptions {
  Backend backend = Backend::cpu;
  bool quick = false;  ///< small shapes, seconds in all: for tests and CI
  int threads = 1;     ///< threads for the kernels, the SGEMM and the FMA loop
};

/// One row of the table.
struct BenchCase {
  std::string group;  ///< "attention", "memory", ...
  std::string name;   ///< the pattern: "causal", "window 256,0"
  std::string shape;  ///< Shape::str()
  DType dtype = DType::f32;
  std::string pass;  ///< "fwd" or "bwd"
  double flops = 0;  ///< useful FLOPs of one call (counters.hpp)
  double bytes = 0;  ///< bytes of the call's own tensors (counters.hpp)
  /// Bound by memory, not arithmetic (decode): GB/s is read against the copy ceiling.
  bool memory_bound = false;
  RepeatPolicy repeat;
  /// Runs where the case is measured: allocates and fills the inputs, returns the call to time.
  std::function<std::function<void()>()> setup;

  /// "attention causal B1 S4096 H8 D128 f32 fwd": what --filter matches against.
  std::string label() const;
};

/// A family of rows and how to time them.
struct BenchSuite {
  std::string name;
  Backend backend;
  std::function<std::vector<BenchCase>(const BenchOptions&)> cases;
  std::function<Measurement(const BenchCase&, const BenchOptions&)> measure;
};

/// The attention forward/backward rows on a CPU backend (cpu, or the slow reference), timed in
/// forked children so each row's peak RSS is its own.
BenchSuite cpu_attention_suite(Backend backend);

/// Decode over paged and contiguous caches, MLA decode absorbed vs expanded, and linear vs
/// softmax attention (bench_layers.cpp).
BenchSuite cpu_layers_suite();

/// Every suite `attn bench` can run; it runs those whose backend was asked for.
std::vector<BenchSuite> bench_suites();

}  // namespace attn::cli
