// Standalone driver for the CUDA backward cases (backward_check.cpp) without GoogleTest: for GPU
// machines that lack it and for compute-sanitizer runs. Prints one PASS / FAIL / ERROR line per
// case and exits non-zero when any case did not pass. Deterministic cases also run twice and
// compare bitwise.
//
//   attn_gpu_selftest_backward [--small] [--filter SUB1,SUB2,...] [--seed N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "attn/device.hpp"
#include "cuda/backward_check.hpp"

int main(int argc, char** argv) {
  bool small = false;
  std::vector<std::string> filters;
  std::uint64_t seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--small") == 0) {
      small = true;
    } else if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
      const std::string list = argv[++i];
      for (std::size_t pos = 0; pos <= list.size();) {
        const std::size_t comma = std::min(list.find(',', pos), list.size());
        if (comma > pos) filters.push_back(list.substr(pos, comma - pos));
        pos = comma + 1;
      }
    } else if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s [--small] [--filter SUB1,SUB2,...] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  if (!attn::cuda_available()) {
    std::printf("SKIP no CUDA device visible\n");
    return 0;
  }
  int passed = 0, failed = 0;
  std::uint64_t case_seed = seed;
  for (const auto& c : attn::test::cuda::backward_cases()) {
    ++case_seed;
    if (small && !c.small) continue;
    const bool wanted = filters.empty() || std::any_of(filters.begin(), filters.end(), [&](const std::string& f) {
                          return c.name.find(f) != std::string::npos;
                        });
    if (!wanted) continue;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      const auto r = attn::test::cuda::check_backward(c, case_seed, c.deterministic);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%s %-40s %7.0f ms  seed %llu  %s\n", r.passed ? "PASS" : "FAIL", c.name.c_str(), ms,
                  static_cast<unsigned long long>(case_seed), r.detail.c_str());
      (r.passed ? passed : failed)++;
    } catch (const std::exception& e) {
      std::printf("ERROR %-39s seed %llu  %s\n", c.name.c_str(), static_cast<unsigned long long>(case_seed), e.what());
      ++failed;
    }
    std::fflush(stdout);
  }
  std::printf("selftest_backward: %d passed, %d failed (base seed %llu)\n", passed, failed,
              static_cast<unsigned long long>(seed));
  return failed == 0 ? 0 : 1;
}
