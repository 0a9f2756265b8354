// A small timing harness for the CPU backward (the full `attn bench` lives in apps/).
//
//   cpu_backward_timing [--b B] [--h H] [--hkv HKV] [--s S] [--d D] [--causal]
//                       [--dtype f32|f16|bf16] [--reps N] [--sgemm N]
//
// Prints best and median seconds over N runs and GFLOP/s counted as the standard five matmuls:
// 2.5 x the forward's 4 * Sq * Sk_visited * D per head (masked-out work is not counted), and
// with --sgemm N an OpenBLAS N^3 SGEMM on the same threads as the ceiling to compare with.
// The forward's out and lse come from the CPU forward, run once before timing.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "attn/attention.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"
#include "timing_common.hpp"

int main(int argc, char** argv) {
  int B = 1, H = 8, Hkv = 0, S = 4096, D = 128, reps = 3, sgemm = 0;
  bool causal = false;
  std::string dtype = "f32";
  attn::bench::parse_flags(argc, argv,
                           {{"--b", &B}, {"--h", &H}, {"--hkv", &Hkv}, {"--s", &S}, {"--d", &D}, {"--causal", &causal},
                            {"--dtype", &dtype}, {"--reps", &reps}, {"--sgemm", &sgemm}});
  if (Hkv == 0) Hkv = H;
  const attn::DType dt = attn::parse_dtype(dtype);
  attn::Tensor q({B, S, H, D}, dt), k({B, S, Hkv, D}, dt), v({B, S, Hkv, D}, dt), out({B, S, H, D}, dt);
  attn::Tensor dout({B, S, H, D}, dt), dq({B, S, H, D}, dt), dk({B, S, Hkv, D}, dt), dv({B, S, Hkv, D}, dt);
  attn::Tensor lse({B, H, S}, attn::DType::f32);
  attn::bench::fill_random(q, 1);
  attn::bench::fill_random(k, 2);
  attn::bench::fill_random(v, 3);
  attn::bench::fill_random(dout, 4);
  attn::ForwardArgs fwd{q, k, v, out, lse, {}, {}, {}};
  fwd.params.mask.causal = causal;
  attn::attention_forward(fwd, attn::Backend::cpu);

  attn::BackwardArgs args{q, k, v, out, dout, lse, dq, dk, dv, {}, {}, fwd.params};
  const std::size_t ws_bytes = attn::attention_backward_workspace_size(args, attn::Backend::cpu);
  attn::Tensor ws({std::int64_t(std::max<std::size_t>(ws_bytes, 1))}, attn::DType::u8);
  const attn::bench::Stats s =
      attn::bench::time_runs(reps, [&] { attn::attention_backward(args, {ws.data(), ws_bytes}, attn::Backend::cpu); });

  const double visited = causal ? double(S) * (S + 1) / 2 : double(S) * S;
  const double flops = 2.5 * 4.0 * B * H * D * visited;
  std::printf("backward isa=%s threads=%d B=%d H=%d Hkv=%d S=%d D=%d %s%s: best %.4f s, median %.4f s, "
              "%.1f GFLOP/s (best), cpu %.4f s, workspace %.1f MiB\n",
              attn::cpu::isa_name(attn::cpu::active_isa()), attn::cpu::num_threads(), B, H, Hkv, S, D, dtype.c_str(),
              causal ? " causal" : "", s.best, s.median, flops / s.best * 1e-9, s.cpu_best, double(ws_bytes) / (1 << 20));

  attn::bench::print_sgemm_ceiling(sgemm, reps);
  return 0;
}
