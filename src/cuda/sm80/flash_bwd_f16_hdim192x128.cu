// Backward kernel for f16, head_dim 192, head_dim_v 128: one file per variant so builds run in parallel.
#include "cuda/sm80/flash_bwd.cuh"

ATTN_INSTANTIATE_FLASH_BWD(f16, __half, 192, 128)
