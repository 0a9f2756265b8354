// MLA absorbed decode for bf16: one file per dtype so builds run in parallel.
#include "cuda/mla/mla_decode.cuh"

ATTN_INSTANTIATE_MLA_DECODE(bf16, __nv_bfloat16)
