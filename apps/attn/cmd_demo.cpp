// `attn demo`: a tour for newcomers. Each mechanism runs once on a small input on the chosen
// kernels and once on the float64 reference; the table shows how far apart they are, how long
// the kernel took, and how much memory it used against what materialising the score matrix
// (the textbook algorithm) would have needed. A second table shows the layers built on the
// kernels (src/modules' demo rows) and decode over a paged cache against a contiguous one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>

#include "args.hpp"
#include "attn/attention.hpp"
#include "attn/attention_kvcache.hpp"
#include "attn/modules/demo.hpp"
#include "cache/views.hpp"
#include "commands.hpp"
#include "counters.hpp"
#include "workload.hpp"

namespace attn::cli {
namespace {

const Usage kUsage{"demo",
                   "runs every attention mechanism on a small input and checks it against the float64 reference",
                   {
                       {"--backend", "cpu|reference|cuda", "which kernels to show (default cpu)"},
                       {"--dtype", "f32|f16|bf16", "storage type of the inputs (default f32)"},
                   }};

struct Mechanism {
  const char* name;
  const char* explanation;
  Shape shape;
  Pattern pattern;
  float softcap = 0.0f;
  std::vector<int> lengths;  ///< non-empty: a packed batch of sequences of these lengths
  bool backward = false;
};

Mechanism mechanism(const char* name, const char* explanation, const Shape& shape, Pattern pattern,
                    float softcap = 0.0f, std::vector<int> lengths = {}, bool backward = false) {
  return {name, explanation, shape, std::move(pattern), softcap, std::move(lengths), backward};
}

// Small enough that the reference (which materialises S in float64) answers in a blink.
constexpr int kS = 256, kH = 4, kD = 64;

std::vector<Mechanism> tour() {
  const Shape mha = Shape::square(kS, kH, kD);
  Shape gqa = mha;
  gqa.heads_q = 8;
  gqa.heads_kv = 2;
  return {
      mechanism("full", "every query sees every key (encoders: BERT, ViT)", mha, full_pattern()),
      mechanism("causal", "query i sees keys j <= i: nothing from the future (GPT-style decoders)", mha,
                causal_pattern()),
      mechanism("GQA", "8 query heads share 2 KV heads, a 4x smaller KV cache (Llama 3); causal", gqa,
                causal_pattern()),
      mechanism("window", "each query sees itself and the 64 keys before it (Mistral, Gemma local layers)", mha,
                window_pattern(64, 0)),
      mechanism("dilated", "every 2nd key, 32 steps back: twice the reach for the same work (LongNet)", mha,
                dilated_pattern(32, 1)),
      mechanism("strided", "the last 16 keys plus every 16th key before them (Sparse Transformer)", mha,
                strided_pattern(16)),
      mechanism("fixed", "own block of 16 keys plus the last 2 keys of every earlier block (Sparse Transformer)", mha,
                fixed_pattern(16, 2)),
      mechanism("block-sparse", "a layout of 32x32 blocks: a band plus every 4th block column (BigBird-like)", mha,
                block_sparse_pattern(mha, 32, 4)),
      mechanism("global", "window of 32, plus tokens 0 and 100 that see and are seen by all (Longformer)", mha,
                global_pattern(32, {0, 100})),
      mechanism("soft-cap", "scores pass through 2*tanh(s/2) so no logit runs away (Gemma 2, Grok); causal", mha,
                causal_pattern(), 2.0f),
      mechanism("varlen", "3 sequences of 100, 37 and 250 tokens packed with no padding (cu_seqlens); causal", mha,
                causal_pattern(), 0.0f, {100, 37, 250}),
      mechanism("backward", "gradients dq, dk, dv of causal attention (the training step); worst of the three", mha,
                causal_pattern(), 0.0f, {}, true),
  };
}

/// Largest |a - b| over all elements of two same-shaped CPU tensors; NaN counts as infinite.
double max_error(const Tensor& a, const Tensor& b) {
  double worst = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::abs(read_element(a, i) - read_element(b, i));
    worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(worst, d);
  }
  return worst;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(read_element(t, i)));
  return m;
}

