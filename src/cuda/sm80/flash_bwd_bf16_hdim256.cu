// Backward kernel for bf16, head_dim 256, head_dim_v 256: one file per variant so builds run in parallel.
#include "cuda/sm80/flash_bwd.cuh"

ATTN_INSTANTIATE_FLASH_BWD(bf16, __nv_bfloat16, 256, 256)
