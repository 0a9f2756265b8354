// Forward kernel for f16, head_dim 192, head_dim_v 192: one file per variant so builds run in parallel.
#include "cuda/sm80/flash_fwd.cuh"

ATTN_INSTANTIATE_FLASH_FWD(f16, __half, 192, 192)