/// A tolerance, relative to the largest reference value, that a correct kernel meets with room to
/// spare: the reference reads the same rounded inputs, so what remains is the rounding of the
/// outputs to the storage type and f32 arithmetic.
double tolerance(DType dtype, bool backward) {
  const double base = dtype == DType::f32 ? 1e-5 : dtype == DType::f16 ? 4e-3 : 3e-2;
  return backward ? 10 * base : base;
}

/// Median wall time of `runs` calls.
double median_ms(const std::function<void()>& call, int runs) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> ms;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    call();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Outcome {
  double error = 0;
  double scale = 1;  ///< max(1, largest |reference value|): what the tolerance is relative to
  double ms = 0;
  double used_bytes = 0;    ///< the kernel's tensors and workspace
  double matrix_bytes = 0;  ///< the f32 score matrices the textbook algorithm would add
};

Outcome run(const Mechanism& m, Backend backend, DType dtype) {
  Shape s = m.shape;
  s.dtype = dtype;
  const bool packed = !m.lengths.empty();
  const Workload host = packed ? make_varlen_workload(s, m.lengths, m.lengths, m.backward, 7, dtype)
                               : make_workload(s, m.backward, 7, dtype);
  const Device device = backend == Backend::cuda ? Device::cuda() : Device::cpu();
  const Workload w = host.on(device);
  AttentionParams params;
  params.softcap = m.softcap;
  params.mask = m.pattern.mask;
  const Tensor layout = on_device(m.pattern.layout, device), globals = on_device(m.pattern.globals, device);
  if (layout.defined()) params.mask.block_layout = layout;
  if (globals.defined()) params.mask.global_tokens = globals;

  // The kernel. The forward always runs first (the backward needs its out and lse), which also
  // warms up the forward timing below.
  const ForwardArgs fa = w.forward_args(params);
  Tensor fws({std::int64_t(attention_forward_workspace_size(fa, backend))}, DType::u8, device);
  attention_forward(fa, {fws.data(), fws.nbytes()}, backend);
  // The reference is slow and only there for comparison: one timed run is enough for it.
  const int runs = backend == Backend::reference ? 1 : 5;
  Outcome o;
  std::size_t workspace = fws.nbytes();
  if (m.backward) {
    const BackwardArgs ba = w.backward_args(params);
    Tensor bws({std::int64_t(attention_backward_workspace_size(ba, backend))}, DType::u8, device);
    workspace = std::max(workspace, bws.nbytes());
    const auto call = [&] { attention_backward(ba, {bws.data(), bws.nbytes()}, backend); };
    if (runs > 1) call();  // warm-up
    o.ms = median_ms(call, runs);
  } else {
    o.ms = median_ms([&] { attention_forward(fa, {fws.data(), fws.nbytes()}, backend); }, runs);
  }
  o.used_bytes = double(w.nbytes() + workspace);

  const Workload got = w.on(Device::cpu());

  // The reference on the same rounded inputs and the host copy of the mask, every output in f64.
  const AttentionParams host_params{0.0f, m.softcap, m.pattern.mask};
  const auto f64_like = [](const Tensor& t) {
    return Tensor(std::span<const std::int64_t>(t.view().shape.data(), std::size_t(t.view().ndim)), DType::f64);
  };
  Workload ref = host;
  ref.out = f64_like(host.out);
  ref.lse = f64_like(host.lse);
  attention_forward(ref.forward_args(host_params), Backend::reference);
  if (m.backward) {
    ref.dout = convert(host.dout, DType::f64);
    ref.dq = f64_like(host.dq);
    ref.dk = f64_like(host.dk);
    ref.dv = f64_like(host.dv);
    attention_backward(ref.backward_args(host_params), Backend::reference);
    o.error = std::max({max_error(got.dq, ref.dq), max_error(got.dk, ref.dk), max_error(got.dv, ref.dv)});
    o.scale = std::max({1.0, max_abs(ref.dq), max_abs(ref.dk), max_abs(ref.dv)});
  } else {
    o.error = max_error(got.out, ref.out);
    o.scale = std::max(1.0, max_abs(ref.out));
  }

  if (packed) {
    for (int len : m.lengths) {
      Shape one = s;
      one.seqlen_q = one.seqlen_k = len;
      o.matrix_bytes += score_matrix_bytes(one, m.backward);
    }
  } else {
    o.matrix_bytes = score_matrix_bytes(s, m.backward);
  }
  return o;
}

