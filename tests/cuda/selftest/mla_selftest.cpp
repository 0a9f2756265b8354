// Standalone driver for the CUDA MLA decode cases (mla_check.cpp; scripts/gpu_check_mla builds
// it); options and output in selftest_driver.hpp.
#include "cuda/mla_check.hpp"
#include "cuda/selftest/selftest_driver.hpp"

int main(int argc, char** argv) {
  using namespace attn::test::cuda;
  return selftest_main(argc, argv, "mla selftest", mla_cases(),
                       [](const MlaCase& c, std::uint64_t seed) { return check_mla(c, seed); });
}
