// The attention rows of `attn bench` on a CPU backend: a table of (shape, pattern) rows, each
// timed forward and backward.
#include <functional>

#include "bench.hpp"
#include "counters.hpp"
#include "workload.hpp"

namespace attn::cli {
namespace {

struct AttentionRow {
  const char* group;
  Shape shape;
  std::function<Pattern(const Shape&)> pattern;
  bool single_run = false;  ///< one run, no warm-up: rows that take many seconds
};

Pattern full(const Shape&) { return full_pattern(); }
Pattern causal(const Shape&) { return causal_pattern(); }
// Mistral-style: each query sees itself and the `left` keys before it.
std::function<Pattern(const Shape&)> window(int left) {
  return [left](const Shape&) { return window_pattern(left, 0); };
}
std::function<Pattern(const Shape&)> strided(int stride) {
  return [stride](const Shape&) { return strided_pattern(stride); };
}
std::function<Pattern(const Shape&)> block_sparse(int block, int every) {
  return [block, every](const Shape& s) { return block_sparse_pattern(s, block, every); };
}

// The preset rows: growing lengths for full and causal, a long window that must cost in
// proportion to what it keeps, sparse patterns, the half-precision storage types, and one long
// single-head row whose peak memory shows nothing of size S x S was allocated.
std::vector<AttentionRow> preset_rows() {
  const DType f32 = DType::f32;
  return {
      {"attention", Shape::square(1024, 8, 128, f32), full},
      {"attention", Shape::square(2048, 8, 128, f32), full},
      {"attention", Shape::square(4096, 8, 128, f32), full},
      {"attention", Shape::square(1024, 8, 128, f32), causal},
      {"attention", Shape::square(2048, 8, 128, f32), causal},
      {"attention", Shape::square(4096, 8, 128, f32), causal},
      {"attention", Shape::square(4096, 8, 128, f32), window(256)},
      {"attention", Shape::square(16384, 8, 128, f32), window(256)},
      {"attention", Shape::square(4096, 8, 128, f32), strided(64)},
      {"attention", Shape::square(4096, 8, 128, f32), block_sparse(64, 8)},
      {"attention", Shape::square(2048, 8, 128, DType::f16), causal},
      {"attention", Shape::square(2048, 8, 128, DType::bf16), causal},
      {"memory", Shape::square(32768, 1, 64, f32), causal, true},
  };
}

// The same kinds of rows at sizes that take milliseconds, even on the float64 reference.
std::vector<AttentionRow> quick_rows() {
  const DType f32 = DType::f32;
  return {
      {"attention", Shape::square(128, 2, 64, f32), full},
      {"attention", Shape::square(256, 2, 64, f32), full},
      {"attention", Shape::square(256, 2, 64, f32), causal},
      {"attention", Shape::square(512, 2, 64, f32), window(32)},
      {"attention", Shape::square(256, 2, 64, f32), strided(16)},
      {"attention", Shape::square(256, 2, 64, f32), block_sparse(32, 4)},
      {"attention", Shape::square(128, 2, 64, DType::f16), causal},
      {"attention", Shape::square(128, 2, 64, DType::bf16), causal},
      {"memory", Shape::square(1024, 1, 64, f32), causal, true},
  };
}

/// Setup of one pass: inputs, workspace, and (for the backward) the forward's out and lse.
std::function<std::function<void()>()> setup_pass(const Shape& shape, const Pattern& pattern, Backend backend,
                                                  bool backward) {
  return [=] {
    const Workload w = make_workload(shape, backward, 0x5eed, shape.dtype);
    AttentionParams params;
    params.mask = pattern.mask;
    const ForwardArgs fa = w.forward_args(params);
    // Kernels never allocate; neither does the timed call: its workspace is made here.
    if (!backward) {
      const Tensor ws({std::int64_t(attention_forward_workspace_size(fa, backend))}, DType::u8);
      // The call holds w and ws: the args only view their storage.
      return std::function<void()>([w, fa, ws, backend] { attention_forward(fa, {ws.data(), ws.nbytes()}, backend); });
    }
    attention_forward(fa, backend);
    const BackwardArgs ba = w.backward_args(params);
    const Tensor ws({std::int64_t(attention_backward_workspace_size(ba, backend))}, DType::u8);
    return std::function<void()>([w, ba, ws, backend] { attention_backward(ba, {ws.data(), ws.nbytes()}, backend); });
  };
}

std::vector<BenchCase> attention_cases(Backend backend, const BenchOptions& o) {
  if (backend == Backend::reference && !o.quick)
    detail::fail("--backend: reference (the float64 oracle, O(S^2) memory) only runs with --quick");
  std::vector<BenchCase> cases;
  for (const AttentionRow& row : o.quick ? quick_rows() : preset_rows()) {
    const Pattern pattern = row.pattern(row.shape);
    const std::int64_t pairs = allowed_pairs(row.shape, pattern.mask);
    for (const bool backward : {false, true}) {
      BenchCase c;
      c.group = row.group;
      c.name = pattern.name;
      c.shape = row.shape.str();
      c.dtype = row.shape.dtype;
      c.pass = backward ? "bwd" : "fwd";
      c.flops = backward ? backward_flops(row.shape, pairs) : forward_flops(row.shape, pairs);
      c.bytes = io_bytes(row.shape, backward);
      c.repeat = o.quick ? RepeatPolicy{3, 5, 0.05, row.single_run} : RepeatPolicy{3, 10, 1.0, row.single_run};
      c.setup = setup_pass(row.shape, pattern, backend, backward);
      cases.push_back(std::move(c));
    }
  }
  return cases;
}

}  // namespace

BenchSuite cpu_attention_suite(Backend backend) {
  return {std::string("attention ") + backend_name(backend), backend,
          [backend](const BenchOptions& o) { return attention_cases(backend, o); },
          [](const BenchCase& c, const BenchOptions&) { return measure_in_child(c.setup, c.repeat); }};
}

}  // namespace attn::cli
