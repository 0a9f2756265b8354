// Host-side checks of the CUDA launch plan that need no GPU (only a build with the backend).
#if defined(ATTN_WITH_CUDA)
#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "cuda/fwd_params.hpp"

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

}  // namespace
}  // namespace attn::cuda
#endif
