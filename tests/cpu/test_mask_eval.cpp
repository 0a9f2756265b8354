// MaskEval (the kernels' mask) against the reference's own reading of DESIGN.md, exhaustively
// on small shapes: the element predicate, the key range, and that every `empty` / `full` tile
// claim is exact. Also the group-level wrappers the CPU kernels call (tile_mask.hpp).
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cpu/tile_mask.hpp"
#include "mask_eval.hpp"
#include "reference/reference.hpp"
#include "support/random.hpp"
#include "validate.hpp"

namespace attn {
namespace {

using detail::MaskEval;
using detail::TileKind;

struct Shapes {
  int seqlen_q, seqlen_k;
};

std::vector<Mask> masks_to_check(Tensor& layout_shared, Tensor& layout_per_head, Tensor& globals) {
  std::vector<Mask> out;
  out.push_back(Mask{});
  out.push_back(Mask::causal_mask());
  out.push_back(Mask::window(2, 0));
  out.push_back(Mask::window(1, 3));
  out.push_back(Mask::window(-1, 1));
  Mask dil = Mask::window(3, 1);
  dil.dilation = 1;
  out.push_back(dil);
  Mask strided;
  strided.strided = 3;
  out.push_back(strided);
  Mask fixed;
  fixed.fixed_stride = 4;
  fixed.fixed_summary = 1;
  out.push_back(fixed);
  Mask fixed_full_summary;
  fixed_full_summary.fixed_stride = 3;
  fixed_full_summary.fixed_summary = 3;
  out.push_back(fixed_full_summary);
  for (Tensor* layout : {&layout_shared, &layout_per_head}) {
    Mask m;
    m.block_layout = *layout;
    m.block_q = 3;
    m.block_k = 2;
    out.push_back(m);
    m.causal = true;
    out.push_back(m);
  }
  Mask g = Mask::window(1, 1);
  g.global_tokens = globals;
  out.push_back(g);
  g = Mask::causal_mask();
  g.global_tokens = globals;
  out.push_back(g);
  return out;
}

TEST(CpuMaskEval, AgreesWithTheReferenceAndTileClaimsAreExact) {
  const int heads = 2;
  Tensor shared({5, 7}, DType::u8), per_head({heads, 5, 7}, DType::u8);
  for (Tensor* t : {&shared, &per_head})
    for (std::int64_t i = 0; i < t->numel(); ++i) t->as<std::uint8_t>()[i] = test::rng()() % 2;
  Tensor globals = test::i32({1, 6});
  const std::vector<Mask> masks = masks_to_check(shared, per_head, globals);
  for (std::size_t index = 0; index < masks.size(); ++index)
    for (Shapes s : {Shapes{9, 9}, Shapes{5, 11}, Shapes{11, 6}})
      for (int head = 0; head < heads; ++head) {
        const Mask& mask = masks[index];
        const detail::MaskParams params = detail::resolve_mask(mask, heads, 11, 11, Device::cpu());
        const MaskEval e{&params, s.seqlen_q, s.seqlen_k, head};
        auto allowed = [&](int i, int j) { return reference::mask_allows(mask, i, j, s.seqlen_q, s.seqlen_k, head); };
        const std::string what = "mask #" + std::to_string(index) + " sq=" + std::to_string(s.seqlen_q) +
                                 " sk=" + std::to_string(s.seqlen_k) + " head=" + std::to_string(head);
        for (int i = 0; i < s.seqlen_q; ++i)
          for (int j = 0; j < s.seqlen_k; ++j) ASSERT_EQ(e.allows(i, j), allowed(i, j)) << what << " i=" << i << " j=" << j;
        for (int i0 = 0; i0 < s.seqlen_q; ++i0)
          for (int i1 = i0 + 1; i1 <= s.seqlen_q; ++i1) {
            int lo, hi;
            e.key_range(i0, i1, lo, hi);
            for (int i = i0; i < i1; ++i)
              for (int j = 0; j < s.seqlen_k; ++j)
                if (allowed(i, j)) {
                  ASSERT_TRUE(j >= lo && j < hi) << what << " key_range misses " << i << "," << j;
                }
            for (int j0 = 0; j0 < s.seqlen_k; ++j0)
              for (int j1 = j0 + 1; j1 <= s.seqlen_k; ++j1) {
                const TileKind kind = e.classify(i0, i1, j0, j1);
                if (kind == TileKind::partial) continue;
                for (int i = i0; i < i1; ++i)
                  for (int j = j0; j < j1; ++j)
                    ASSERT_EQ(allowed(i, j), kind == TileKind::full)
                        << what << " tile [" << i0 << "," << i1 << ")x[" << j0 << "," << j1 << ") claims "
                        << (kind == TileKind::full ? "full" : "empty") << " at " << i << "," << j;
              }
          }
      }
}

// The group functions combine the heads of a kv group: exact claims for all of them, and
// mask_group_tile leaves exactly the allowed scores finite.
TEST(CpuMaskEval, GroupTilesCoverEveryHead) {
  const int heads_q = 4, heads_kv = 2, sq = 10, sk = 12;
  Tensor per_head({heads_q, 4, 6}, DType::u8), globals = test::i32({3});
  for (std::int64_t i = 0; i < per_head.numel(); ++i) per_head.as<std::uint8_t>()[i] = test::rng()() % 2;
  std::vector<Mask> masks;
  Mask m;
  m.block_layout = per_head;
  m.block_q = 3;
  m.block_k = 2;
  masks.push_back(m);
  Mask w = Mask::window(2, 1);
  masks.push_back(w);
  w.global_tokens = globals;
  masks.push_back(w);
  for (const Mask& mask : masks) {
    detail::AttentionProblem p;
    p.heads_q = heads_q;
    p.heads_kv = heads_kv;
    p.mask = detail::resolve_mask(mask, heads_q, sq, sk, Device::cpu());
    for (int hkv = 0; hkv < heads_kv; ++hkv) {
      const cpu::GroupMask gm = cpu::group_mask(p, sq, sk, hkv);
      const int G = heads_q / heads_kv;
      auto allowed = [&](int i, int j, int g) { return reference::mask_allows(mask, i, j, sq, sk, hkv * G + g); };
      for (int i0 = 0; i0 < sq; i0 += 3)
        for (int i1 = i0 + 1; i1 <= sq; ++i1)
          for (int j0 = 0; j0 < sk; j0 += 2)
            for (int j1 = j0 + 1; j1 <= sk; ++j1) {
              const TileKind kind = cpu::classify_group_tile(gm, i0, i1, j0, j1);
              const int ld = (i1 - i0) * G;
              std::vector<float> scores(std::size_t((j1 - j0) * ld), 1.0f);
              cpu::mask_group_tile(gm, i0, i1, j0, j1, scores.data(), ld);
              for (int i = i0; i < i1; ++i)
                for (int g = 0; g < G; ++g)
                  for (int j = j0; j < j1; ++j) {
                    const bool a = allowed(i, j, g);
                    if (kind != TileKind::partial) {
                      ASSERT_EQ(a, kind == TileKind::full);
                    }
                    ASSERT_EQ(scores[std::size_t((j - j0) * ld + (i - i0) * G + g)] == 1.0f, a)
                        << "hkv " << hkv << " i=" << i << " g=" << g << " j=" << j;
                  }
            }
    }
  }
}

}  // namespace
}  // namespace attn
