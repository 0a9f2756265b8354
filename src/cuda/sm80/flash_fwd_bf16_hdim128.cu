// Forward kernel for bf16, head_dim 128, head_dim_v 128: one file per variant so builds run in parallel.
#include "cuda/sm80/flash_fwd.cuh"

ATTN_INSTANTIATE_FLASH_FWD(bf16, __nv_bfloat16, 128, 128)
