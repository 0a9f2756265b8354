// MLA absorbed decode for f16: one file per dtype so builds run in parallel.
#include "cuda/mla/mla_decode.cuh"

ATTN_INSTANTIATE_MLA_DECODE(f16, __half)
