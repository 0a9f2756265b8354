// Standalone driver for the CUDA forward cases (forward_check.cpp); options and output in
// selftest_driver.hpp.
#include "cuda/forward_check.hpp"
#include "cuda/selftest/selftest_driver.hpp"

int main(int argc, char** argv) {
  using namespace attn::test::cuda;
  return selftest_main(argc, argv, "selftest", forward_cases(),
                       [](const FwdCase& c, std::uint64_t seed) { return check_forward(c, seed); });
}
