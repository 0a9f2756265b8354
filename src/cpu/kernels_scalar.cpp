// The CPU kernels compiled for no particular instruction set (runs on any x86-64).
//
// Each kernels_<isa>.cpp compiles the same kernel headers inside its own namespace
// attn::cpu::<isa> (ATTN_CPU_ISA), with that ISA's Vec, so the three instantiations are
// distinct symbols and the linker never merges code built for different instruction sets.
// Kernel headers therefore avoid non-template inline code from elsewhere that does real work
// (std containers, algorithms): such code would be emitted once per ISA and merged.
#include "cpu/simd/vec_scalar.hpp"

#define ATTN_CPU_ISA scalar
#include "cpu/kernels.inc"
