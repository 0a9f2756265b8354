// Times the layers' projection y = x W^T + b (src/modules/matmul.hpp), the product every
// Linear, attention projection and MLA up-projection goes through.
//
//   modules_matmul_timing [--m ROWS] [--n OUT] [--k IN] [--reps N] [--sgemm N]
//
// Prints best and median wall seconds, GFLOP/s (2 * M * N * K) and the best CPU seconds, and
// with --sgemm N an OpenBLAS N^3 SGEMM on the same threads as a ceiling.
// Threads: ATTN_NUM_THREADS (the CPU backend's pool).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "attn/tensor.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"
#include "modules/matmul.hpp"
#include "timing_common.hpp"

int main(int argc, char** argv) {
  int M = 512, N = 2048, K = 2048, reps = 9, sgemm = 0;
  attn::bench::parse_flags(argc, argv, {{"--m", &M}, {"--n", &N}, {"--k", &K}, {"--reps", &reps}, {"--sgemm", &sgemm}});
  attn::Tensor x({M, K}, attn::DType::f32), w({N, K}, attn::DType::f32), b({N}, attn::DType::f32);
  attn::Tensor y({M, N}, attn::DType::f32);
  attn::bench::fill_random(x, 1);
  attn::bench::fill_random(w, 2);
  attn::bench::fill_random(b, 3);
  const attn::bench::Stats s = attn::bench::time_runs(reps, [&] {
    attn::modules::detail::matmul_abt(x.as<float>(), w.as<float>(), b.as<float>(), y.as<float>(), M, K, N);
  });
  std::printf("matmul_abt isa=%s threads=%d M=%d N=%d K=%d: best %.4f s, median %.4f s, %.1f GFLOP/s (median), "
              "cpu %.4f s\n",
              attn::cpu::isa_name(attn::cpu::active_isa()), attn::cpu::num_threads(), M, N, K, s.best, s.median,
              2.0 * M * N * double(K) / s.median * 1e-9, s.cpu_best);
  attn::bench::print_sgemm_ceiling(sgemm, reps);
  return 0;
}
