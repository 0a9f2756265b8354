#include "cpu/isa.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "attn/error.hpp"

namespace attn::cpu {
namespace {

Isa best_supported() {
  if (cpu_supports(Isa::avx512)) return Isa::avx512;
  if (cpu_supports(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

Isa initial_isa() {
  const char* env = std::getenv("ATTN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_supported();
  const Isa wanted = parse_isa(env, "ATTN_CPU_ISA");
  ATTN_CHECK(cpu_supports(wanted), "ATTN_CPU_ISA: this CPU does not support ", isa_name(wanted));
  return wanted;
}

// Relaxed is enough: the value is only read to pick a kernel, never to publish data.
std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{initial_isa()};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

Isa parse_isa(const char* text, const char* what) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512})
    if (std::strcmp(text, isa_name(isa)) == 0) return isa;
  detail::fail(what, ": expected scalar, avx2 or avx512, got '", text, "'");
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return cpu_supports(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

bool cpu_has_avx512bf16() { return cpu_supports(Isa::avx512) && __builtin_cpu_supports("avx512bf16"); }

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512})
    if (cpu_supports(isa)) out.push_back(isa);
  return out;
}

Isa active_isa() { return current().load(std::memory_order_relaxed); }

void set_isa(Isa isa) {
  ATTN_CHECK(cpu_supports(isa), "set_isa: this CPU does not support ", isa_name(isa));
  current().store(isa, std::memory_order_relaxed);
}

}  // namespace attn::cpu
