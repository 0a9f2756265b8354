// The standalone drivers' shared main (gpu_selftest, gpu_selftest_backward, mla_selftest): the
// CUDA checks without GoogleTest, for GPU machines that lack it and for compute-sanitizer runs.
//
//   DRIVER [--small] [--filter SUB1,SUB2,...] [--seed N]
//     --small   only the cases marked small (sanitizer runs)
//     --filter  only cases whose name contains one of the substrings
//
// Each case is named (RUN) before it runs, so a case that hangs or crashes is the last one
// printed, then gets one PASS / FAIL / ERROR line; the last line counts them. Exits non-zero
// when any case did not pass.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "attn/device.hpp"

namespace attn::test::cuda {

/// `check(c, seed)` returns a result with `passed` and `detail`; `label` starts the last line.
template <class Case, class Check>
int selftest_main(int argc, char** argv, const char* label, const std::vector<Case>& cases, Check&& check) {
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
  if (!cuda_available()) {
    std::printf("SKIP no CUDA device visible\n");
    return 0;
  }
  int passed = 0, failed = 0;
  std::uint64_t case_seed = seed;
  for (const Case& c : cases) {
    ++case_seed;
    if (small && !c.small) continue;
    const bool wanted = filters.empty() || std::any_of(filters.begin(), filters.end(), [&](const std::string& f) {
                          return c.name.find(f) != std::string::npos;
                        });
    if (!wanted) continue;
    std::printf("RUN  %s\n", c.name.c_str());
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      const auto r = check(c, case_seed);
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
  std::printf("%s: %d passed, %d failed (base seed %llu)\n", label, passed, failed,
              static_cast<unsigned long long>(seed));
  return failed == 0 ? 0 : 1;
}

}  // namespace attn::test::cuda