std::string format(const char* fmt, double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, x);
  return buf;
}

std::string column(const std::string& s, std::size_t width) {
  return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' ');
}

/// What each of modules::demo_rows() shows, by the start of its name (most specific first).
const char* layer_explanation(const std::string& name) {
  static const std::pair<const char*, const char*> kExplanations[] = {
      {"mha prefill", "a layer with projections and RoPE over a whole prompt, causal"},
      {"mha decode step", "one token per step against the layer's KV cache (after the prompt)"},
      {"mha decode vs whole", "decoding token by token gives what one pass over the sequence gives"},
      {"mha -> mqa", "one KV head, the mean of all: the error on random heads (trained heads fare better)"},
      {"mha -> gqa", "fewer KV heads, each the mean of a group: the error on random heads (trained fare better)"},
      {"mla absorbed vs expanded", "MLA attending over the latent cache (W_uk, W_uv folded in) equals expanding k, v"},
      {"cache bytes per token, mla", "MLA caches one latent (R + P values) per token and layer"},
      {"cache bytes per token, mha", "the same model with ordinary K and V for every head"},
      {"cache bytes per token, gqa", "the same model with 8 shared KV heads"},
      {"linear attention recurrent", "the O(1)-state recurrent form equals the causal parallel form"},
      {"linear attention state", "what linear attention keeps per sequence, whatever its length"},
  };
  for (const auto& [prefix, text] : kExplanations)
    if (name.rfind(prefix, 0) == 0) return text;
  return "";
}

std::string layer_value(const modules::DemoRow& r) {
  if (r.unit == "ms") return format("%.2f ms", r.value);
  if (r.unit == "rel L2") return format("%.1e rel L2", r.value);
  return format("%.0f ", r.value) + r.unit;
}

struct PagedOutcome {
  double vs_contiguous = 0;   ///< max |paged - contiguous|
  double vs_reference = 0;    ///< max |paged - float64 reference|, relative to max(1, |reference|)
  double paged_bytes = 0;     ///< K and V pages the sequences hold
  double contiguous_bytes = 0;  ///< K and V slots a contiguous cache reserves (max length each)
};

