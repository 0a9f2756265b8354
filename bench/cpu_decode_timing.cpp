// A timing harness for CPU decode over a KV cache: paged against contiguous against the memory
// ceilings, alternated in one process so that a loaded, shared machine moves them together.
//
//   cpu_decode_timing [--b B] [--ctx L] [--hq HQ] [--hkv HKV] [--d D] [--page P] [--dtype f16]
//                     [--rounds N] [--threads "1,2"] [--variants "x,y"] [--no-ceilings]
//                     [--huge-pages] [--ordered-pages] [--floor]
//
// Defaults are `attn bench --filter decode`'s row: B16, context 4096, 32 / 8 heads, D 128, f16,
// pages of 16 handed out in shuffled order. Each round times, for every thread count (and every
// value of ATTN_DECODE_VARIANT given by --variants, for A/B experiments in the kernels), one
// paged step, one contiguous step, a memcpy and a read-only pass over 512 MiB; the medians over
// the rounds are printed. GB/s counts the K / V bytes read once; memcpy counts read + written.
// --ordered-pages adds a row for the same paged cache read through a block table whose pages
// are in pool order (sequence b's pages adjacent), separating the cost of scattered pages from
// the cost of the paged code path. --floor adds the passes of bench/decode_floor.hpp over the
// same paged cache (G 4, D 128, f16 only): only the unavoidable conversions and FMAs, in the
// kernel's structure (with and without software prefetch) and with V read like K; and two reads
// without arithmetic, in the kernel's order of lines and in address order, the last one a
// ceiling that any kernel reading this cache meets on the machine.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attn/attention_kvcache.hpp"
#include "cpu/thread_pool.hpp"
#include "decode_floor.hpp"
#include "timing_common.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

