// Forward kernel for f16, head_dim 256, head_dim_v 256: one file per variant so builds run in parallel.
#include "cuda/sm80/flash_fwd.cuh"

ATTN_INSTANTIATE_FLASH_FWD(f16, __half, 256, 256)
