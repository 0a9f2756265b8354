// Host-side checks of the CUDA launch plan that need no GPU (only a build with the backend).
#if defined(ATTN_WITH_CUDA)
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <tuple>

#include "cuda/bwd_params.hpp"
#include "cuda/fwd_params.hpp"
#include "cuda/tma_map.hpp"

namespace attn::cuda {
namespace {

// Every (m_tile, split, slot, batch) is done by exactly one CTA, whatever the grouping.
TEST(CudaPlan, CtaWorkIsABijection) {
  for (int m_tiles : {1, 3, 8})
    for (int n_splits : {1, 2, 5})
      for (int slots : {1, 3, 4})
        for (int batch : {1, 2, 7})
          for (int ppg : {1, 2, 5, 100}) {
            FwdParams f;
            f.m_tiles = m_tiles;
            f.n_splits = n_splits;
            f.slots = slots;
            f.p.batch = batch;
            f.pairs_per_group = ppg < slots * batch ? ppg : slots * batch;
            std::set<std::tuple<int, int, int, int>> seen;
            const int ctas = m_tiles * n_splits * slots * batch;
            for (int i = 0; i < ctas; ++i) {
              const CtaWork w = cta_work(f, i);
              ASSERT_TRUE(w.m_tile >= 0 && w.m_tile < m_tiles && w.split >= 0 && w.split < n_splits && w.slot >= 0 &&
                          w.slot < slots && w.batch >= 0 && w.batch < batch)
                  << "cta " << i;
              seen.insert({w.m_tile, w.split, w.slot, w.batch});
            }
            EXPECT_EQ(int(seen.size()), ctas) << m_tiles << " " << n_splits << " " << slots << " " << batch << " " << ppg;
          }
}

// Within a group the last m-tile (the most keys under a causal mask) launches first.
TEST(CudaPlan, HeavyTilesLaunchFirst) {
  FwdParams f;
  f.m_tiles = 4;
  f.slots = 2;
  f.p.batch = 3;
  f.pairs_per_group = 6;
  for (int i = 0; i < 6; ++i) EXPECT_EQ(cta_work(f, i).m_tile, 3);
  EXPECT_EQ(cta_work(f, 6 * 4 - 1).m_tile, 0);
}

// The Hopper forward takes TMA only for rows a tensor map can address; everything else must
// come back false (the producer then uses cp.async), before any driver call, GPU or not.
TEST(CudaPlan, TmaMapsOnlyForPaddedRowsOn16ByteStrides) {
  alignas(16) static std::uint16_t storage[64];
  detail::TokenLayout padded;  // (B 2, S 256, H 4, D 128)
  padded.head_stride = 128;
  padded.token_stride = 4 * 128;
  padded.batch_stride = 256 * 4 * 128;
  CUtensorMap map{};
  auto encode = [&](const detail::TokenLayout& l, const void* base, DType dtype = DType::bf16, int head_dim = 128) {
    return encode_padded_rows_map(map, base, l, dtype, 2, 256, 4, head_dim, 128);
  };
  const std::int32_t cu_seqlens[3] = {0, 100, 256};
  detail::TokenLayout packed = padded;
  packed.cu_seqlens = cu_seqlens;
  EXPECT_FALSE(encode(packed, storage));
  const std::int32_t table[2] = {0, 1};
  detail::TokenLayout paged = padded;
  paged.block_table = table;
  paged.page_size = 16;
  EXPECT_FALSE(encode(paged, storage));
  detail::TokenLayout odd = padded;
  odd.token_stride = 4 * 128 + 4;  // 8 bytes past a multiple of 16
  EXPECT_FALSE(encode(odd, storage));
  EXPECT_FALSE(encode(padded, storage + 1));  // base 2 bytes off
  EXPECT_FALSE(encode(padded, storage, DType::f32));
  EXPECT_FALSE(encode(padded, storage, DType::bf16, 96));  // not whole 64-element boxes
}

// The Hopper backward's tiled dq_accum: every (query row, column) of a 64 x 128 tile has its own
// slot, each warpgroup's 64 columns fill one contiguous half (its bulk reduction), and the
// column pairs that bwd_prep.cu reads as float2 are adjacent.
TEST(CudaPlan, TiledDqOffsetsFillTheTileOnce) {
  std::set<int> seen;
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < 128; ++c) {
      const int at = dq_tiled_offset(r, c);
      ASSERT_GE(at, (c / 64) * 4096);
      ASSERT_LT(at, (c / 64 + 1) * 4096);
      EXPECT_TRUE(seen.insert(at).second) << "row " << r << " column " << c;
      if (c % 2 == 1) {
        EXPECT_EQ(at, dq_tiled_offset(r, c - 1) + 1);
      }
    }
  EXPECT_EQ(seen.size(), 64u * 128u);
}

}  // namespace
}  // namespace attn::cuda
#endif
