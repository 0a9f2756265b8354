// Hopper backward kernel for f16, head_dim 64 (head_dim_v 64). Its body compiles in the
// sm_90a pass only.
#include "cuda/sm90/flash_bwd.cuh"

ATTN_INSTANTIATE_FLASH_BWD_SM90(f16, __half, 64)
