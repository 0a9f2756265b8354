// Standalone driver for the CUDA backward cases (backward_check.cpp); options and output in
// selftest_driver.hpp. Deterministic cases also run twice and compare bitwise.
#include "cuda/backward_check.hpp"
#include "cuda/selftest/selftest_driver.hpp"

int main(int argc, char** argv) {
  using namespace attn::test::cuda;
  return selftest_main(argc, argv, "selftest_backward", backward_cases(), [](const BwdCase& c, std::uint64_t seed) {
    return check_backward(c, seed, c.deterministic);
  });
}