/// The rows of --floor (bench/decode_floor.hpp), over the same paged cache as the kernel's row.
struct FloorRow {
  const char* name;
  const char* what;
  attn::bench::FloorPass pass;
  bool prefetch;
};
constexpr FloorRow kFloorRows[] = {
    {"min-arith", "unavoidable arithmetic only, kernel's prefetch", attn::bench::FloorPass::arithmetic, true},
    {"min-hw", "unavoidable arithmetic only, hardware prefetch", attn::bench::FloorPass::arithmetic, false},
    {"read-kern", "no arithmetic, the kernel's order + prefetch", attn::bench::FloorPass::kernel_order, true},
    {"read-addr", "no arithmetic, address order, hardware only", attn::bench::FloorPass::address_order, false},
    {"arith-addr", "the same arithmetic in address order, hardware", attn::bench::FloorPass::address_arithmetic, false},
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) float sum_avx2(const float* p, std::size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (std::size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return l[0] + l[7];
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int B = 16, L = 4096, Hq = 32, Hkv = 8, D = 128, page = 16, rounds = 5;
  std::string dtype = "f16", threads_list = "", variants = "";
  bool no_ceilings = false, huge_pages = false, ordered_pages = false, with_floor = false;
  attn::bench::parse_flags(argc, argv,
                           {{"--b", &B}, {"--ctx", &L}, {"--hq", &Hq}, {"--hkv", &Hkv}, {"--d", &D}, {"--page", &page},
                            {"--dtype", &dtype}, {"--rounds", &rounds}, {"--threads", &threads_list},
                            {"--variants", &variants}, {"--no-ceilings", &no_ceilings}, {"--huge-pages", &huge_pages},
                            {"--ordered-pages", &ordered_pages}, {"--floor", &with_floor}});
  const attn::DType dt = attn::parse_dtype(dtype);
  std::vector<int> threads;
  for (const std::string& t : split(threads_list)) threads.push_back(std::atoi(t.c_str()));
  if (threads.empty()) threads.push_back(attn::cpu::num_threads());
  std::vector<std::string> vars = split(variants);
  if (vars.empty()) vars.push_back("");

  // The caches, as attn bench builds them.
  const std::size_t stream_bytes = std::size_t(512) << 20;
  const std::int64_t per_seq = L / page, pages = std::int64_t(B) * per_seq;
  attn::Tensor q({B, 1, Hq, D}, dt), out({B, 1, Hq, D}, dt), lens({B}, attn::DType::i32);
  attn::Tensor pk({pages, page, Hkv, D}, dt), pv({pages, page, Hkv, D}, dt), table({B, per_seq}, attn::DType::i32);
  attn::Tensor ck({B, L, Hkv, D}, dt), cv({B, L, Hkv, D}, dt);
  attn::Tensor src({no_ceilings ? 0 : std::int64_t(stream_bytes)}, attn::DType::u8);
  attn::Tensor dst({no_ceilings ? 0 : std::int64_t(stream_bytes)}, attn::DType::u8);
  attn::Tensor floats({no_ceilings ? 0 : std::int64_t(stream_bytes / sizeof(float))}, attn::DType::f32);
  if (huge_pages)
    for (const attn::Tensor* t : {&pk, &pv, &ck, &cv, &src, &dst, &floats}) attn::bench::advise_huge_pages(*t);
  std::memset(src.data(), 1, src.nbytes());
  std::memset(dst.data(), 0, dst.nbytes());
  std::fill_n(floats.as<float>(), floats.numel(), 1.0f);
  attn::bench::fill_random(q, 1);
  for (attn::Tensor* t : {&pk, &ck}) attn::bench::fill_random(*t, 2);
  for (attn::Tensor* t : {&pv, &cv}) attn::bench::fill_random(*t, 3);
  std::fill_n(lens.as<std::int32_t>(), B, L);
  std::vector<std::int32_t> order(static_cast<std::size_t>(pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(4));
  std::copy(order.begin(), order.end(), table.as<std::int32_t>());
  attn::Tensor ordered_table({B, per_seq}, attn::DType::i32);
  std::iota(ordered_table.as<std::int32_t>(), ordered_table.as<std::int32_t>() + pages, 0);

  attn::KVCacheArgs paged, contiguous, ordered;
  paged.q = contiguous.q = q;
  paged.out = contiguous.out = out;
  paged.cache_seqlens = contiguous.cache_seqlens = lens;
  paged.k_cache = pk;
  paged.v_cache = pv;
  paged.block_table = table;
  contiguous.k_cache = ck;
  contiguous.v_cache = cv;
  ordered = paged;
  ordered.block_table = ordered_table;
  const std::size_t ws_bytes = std::max(attn::attention_with_kvcache_workspace_size(paged, attn::Backend::cpu),
                                        attn::attention_with_kvcache_workspace_size(contiguous, attn::Backend::cpu));
  attn::Tensor ws({std::int64_t(std::max<std::size_t>(ws_bytes, 1))}, attn::DType::u8);

  // --floor's inputs: the paged pools, a (Hkv, 4, D) f32 q, per-thread o and sinks.
#if defined(__x86_64__)
  if (with_floor && (dt != attn::DType::f16 || D != 128 || Hq != 4 * Hkv || L % 32 != 0)) {
    std::fprintf(stderr, "--floor needs f16, D 128, Hq = 4 Hkv and a context that is a multiple of 32\n");
    return 2;
  }
  if (with_floor && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c"))) {
    std::fprintf(stderr, "--floor needs AVX2, FMA and F16C\n");
    return 2;
  }
  const int max_threads = *std::max_element(threads.begin(), threads.end());
  std::vector<float> floor_q(std::size_t(Hkv) * 4 * D, 0.01f), floor_o(std::size_t(max_threads) * Hkv * 4 * D),
      floor_sink(std::size_t(max_threads) * 8);
  attn::bench::DecodeFloorArgs floor_args;
  floor_args.k_pool = static_cast<const std::uint16_t*>(pk.data());
  floor_args.v_pool = static_cast<const std::uint16_t*>(pv.data());
  floor_args.table = table.as<std::int32_t>();
  floor_args.pages_per_seq = int(per_seq), floor_args.page = page, floor_args.heads = Hkv, floor_args.ctx = L;
  floor_args.q = floor_q.data();
#else
  with_floor = false;
#endif

  const double kv_bytes = 2.0 * double(B) * L * Hkv * D * double(attn::dtype_size(dt));

  auto timed = [](auto&& f) {
    const auto t0 = Clock::now();
    f();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  std::map<std::string, std::vector<double>> ms;  // key: "<threads>t <variant> <row>"
  for (int r = 0; r <= rounds; ++r) {             // round 0 warms up and is not kept
    for (int t : threads) {
      attn::cpu::set_num_threads(t);
      const std::string tk = std::to_string(t) + "t ";
      if (!no_ceilings) {
      std::vector<float> sum_store(static_cast<std::size_t>(t));
      float* sums = sum_store.data();
      const double copy_s = timed([&] {
        const std::size_t share = stream_bytes / std::size_t(t);
        attn::cpu::parallel_for(t, t, [&](std::int64_t i, int) {
          std::memcpy(static_cast<char*>(dst.data()) + std::size_t(i) * share, static_cast<const char*>(src.data()) + std::size_t(i) * share, share);
        });
      });
      const double read_s = timed([&] {
        const std::size_t share = std::size_t(floats.numel()) / std::size_t(t);
        attn::cpu::parallel_for(t, t, [&](std::int64_t i, int) {
#if defined(__x86_64__)
          sums[i] = sum_avx2(floats.as<float>() + std::size_t(i) * share, share);
#endif
        });
      });
      if (r > 0) {
        ms[tk + "memcpy"].push_back(2.0 * double(stream_bytes) / copy_s * 1e-9);
        ms[tk + "read"].push_back(double(stream_bytes) / read_s * 1e-9);
      }
      }
#if defined(__x86_64__)
      for (const FloorRow& row : kFloorRows) {
        if (!with_floor) break;
        const double s = timed([&] {
          attn::cpu::parallel_for(B, t, [&](std::int64_t b, int thread) {
            attn::bench::DecodeFloorArgs a = floor_args;
            a.o = floor_o.data() + std::size_t(thread) * Hkv * 4 * D;
            a.sink = floor_sink.data() + std::size_t(thread) * 8;
            attn::bench::decode_floor_sequence(a, int(b), row.pass, row.prefetch);
          });
        });
        if (r > 0) ms[tk + row.name].push_back(1e3 * s);
      }
#endif
      for (const std::string& v : vars) {
        if (!v.empty()) setenv("ATTN_DECODE_VARIANT", v.c_str(), 1);
        for (const char* row : {"paged", "contiguous", "ordered"}) {
          if (row[0] == 'o' && !ordered_pages) continue;
          const attn::KVCacheArgs& a = row[0] == 'p' ? paged : row[0] == 'c' ? contiguous : ordered;
          const double s = timed([&] { attn::attention_with_kvcache(a, {ws.data(), ws_bytes}, attn::Backend::cpu); });
          if (r > 0) ms[tk + (v.empty() ? "" : v + " ") + row].push_back(1e3 * s);
        }
      }
    }
  }
  if (huge_pages) {
    std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (f != nullptr && std::fgets(line, sizeof line, f) != nullptr)
      if (std::strncmp(line, "AnonHugePages", 13) == 0) std::printf("%s", line);
    if (f != nullptr) std::fclose(f);
  }
  std::printf("B%d ctx%d Hq%d Hkv%d D%d %s page %d: %.1f MB of K/V per step, %d rounds (medians)\n", B, L, Hq, Hkv, D,
              dtype.c_str(), page, kv_bytes * 1e-6, rounds);
  for (int t : threads) {
    const std::string tk = std::to_string(t) + "t ";
    const double copy = median(ms[tk + "memcpy"]), read = median(ms[tk + "read"]);
    std::printf("%d thread(s): memcpy %.1f GB/s (read + written), read %.1f GB/s\n", t, copy, read);
    for (const FloorRow& row : kFloorRows) {
      if (!with_floor) break;
      const double f = median(ms[tk + row.name]);
      std::printf("  %-10s %-47s %7.3f ms %5.1f GB/s %5.1f%% of memcpy\n", row.name, row.what, f, kv_bytes / f * 1e-6,
                  100.0 * kv_bytes / f * 1e-6 / copy);
    }
    for (const std::string& v : vars) {
      const std::string vk = tk + (v.empty() ? "" : v + " ");
      const double p = median(ms[vk + "paged"]), c = median(ms[vk + "contiguous"]);
      std::printf("  %-10s paged %7.3f ms %5.1f GB/s %5.1f%% of memcpy | contiguous %7.3f ms %5.1f GB/s | paged/contig "
                  "%.2fx   (paged min %.2f max %.2f)\n",
                  v.empty() ? "-" : v.c_str(), p, kv_bytes / p * 1e-6, 100.0 * kv_bytes / p * 1e-6 / copy, c,
                  kv_bytes / c * 1e-6, c / p, *std::min_element(ms[vk + "paged"].begin(), ms[vk + "paged"].end()),
                  *std::max_element(ms[vk + "paged"].begin(), ms[vk + "paged"].end()));
      if (ordered_pages) {
        const double o = median(ms[vk + "ordered"]);
        std::printf("  %-10s paged, pages in pool order %7.3f ms %5.1f GB/s | its / contiguous %.2fx\n", "", o,
                    kv_bytes / o * 1e-6, c / o);
      }
    }
  }
  return 0;
}
