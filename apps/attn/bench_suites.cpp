#include "bench.hpp"

namespace attn::cli {

std::string BenchCase::label() const { return group + " " + name + " " + shape + " " + dtype_name(dtype) + " " + pass; }

// One line per suite. A CUDA suite (events, in-process) goes here with Backend::cuda.
std::vector<BenchSuite> bench_suites() {
  return {
      cpu_attention_suite(Backend::cpu),
      cpu_layers_suite(),
      cpu_attention_suite(Backend::reference),
  };
}

}  // namespace attn::cli