/// One decode step (a new token appended, then attention) for sequences of very different
/// lengths, over a page pool handed out in shuffled order and over a contiguous cache that
/// reserves the longest length for every sequence.
PagedOutcome paged_decode(Backend backend, DType dtype) {
  const std::vector<std::int32_t> lens = {100, 37, 250, 5};
  const std::int64_t B = 4, Smax = 256, Hq = 8, Hk = 2, D = kD, page = 16, per_seq = Smax / page;
  const Tensor q = convert(random_input({B, 1, Hq, D}, DType::f32, 31), dtype);
  const Tensor k_new = convert(random_input({B, 1, Hk, D}, DType::f32, 32), dtype);
  const Tensor v_new = convert(random_input({B, 1, Hk, D}, DType::f32, 33), dtype);
  const Tensor kc = convert(random_input({B, Smax, Hk, D}, DType::f32, 34), dtype);
  const Tensor vc = convert(random_input({B, Smax, Hk, D}, DType::f32, 35), dtype);
  // The pool holds only the pages the sequences use (their lengths plus the new token).
  std::vector<std::int32_t> order;
  std::int64_t pages = 0;
  for (const std::int32_t len : lens) pages += (len + 1 + page - 1) / page;
  order.resize(std::size_t(pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(36));
  Tensor table({B, per_seq}, DType::i32);
  std::fill_n(table.as<std::int32_t>(), B * per_seq, 0);
  Tensor pk({pages, page, Hk, D}, dtype), pv({pages, page, Hk, D}, dtype);
  std::size_t next = 0;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i * page < lens[std::size_t(b)] + 1; ++i) {
      const std::int32_t pg = order[next++];
      table.as<std::int32_t>()[b * per_seq + i] = pg;
      // The cached tokens of this page (slots past the length are overwritten or never read).
      for (std::int64_t t = i * page; t < std::min<std::int64_t>((i + 1) * page, Smax); ++t)
        for (const auto& [pool, cache] : {std::pair{&pk, &kc}, std::pair{&pv, &vc}})
          copy(detail::select(detail::select(*pool, pg), t % page), detail::select(detail::select(*cache, b), t));
    }
  const Tensor seqlens = [&] {
    Tensor t({B}, DType::i32);
    std::copy(lens.begin(), lens.end(), t.as<std::int32_t>());
    return t;
  }();
  const auto decode = [&](const Tensor& k, const Tensor& v, const Tensor& bt, Backend be, DType out_dtype) {
    KVCacheArgs a;
    const Tensor out({B, 1, Hq, D}, out_dtype);
    a.q = q;
    a.k_cache = k;
    a.v_cache = v;
    a.block_table = bt;
    a.cache_seqlens = seqlens;
    a.k_new = k_new;
    a.v_new = v_new;
    a.out = out;
    a.params.mask = Mask::causal_mask();
    attention_with_kvcache(a, be);
    return out;
  };
  const DType out_dtype = backend == Backend::reference ? DType::f32 : dtype;
  const Tensor paged = decode(pk, pv, table, backend, out_dtype);
  const Tensor contiguous = decode(kc, vc, {}, backend, out_dtype);
  const Tensor reference = decode(kc, vc, {}, Backend::reference, DType::f64);
  PagedOutcome o;
  o.vs_contiguous = max_error(paged, contiguous);
  o.vs_reference = max_error(paged, reference) / std::max(1.0, max_abs(reference));
  const double slot_bytes = 2.0 * Hk * D * double(dtype_size(dtype));
  o.paged_bytes = double(pages * page) * slot_bytes;
  o.contiguous_bytes = double(B * Smax) * slot_bytes;
  return o;
}

}  // namespace

