// Standalone driver for the CUDA MLA decode cases (mla_check.cpp) without GoogleTest, for GPU
// machines that lack it and for compute-sanitizer runs (scripts/gpu_check_mla builds it).
// Prints one PASS / FAIL / ERROR line per case; exits non-zero when any case did not pass.
//
//   attn_mla_selftest [--small] [--filter SUBSTRING] [--seed N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>

#include "attn/device.hpp"
#include "cuda/mla_check.hpp"

int main(int argc, char** argv) {
  bool small = false;
  std::string filter;
  std::uint64_t seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--small") == 0) {
      small = true;
    } else if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
      filter = argv[++i];
    } else if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s [--small] [--filter SUBSTRING] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  if (!attn::cuda_available()) {
    std::printf("SKIP no CUDA device visible\n");
    return 0;
  }
  int passed = 0, failed = 0;
  std::uint64_t case_seed = seed;
  for (const auto& c : attn::test::cuda::mla_cases()) {
    ++case_seed;
    if ((small && !c.small) || c.name.find(filter) == std::string::npos) continue;
    // Named before it runs: a case that hangs or crashes is the last one printed.
    std::printf("RUN  %s\n", c.name.c_str());
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      const auto r = attn::test::cuda::check_mla(c, case_seed);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%s %-36s %7.0f ms  seed %llu  %s\n", r.passed ? "PASS" : "FAIL", c.name.c_str(), ms,
                  static_cast<unsigned long long>(case_seed), r.detail.c_str());
      (r.passed ? passed : failed)++;
    } catch (const std::exception& e) {
      std::printf("ERROR %-35s seed %llu  %s\n", c.name.c_str(), static_cast<unsigned long long>(case_seed), e.what());
      ++failed;
    }
    std::fflush(stdout);
  }
  std::printf("mla selftest: %d passed, %d failed (base seed %llu)\n", passed, failed,
              static_cast<unsigned long long>(seed));
  return failed == 0 ? 0 : 1;
}
