// Which SIMD instruction set the CPU kernels run with, detected once at start-up.
//
// Every kernel is compiled three times (kernels_scalar.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp); the backend calls the variant of active_isa(). The environment
// variable ATTN_CPU_ISA=scalar|avx2|avx512 picks one at start-up (tests and benches compare
// them); set_isa() does the same at run time.
#pragma once

#include <vector>

namespace attn::cpu {

enum class Isa { scalar, avx2, avx512 };

/// "scalar", "avx2", "avx512".
const char* isa_name(Isa isa);
/// Parses an isa_name; throws attn::Error naming `what` otherwise.
Isa parse_isa(const char* text, const char* what = "isa");

/// avx2: AVX2 + FMA + F16C. avx512: AVX-512 F/BW/VL/DQ on top of avx2.
bool cpu_supports(Isa isa);
/// AVX-512 BF16 (vcvtne2ps2bf16, vdpbf16ps); informational, no kernel requires it yet.
bool cpu_has_avx512bf16();
/// The instruction sets this CPU can run, scalar first.
std::vector<Isa> supported_isas();

/// The best supported set, or ATTN_CPU_ISA when set, or the last set_isa().
Isa active_isa();
/// Throws attn::Error when the CPU lacks `isa`.
void set_isa(Isa isa);

}  // namespace attn::cpu