int demo_command(const Argv& argv, std::ostream& out) {
  const Args args(kUsage, argv);
  if (args.help()) {
    kUsage.print(out);
    return 0;
  }
  const std::string backend_text = args.get("--backend").value_or("cpu");
  if (backend_text != "cpu" && backend_text != "reference" && backend_text != "cuda")
    args.fail("--backend", "expected cpu, reference or cuda, got '" + backend_text + "'");
  const Backend backend = parse_backend(backend_text.c_str(), "--backend");
  if (backend == Backend::cuda && !cuda_available())
    args.fail("--backend", "cuda is not available (this build has no CUDA backend, or no GPU is visible)");
  const DType dtype = parse_dtype(args.get("--dtype").value_or("f32"), "--dtype");

  out << "attn demo: each mechanism on " << Shape::square(kS, kH, kD).str() << " " << dtype_name(dtype)
      << ", run by the " << backend_name(backend) << " kernels and checked against the float64 reference.\n"
      << "  error: max |kernel - reference| over the output (gradients for backward)\n"
      << "  S matrix: memory that materialising the f32 scores (and dS for backward) would add\n"
      << "  used: what the kernel used: inputs, outputs and its workspace\n"
      << "  time: median of 5 calls after a warm-up (one call for the reference)\n\n"
      << column("mechanism", 13) << column("error", 9) << column("ok", 3) << column("time ms", 8)
      << column("S matrix", 10) << column("used", 10) << "what it is\n";
  // A mechanism the backend cannot run yet is shown in its row and the tour goes on; the command
  // then fails with that error. A wrong answer is exit code 1.
  int failures = 0;
  std::string first_error;
  for (const Mechanism& m : tour()) {
    Outcome o;
    try {
      o = run(m, backend, dtype);
    } catch (const Error& e) {
      const std::string what = e.what();
      const std::string reason = what.rfind("attn: ", 0) == 0 ? what.substr(6) : what;  // prefixed once, at the end
      out << column(m.name, 13) << "failed: " << reason << '\n';
      if (first_error.empty()) first_error = std::string(m.name) + ": " + reason;
      continue;
    }
    const bool ok = o.error <= tolerance(dtype, m.backward) * o.scale;
    failures += !ok;
    out << column(m.name, 13) << column(format("%.1e", o.error), 9) << column(ok ? "ok" : "NO", 3)
        << column(format("%.2f", o.ms), 8) << column(format("%.2f MiB", o.matrix_bytes / 1048576.0), 10)
        << column(format("%.2f MiB", o.used_bytes / 1048576.0), 10) << m.explanation << '\n';
  }
  const Shape big = Shape::square(32768, 1, 64);
  out << "\nAt this size the score matrix is small. At " << big.str() << " it alone would take "
      << format("%.0f MiB", score_matrix_bytes(big, false) / 1048576.0) << ", against "
      << format("%.0f MiB", io_bytes(big, false) / 1048576.0)
      << " for the tensors themselves;\n`attn bench` measures the kernels' peak memory on exactly that case. "
         "`attn attention --help` runs\nany of these mechanisms on your own .npy tensors.\n";

  // The layers built on the kernels: the modules' own numbers (f32 layers on random weights),
  // then one decode step over a paged cache.
  out << "\nlayers (src/modules, f32, random weights), on the " << backend_name(backend) << " kernels:\n";
  try {
    for (const modules::DemoRow& r : modules::demo_rows(backend))
      out << "  " << column(r.name, 38) << column(layer_value(r), 22) << layer_explanation(r.name) << " ["
          << r.config << "]\n";
  } catch (const Error& e) {
    const std::string what = std::string(e.what()).substr(std::strlen("attn: "));
    out << "  layers failed: " << what << '\n';
    if (first_error.empty()) first_error = "layers: " + what;
  }
  try {
    const PagedOutcome p = paged_decode(backend, dtype);
    const bool ok = p.vs_contiguous <= tolerance(dtype, false) && p.vs_reference <= tolerance(dtype, false);
    failures += !ok;
    out << "  " << column("paged decode vs contiguous", 38)
        << column(format("%.1e", p.vs_contiguous) + (ok ? " ok" : " NO"), 22)
        << "4 sequences (100, 37, 250, 5 tokens + 1 new) in shuffled pages of 16: "
        << format("%.0f KiB", p.paged_bytes / 1024) << " of pages vs "
        << format("%.0f KiB", p.contiguous_bytes / 1024) << " reserved contiguously (256 slots each); vs reference "
        << format("%.1e", p.vs_reference) << "\n";
  } catch (const Error& e) {
    const std::string what = std::string(e.what()).substr(std::strlen("attn: "));
    out << "  paged decode failed: " << what << '\n';
    if (first_error.empty()) first_error = "paged decode: " + what;
  }
  if (!first_error.empty()) detail::fail("demo: ", first_error);
  if (failures > 0) {
    out << failures << " mechanism(s) exceeded the tolerance of " << tolerance(dtype, false) << " (backward "
        << tolerance(dtype, true) << ") relative to the largest reference value\n";
    return 1;
  }
  return 0;
}

}  // namespace attn::cli
