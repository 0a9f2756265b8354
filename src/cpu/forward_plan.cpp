#include "cpu/forward_plan.hpp"

#include <algorithm>

namespace attn::cpu {
namespace {

std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }
constexpr std::size_t kAlignFloats = 16;  // 64 bytes

}  // namespace

ForwardPlan plan_forward(const detail::AttentionProblem& p, int threads, int panel, int width) {
  ForwardPlan plan;
  const int G = p.group_size();
  plan.group = G;
  plan.threads = std::max(1, threads);
  // ~64 rows keep the score tile and both gemms in L1/L2; decode shapes (seqlen_q 1) get G rows.
  plan.block_positions = std::max(1, std::min(ForwardPlan::kTileRows / G, std::max(1, p.seqlen_q)));
  plan.rows = plan.block_positions * G;
  // Decode tiles (a few rows) pad to one vector and use the one-vector gemm panel: padding
  // rows cost as much as real ones in s = K q.
  plan.rows_pad = int(round_up(std::size_t(plan.rows), std::size_t(plan.rows <= width ? width : panel)));
  plan.dv_pad = int(round_up(std::size_t(p.head_dim_v), std::size_t(panel)));
  plan.scores_by_dot = plan.rows * 2 <= width;
  plan.num_query_blocks = (p.seqlen_q + plan.block_positions - 1) / plan.block_positions;

  // Decode-like units gather kv heads up to ~kTileRows rows in all (see forward_plan.hpp).
  // From rows, not rows_pad, so the choice does not depend on the ISA (workspace sizing).
  if (plan.num_query_blocks == 1) {
    const int most = std::max(1, std::min({p.heads_kv, ForwardPlan::kTileRows / plan.rows,
                                           ForwardPlan::kMaxHeadsPerUnit}));
    for (int h = most; h >= 1; --h)
      if (p.heads_kv % h == 0) {
        plan.heads_per_unit = h;
        break;
      }
  }

  // Split the keys when fewer than ~4 units per thread would exist otherwise, keeping chunks
  // of at least kMinKeysPerSplit keys so the combine stays cheap next to the chunk's work.
  const std::int64_t base_units =
      std::int64_t(p.batch) * (p.heads_kv / plan.heads_per_unit) * plan.num_query_blocks;
  const std::int64_t wanted = 4 * std::int64_t(plan.threads);
  if (base_units > 0 && base_units < wanted) {
    const std::int64_t by_threads = (wanted + base_units - 1) / base_units;
    const std::int64_t by_keys = std::max<std::int64_t>(1, p.seqlen_k / ForwardPlan::kMinKeysPerSplit);
    plan.splits = int(std::min(by_threads, by_keys));
  }
  plan.num_units = base_units * plan.splits;

  const std::size_t d = std::size_t(p.head_dim), rp = std::size_t(plan.rows_pad), dvp = std::size_t(plan.dv_pad);
  const std::size_t bc = ForwardPlan::kKeyBlock;
  std::size_t at = 0;
  auto take = [&](std::size_t floats) {
    const std::size_t offset = at;
    at = round_up(at + floats, kAlignFloats);
    return offset;
  };
  plan.q_t = take(d * rp);
  plan.o = take(rp * dvp);
  plan.row_max = take(rp);
  plan.row_sum = take(rp);
  plan.rescale = take(rp);
  plan.head_floats = at;

  at = 0;
  plan.k = take(bc * d);
  plan.v = take(bc * dvp);
  // Decode tiles keep one score tile per head of the unit (flash_forward.hpp, run_tiles_decode).
  plan.s = take(bc * rp * std::size_t(plan.scores_by_dot ? plan.heads_per_unit : 1));
  plan.head_state = take(plan.head_floats * std::size_t(plan.heads_per_unit));
  plan.thread_floats = at;

  at = plan.thread_floats * std::size_t(plan.threads);
  if (plan.splits > 1) {
    const std::size_t rows = std::size_t(plan.num_units) * std::size_t(plan.heads_per_unit) * std::size_t(plan.rows);
    plan.partial_o = take(rows * std::size_t(p.head_dim_v));
    plan.partial_lse = take(rows);
  }
  plan.workspace_bytes = at * sizeof(float);
  return plan;
}

}  // namespace attn::cpu
