// attention_with_kvcache's append on the device: each (sequence, new token, kv head) row of
// k_new / v_new is copied to its slot in the cache, found through the same TokenLayout the
// forward reads the cache with, so contiguous caches and page pools of any page size share
// one kernel. The copy is memory-bound and tiny next to the attention that follows (B * Snew
// rows); consecutive threads take consecutive words of a row so both sides coalesce.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/check.hpp"
#include "cuda/kvcache_append.hpp"

namespace attn::cuda {
namespace {

constexpr int kAppendThreads = 256;
// A grid-stride loop past this many blocks: enough to fill any GPU, and far under the grid limit.
constexpr std::int64_t kMaxAppendBlocks = 1 << 16;

/// Word `Word` (1 to 16 bytes) i of the flattened (b, t, h, word) rows of one tensor.
template <class Word>
__global__ void __launch_bounds__(kAppendThreads)
    kvcache_append_kernel(const KvAppendTensor t, const std::int32_t* __restrict__ cache_seqlens, int seqlen_new,
                          int heads_kv, int words_per_row, std::int64_t words, int element_size) {
  const std::int64_t step = std::int64_t(gridDim.x) * kAppendThreads;
  for (std::int64_t i = std::int64_t(blockIdx.x) * kAppendThreads + threadIdx.x; i < words; i += step) {
    const int w = int(i % words_per_row);
    const std::int64_t row = i / words_per_row;
    const int h = int(row % heads_kv);
    const int tok = int(row / heads_kv % seqlen_new);
    const int b = int(row / heads_kv / seqlen_new);
    const std::int64_t pos = std::int64_t(cache_seqlens[b]) + tok;
    const auto* src = reinterpret_cast<const Word*>(static_cast<const char*>(t.src) +
                                                    t.src_layout.offset(b, tok, h) * element_size);
    auto* dst = reinterpret_cast<Word*>(static_cast<char*>(t.cache) + t.cache_layout.offset(b, pos, h) * element_size);
    dst[w] = src[w];
  }
}

__global__ void kvcache_seqlens_kernel(const std::int32_t* __restrict__ cache_seqlens, int seqlen_new, int batch,
                                       std::int32_t* __restrict__ seqlens_k) {
  const int b = int(blockIdx.x) * kAppendThreads + int(threadIdx.x);
  if (b < batch) seqlens_k[b] = cache_seqlens[b] + seqlen_new;
}

/// The widest word (16 bytes at most) that divides every address the kernel forms: both
/// base pointers, every stride in bytes and the row length in bytes.
std::size_t word_bytes(const KvAppendTensor& t, std::size_t element_size) {
  std::uint64_t bits = reinterpret_cast<std::uintptr_t>(t.cache) | reinterpret_cast<std::uintptr_t>(t.src) |
                       std::uint64_t(t.dim) * element_size | 16u;
  for (const detail::TokenLayout* l : {&t.cache_layout, &t.src_layout})
    for (std::int64_t s : {l->batch_stride, l->token_stride, l->head_stride, l->page_stride})
      bits |= std::uint64_t(s) * element_size;
  return std::size_t(bits & (~bits + 1));  // lowest set bit
}

template <class Word>
void launch_tensor(const KvAppendTensor& t, const KvAppendParams& p) {
  const int words_per_row = int(std::size_t(t.dim) * p.element_size / sizeof(Word));
  const std::int64_t words = std::int64_t(p.batch) * p.seqlen_new * p.heads_kv * words_per_row;
  if (words == 0) return;
  const auto blocks = unsigned(std::min(kMaxAppendBlocks, (words + kAppendThreads - 1) / kAppendThreads));
  kvcache_append_kernel<Word><<<blocks, kAppendThreads>>>(t, p.cache_seqlens, p.seqlen_new, p.heads_kv,
                                                          words_per_row, words, int(p.element_size));
  ATTN_CUDA_CHECK_LAUNCH("kvcache_append_kernel");
}

void append_tensor(const KvAppendTensor& t, const KvAppendParams& p) {
  switch (word_bytes(t, p.element_size)) {
    case 16: return launch_tensor<uint4>(t, p);
    case 8: return launch_tensor<uint2>(t, p);
    case 4: return launch_tensor<std::uint32_t>(t, p);
    case 2: return launch_tensor<std::uint16_t>(t, p);
    default: return launch_tensor<std::uint8_t>(t, p);
  }
}

}  // namespace

void launch_kvcache_append(const KvAppendParams& params) {
  if (params.batch == 0 || params.seqlen_new == 0) return;
  append_tensor(params.k, params);
  append_tensor(params.v, params);
}

void launch_kvcache_seqlens(const std::int32_t* cache_seqlens, int seqlen_new, int batch, std::int32_t* seqlens_k) {
  if (batch == 0) return;
  const unsigned blocks = unsigned((batch + kAppendThreads - 1) / kAppendThreads);
  kvcache_seqlens_kernel<<<blocks, kAppendThreads>>>(cache_seqlens, seqlen_new, batch, seqlens_k);
  ATTN_CUDA_CHECK_LAUNCH("kvcache_seqlens_kernel");
}

}  // namespace attn::cuda
