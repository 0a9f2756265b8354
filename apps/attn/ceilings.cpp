#include "ceilings.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#if defined(ATTN_HAVE_CBLAS)
#include <cblas.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace attn::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Independent accumulators: an FMA has ~4 cycles of latency and 2 issue ports, so at least 8
// chains must be in flight to keep both ports busy; 12 leaves margin.
constexpr int kChains = 12;
// acc = acc * a + b converges to b / (1 - a) and never overflows or turns subnormal.
constexpr float kMul = 0.999999f, kAdd = 1e-6f;

/// Runs `iters` rounds of kChains FMAs per lane; returns a value so the loop is not removed.
using FmaLoop = float (*)(long iters);

float fma_scalar(long iters) {
  float acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = float(c);
  for (long i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * kMul + kAdd;
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) float fma_avx2(long iters) {
  __m256 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(float(c));
  const __m256 a = _mm256_set1_ps(kMul), b = _mm256_set1_ps(kAdd);
  for (long i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  __m256 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) float fma_avx512(long iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(float(c));
  const __m512 a = _mm512_set1_ps(kMul), b = _mm512_set1_ps(kAdd);
  for (long i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  for (int c = 1; c < kChains; ++c) acc[0] = _mm512_add_ps(acc[0], acc[c]);
  return _mm512_cvtss_f32(acc[0]);
}
#endif

struct Isa {
  const char* name;
  FmaLoop loop;
  int lanes;
};

Isa best_isa() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return {"avx512", fma_avx512, 16};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {"avx2", fma_avx2, 8};
#endif
  return {"scalar", fma_scalar, 1};
}

/// Sums floats with kChains independent accumulators, so the loop is bound by loads, not by
/// the latency of one chain of adds; returns the sum so the reads are not removed.
float sum_floats_scalar(const float* p, std::size_t n) {
  float acc[kChains] = {};
  std::size_t i = 0;
  for (; i + kChains <= n; i += kChains)
    for (int c = 0; c < kChains; ++c) acc[c] += p[i + std::size_t(c)];
  for (; i < n; ++i) acc[0] += p[i];
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

#if defined(__x86_64__)
// The scalar loop reads ~6 bytes per cycle even from L2 (the build has no -march): too slow to
// stand for what a vectorised kernel can pull from DRAM. Four 32-byte loads in flight per step.
__attribute__((target("avx2"))) float sum_floats_avx2(const float* p, std::size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = sum_floats_scalar(p + i, n - i);
  for (float l : lanes) s += l;
  return s;
}
#endif

float sum_floats(const float* p, std::size_t n) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return sum_floats_avx2(p, n);
#endif
  return sum_floats_scalar(p, n);
}

/// Median seconds of 5 passes in which each of `threads` threads runs pass(t) once, started
/// together (one warm-up pass first: it faults the pages in).
double median_pass_seconds(int threads, const std::function<void(int)>& pass) {
  std::vector<double> times;
  for (int r = 0; r < 6; ++r) {
    std::vector<std::thread> pool;
    const auto t0 = Clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back(pass, t);
    for (auto& th : pool) th.join();
    if (r > 0) times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

double stream_read_gbytes(int threads, std::size_t bytes) {
  const std::size_t n = bytes / sizeof(float), share = n / std::size_t(threads);
  std::vector<float> buf(n, 1.0f);
  std::vector<float> sums(std::size_t(threads), 0.0f);
  const double s = median_pass_seconds(threads, [&](int t) {
    sums[std::size_t(t)] = sum_floats(buf.data() + std::size_t(t) * share, share);
  });
  volatile float sink = sums[0];
  (void)sink;
  return double(share * std::size_t(threads) * sizeof(float)) / s * 1e-9;
}

double memcpy_gbytes(int threads, std::size_t bytes) {
  const std::size_t share = bytes / std::size_t(threads);
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const double s = median_pass_seconds(threads, [&](int t) {
    std::memcpy(dst.data() + std::size_t(t) * share, src.data() + std::size_t(t) * share, share);
  });
  return 2.0 * double(share * std::size_t(threads)) / s * 1e-9;
}

const char* fma_peak_isa() { return best_isa().name; }

double fma_peak_gflops(int threads, double seconds) {
  const Isa isa = best_isa();
  // Calibrate on one thread, then give every thread the iterations that fill `seconds`.
  long iters = 1 << 16;
  auto t0 = Clock::now();
  volatile float sink = isa.loop(iters);
  const double probe = std::max(seconds_since(t0), 1e-6);
  iters = std::max(1L, long(double(iters) * seconds / probe));

  std::vector<std::thread> pool;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<float> results(std::size_t(threads), 0.0f);
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      results[std::size_t(t)] = isa.loop(iters);
    });
  while (ready.load() < threads) std::this_thread::yield();
  t0 = Clock::now();
  go.store(true);
  for (auto& th : pool) th.join();
  const double elapsed = seconds_since(t0);
  sink = results[0];
  (void)sink;
  return 2.0 * kChains * isa.lanes * double(iters) * threads / elapsed * 1e-9;
}

double sgemm_gflops(int n, int threads) {
#if defined(ATTN_HAVE_CBLAS)
  openblas_set_num_threads(threads);
  std::vector<float> a(std::size_t(n) * n, 0.5f), b(std::size_t(n) * n, 0.25f), c(std::size_t(n) * n, 0.0f);
  const auto gemm = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  gemm();  // warm-up: OpenBLAS starts its threads and touches its buffers
  std::vector<double> times;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    gemm();
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  return 2.0 * double(n) * n * n / times[times.size() / 2] * 1e-9;
#else
  (void)n;
  (void)threads;
  return 0.0;
#endif
}

}  // namespace attn::cli
