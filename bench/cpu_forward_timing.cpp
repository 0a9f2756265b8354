// A small timing harness for the CPU forward (the full `attn bench` lives in apps/).
//
//   cpu_forward_timing [--b B] [--h H] [--hkv HKV] [--sq SQ] [--s SK] [--d D] [--causal]
//                      [--window LEFT] [--dtype f32|f16|bf16] [--reps N] [--sgemm N] [--huge-pages]
//
// Prints best and median seconds over N runs, GFLOP/s (4 * Sq * Sk_visited * D per head:
// S = QK^T and O = PV, each 2 flops per multiply-add; masked-out work is not counted), peak RSS,
// and with --sgemm N an OpenBLAS N^3 SGEMM on the same threads as a ceiling.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "attn/attention.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"
#include "timing_common.hpp"

int main(int argc, char** argv) {
  int B = 1, H = 8, Hkv = 0, Sq = 0, Sk = 4096, D = 128, window = -1, reps = 5, sgemm = 0;
  bool causal = false, huge_pages = false;
  std::string dtype = "f32";
  attn::bench::parse_flags(argc, argv,
                           {{"--b", &B}, {"--h", &H}, {"--hkv", &Hkv}, {"--sq", &Sq}, {"--s", &Sk}, {"--d", &D},
                            {"--causal", &causal}, {"--huge-pages", &huge_pages}, {"--window", &window},
                            {"--dtype", &dtype}, {"--reps", &reps}, {"--sgemm", &sgemm}});
  if (Hkv == 0) Hkv = H;
  if (Sq == 0) Sq = Sk;
  const attn::DType dt = attn::parse_dtype(dtype);
  attn::Tensor q({B, Sq, H, D}, dt), k({B, Sk, Hkv, D}, dt), v({B, Sk, Hkv, D}, dt), out({B, Sq, H, D}, dt);
  attn::Tensor lse({B, H, Sq}, attn::DType::f32);
  if (huge_pages)
    for (const attn::Tensor* t : {&q, &k, &v, &out}) attn::bench::advise_huge_pages(*t);
  // One seed for all three (q = k = v), as in the figures of docs/PERF-cpu-forward.md.
  attn::bench::fill_random(q, 12345);
  attn::bench::fill_random(k, 12345);
  attn::bench::fill_random(v, 12345);
  attn::ForwardArgs args{q, k, v, out, lse, {}, {}, {}};
  args.params.mask.causal = causal;
  if (window >= 0) {
    args.params.mask.window_left = window;
    args.params.mask.window_right = causal ? -1 : 0;
  }
  const std::size_t ws_bytes = attn::attention_forward_workspace_size(args, attn::Backend::cpu);
  attn::Tensor ws({std::int64_t(std::max<std::size_t>(ws_bytes, 1))}, attn::DType::u8);
  const attn::bench::Stats s =
      attn::bench::time_runs(reps, [&] { attn::attention_forward(args, {ws.data(), ws_bytes}, attn::Backend::cpu); });

  // Keys each query visits: all, the causal prefix, or the window.
  double visited = 0;
  for (int i = 0; i < Sq; ++i) {
    const long p = i + Sk - Sq;
    long lo = 0, hi = causal ? p : Sk - 1;
    if (window >= 0) lo = std::max(0L, p - window), hi = std::min<long>(hi, p);
    visited += double(std::max(0L, hi - lo + 1));
  }
  const double flops = 4.0 * B * H * D * visited;
  if (huge_pages) {
    std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (f != nullptr && std::fgets(line, sizeof line, f) != nullptr)
      if (std::strncmp(line, "AnonHugePages", 13) == 0) std::printf("%s", line);
    if (f != nullptr) std::fclose(f);
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("forward isa=%s threads=%d B=%d H=%d Hkv=%d Sq=%d Sk=%d D=%d %s%s%s: best %.4f s, median %.4f s, "
              "%.1f GFLOP/s (best), workspace %.1f MiB, peak RSS %.1f MiB\n",
              attn::cpu::isa_name(attn::cpu::active_isa()), attn::cpu::num_threads(), B, H, Hkv, Sq, Sk, D,
              dtype.c_str(), causal ? " causal" : "", window >= 0 ? (" window=" + std::to_string(window)).c_str() : "",
              s.best, s.median, flops / s.best * 1e-9, double(ws_bytes) / (1 << 20), double(ru.ru_maxrss) / 1024);

  attn::bench::print_sgemm_ceiling(sgemm, reps);
  return 0;
}
