#include "cpu/backward_plan.hpp"

#include <algorithm>

#include "attn/error.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"

namespace attn::cpu {
namespace {

std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }
constexpr std::size_t kAlignFloats = 16;  // 64 bytes

}  // namespace

BackwardPlan plan_backward(const detail::BackwardProblem& p, int threads) {
  using P = BackwardPlan;
  BackwardPlan plan;
  const int G = p.group_size();
  plan.group = G;
  plan.threads = std::max(1, threads);
  plan.block_positions = std::max(1, P::kTileRows / G);
  plan.rows = plan.block_positions * G;
  plan.d_pad = int(round_up(std::size_t(p.head_dim), P::kPad));
  plan.dv_pad = int(round_up(std::size_t(p.head_dim_v), P::kPad));
  plan.num_query_blocks = (p.seqlen_q + plan.block_positions - 1) / plan.block_positions;
  plan.num_key_blocks = (p.seqlen_k + P::kKeyBlock - 1) / P::kKeyBlock;
  const std::size_t tokens_q = p.cu_seqlens_q != nullptr ? std::size_t(p.cu_seqlens_q[p.batch])
                                                         : std::size_t(p.batch) * std::size_t(p.seqlen_q);
  plan.total_rows = tokens_q * std::size_t(p.heads_q);

  const std::size_t heads = std::size_t(p.batch) * std::size_t(p.heads_kv);
  const std::size_t dp = std::size_t(plan.d_pad), dvp = std::size_t(plan.dv_pad);
  // Chunks give the threads work when (sequence, kv head) alone is too few units; each costs a
  // dQ partial, so they stop at kMaxChunks and at kMaxPartialBytes of partials.
  const std::size_t partial_bytes = plan.total_rows * dp * sizeof(float);
  if (heads > 0 && plan.num_key_blocks > 1) {
    std::size_t c = (P::kTargetUnits + heads - 1) / heads;
    c = std::min({c, std::size_t(P::kMaxChunks), std::size_t(plan.num_key_blocks)});
    if (partial_bytes > 0) c = std::min(c, std::max<std::size_t>(1, P::kMaxPartialBytes / partial_bytes));
    plan.chunks = int(std::max<std::size_t>(1, c));
  }

  std::size_t at = 0;
  auto take = [&](std::size_t floats) {
    const std::size_t offset = at;
    at = round_up(at + floats, kAlignFloats);
    return offset;
  };
  const std::size_t rows_all = plan.total_rows;
  plan.q = take(rows_all * dp);
  plan.dout = take(rows_all * dvp);
  plan.lse2 = take(rows_all);
  plan.delta = take(rows_all);
  plan.dq = take(rows_all * std::size_t(plan.chunks) * dp);
  plan.thread_base = at;
  at = 0;
  const std::size_t bc = P::kKeyBlock, r = std::size_t(plan.rows);
  plan.k_t = take(std::size_t(p.head_dim) * bc);
  plan.v_t = take(std::size_t(p.head_dim_v) * bc);
  plan.k = take(bc * dp);
  plan.dk = take(bc * dp);
  plan.dv = take(bc * dvp);
  plan.s = take(r * bc);
  plan.ds = take(r * bc);
  plan.thread_floats = at;
  plan.workspace_bytes = (plan.thread_base + plan.thread_floats * std::size_t(plan.threads)) * sizeof(float);
  return plan;
}

std::size_t flash_backward_workspace_size(const detail::BackwardProblem& p) {
  return plan_backward(p, num_threads()).workspace_bytes;
}

void flash_backward_run(const detail::BackwardProblem& p, Workspace ws) {
  int threads = num_threads();
  BackwardPlan plan = plan_backward(p, threads);
  while (plan.workspace_bytes > ws.bytes && threads > 1) plan = plan_backward(p, --threads);
  ATTN_CHECK(plan.workspace_bytes <= ws.bytes, "workspace: the cpu backward needs ", plan.workspace_bytes,
             " bytes, got ", ws.bytes);
  if (p.batch == 0 || p.heads_kv == 0) return;
  std::byte* w = static_cast<std::byte*>(ws.data);
  switch (active_isa()) {
    case Isa::avx512: return avx512::flash_backward_entry(p, plan, w);
    case Isa::avx2: return avx2::flash_backward_entry(p, plan, w);
    case Isa::scalar: break;
  }
  scalar::flash_backward_entry(p, plan, w);
}

}  // namespace attn::cpu
