#include "cuda/tma_map.hpp"

#include <cuda_runtime_api.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace attn::cuda {
namespace {

/// The driver's cuTensorMapEncodeTiled, looked up once through the runtime so that the library
/// needs no link against libcuda; nullptr when the driver does not have it.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();  // a missing symbol is not an error for the next call to report
      return PFN_cuTensorMapEncodeTiled_v12000{nullptr};
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encoder;
}

}  // namespace

bool encode_padded_rows_map(CUtensorMap& map, const void* base, const detail::TokenLayout& layout, DType dtype,
                          int batch, int seqlen, int heads, int head_dim, int box_rows) {
  if (layout.cu_seqlens != nullptr || layout.block_table != nullptr) return false;
  if (dtype != DType::f16 && dtype != DType::bf16) return false;
  if (head_dim % 64 != 0 || seqlen <= 0 || box_rows <= 0 || box_rows > 256) return false;
  constexpr std::int64_t kElem = 2;
  auto aligned = [](std::int64_t bytes) { return bytes > 0 && bytes % 16 == 0 && bytes < (std::int64_t(1) << 40); };
  if (reinterpret_cast<std::uintptr_t>(base) % 16 != 0) return false;
  // A dimension of extent 1 is never stepped along, but its stride must still be valid.
  const std::int64_t head_bytes = heads > 1 ? layout.head_stride * kElem : 16;
  const std::int64_t batch_bytes = batch > 1 ? layout.batch_stride * kElem : 16;
  const std::int64_t token_bytes = seqlen > 1 ? layout.token_stride * kElem : 16;
  if (!aligned(token_bytes) || !aligned(head_bytes) || !aligned(batch_bytes)) return false;
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return false;

  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(seqlen), cuuint64_t(heads), cuuint64_t(batch)};
  const cuuint64_t strides[3] = {cuuint64_t(token_bytes), cuuint64_t(head_bytes), cuuint64_t(batch_bytes)};
  const cuuint32_t box[4] = {64, cuuint32_t(box_rows), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode(&map, dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                            4, const_cast<void*>(base), dims, strides, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

bool tma_allowed() {
  const char* env = std::getenv("ATTN_CUDA_TMA");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

}  // namespace attn::cuda
