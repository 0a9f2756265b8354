// Hopper forward kernel for bf16, head_dim 256 (head_dim_v 256). Its body compiles in the
// sm_90a pass only.
#include "cuda/sm90/flash_fwd.cuh"

ATTN_INSTANTIATE_FLASH_FWD_SM90(bf16, __nv_bfloat16, 256)
