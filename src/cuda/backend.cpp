// Planning and dispatch of the CUDA forward: checks what the kernels assume (dtype, 16-byte
// rows, grid limits), picks GQA packing and the KV split count, and turns the runtime
// (dtype, head_dim) into one of the compiled instantiations.
#include "cuda/backend.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda/backward.hpp"
#include "cuda/check.hpp"
#include "cuda/fwd_params.hpp"
#include "cuda/mla/mla_decode.hpp"
#include "cuda/plan_checks.hpp"
#include "cuda/tma_map.hpp"

namespace attn::cuda {
namespace {

using detail::AttentionProblem;
using detail::TokenLayout;

constexpr std::size_t kWorkspaceAlign = 256;
constexpr std::size_t align_up(std::size_t n) { return (n + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }
constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
constexpr int kMaxSplits = 64;
constexpr float kLog2e = 1.4426950408889634f;

int current_device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  ATTN_CUDA_CHECK(cudaGetDevice(&dev));
  ATTN_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}

/// The Hopper kernel (wgmma) serves D = Dv = 64, 128 or 256 prefill-shaped calls on an sm_90
/// device when the build has sm_90a code; ATTN_CUDA_FWD=sm80 forces the sm80 kernel (for
/// comparisons).
/// `long_queries`: the queries fill more than one short (64-row) tile.
bool use_sm90_forward(const AttentionProblem& p, int pack, bool long_queries) {
#if defined(ATTN_CUDA_HAS_SM90A)
  const bool dims = p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256;
  if (!dims || p.head_dim_v != p.head_dim || pack != 1 || !long_queries) return false;
  const char* env = std::getenv("ATTN_CUDA_FWD");
  if (env != nullptr && std::strcmp(env, "sm80") == 0) return false;
  return current_device_attribute(cudaDevAttrComputeCapabilityMajor) == 9 &&
         current_device_attribute(cudaDevAttrComputeCapabilityMinor) == 0;
#else
  (void)p, (void)pack, (void)long_queries;
  return false;
#endif
}

struct Plan {
  FwdParams params;
  std::size_t o_part_bytes = 0;
  std::size_t counter_offset = 0;  ///< the Hopper kernel's work counter, after the split partials
  std::size_t workspace_bytes = 0;
};

/// A positive integer from the environment variable `name`, or 0 (unset or not a number).
int env_positive(const char* name) {
  const char* env = std::getenv(name);
  const int value = env != nullptr ? std::atoi(env) : 0;
  return value > 0 ? value : 0;
}

Plan plan_forward(const AttentionProblem& p) {
  ATTN_CHECK(p.dtype == DType::f16 || p.dtype == DType::bf16,
             "q: the cuda backend runs f16 and bf16 (f32 accumulation); got ", dtype_name(p.dtype),
             " (convert the inputs to bf16 or f16, or use the cpu backend)");
  check_rows_aligned("q", p.q, p.q_layout);
  check_rows_aligned("k", p.k, p.k_layout);
  check_rows_aligned("v", p.v, p.v_layout);
  check_rows_aligned("out", p.out, p.out_layout);
  ATTN_CHECK(p.batch <= 65535, "q: the cuda backend supports batch <= 65535, got ", p.batch);

  Plan plan;
  FwdParams& f = plan.params;
  f.p = p;
  const FwdTile short_tile = fwd_tile(p.head_dim, false);
  const int G = p.group_size();
  // Packing the group's query heads into the tile rows lets one K/V load serve all of them;
  // it needs one mask for the whole tile, which a per-head block layout would break.
  const bool one_layout = p.mask.block_layout == nullptr || p.mask.layout_head_stride == 0;
  f.pack = G > 1 && one_layout && std::int64_t(p.seqlen_q) * G <= short_tile.block_m ? G : 1;
  // Tall tiles only where the queries fill more than one short tile: a decode or short
  // prefill would leave most of the taller tile empty.
  const bool long_queries = std::int64_t(p.seqlen_q) * f.pack > short_tile.block_m;
  const bool tall = fwd_has_tall_tile(p.head_dim) && long_queries;
  FwdTile tile = fwd_tile(p.head_dim, tall);
  f.sm90 = use_sm90_forward(p, f.pack, long_queries);
  if (f.sm90) {
    const int block_n = sm90_block_n(p.head_dim);
    tile = FwdTile{kSm90BlockM, block_n, 3};  // stages: the kernel's own (Sm90FwdTraits), not read here
    const char* env = std::getenv("ATTN_CUDA_FWD");
    if (env != nullptr) {
      f.sm90_variant = std::strcmp(env, "sm90-pipe") == 0       ? 1
                       : std::strcmp(env, "sm90-plain-pp") == 0 ? 2
                       : std::strcmp(env, "sm90-plain") == 0    ? 3
                                                                 : 0;
    }
    // TMA where every sequence's keys run to the padded length: rows past it load as zeros,
    // as V rows must where P is 0 (per-sequence lengths would leave stale rows in the tile).
    // Q rows past a sequence's length (padded batches with per-sequence lengths) hold whatever
    // the caller left there: each row's scores depend on its own Q row only, and those rows are
    // never stored.
    if (p.seqlens_k == nullptr && tma_allowed()) {
      f.tma = encode_padded_rows_map(f.tma_k, p.k, p.k_layout, p.dtype, p.batch, p.seqlen_k, p.heads_kv, p.head_dim,
                                     block_n) &&
              encode_padded_rows_map(f.tma_v, p.v, p.v_layout, p.dtype, p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v,
                                     block_n) &&
              encode_padded_rows_map(f.tma_q, p.q, p.q_layout, p.dtype, p.batch, p.seqlen_q, p.heads_q, p.head_dim,
                                     kSm90BlockM);
      f.tma_out = f.tma && encode_padded_rows_map(f.tma_o, p.out, p.out_layout, p.dtype, p.batch, p.seqlen_q,
                                                  p.heads_q, p.head_dim_v, kSm90BlockM / 2);
    }
  }
  f.block_m = tile.block_m;
  f.slots = f.pack > 1 ? p.heads_kv : p.heads_q;
  ATTN_CHECK(f.slots <= 65535, "q: the cuda backend supports at most 65535 heads, got ", f.slots);
  f.m_tiles = int(ceil_div(std::int64_t(p.seqlen_q) * f.pack, tile.block_m));
  f.scale_log2 = p.scale * kLog2e;
  f.softcap_log2 = p.softcap * kLog2e;

  // Too few CTAs to fill the GPU (decode, small batches): split the keys too, aiming at two
  // CTAs per SM, with at least two key tiles per split so the pipeline has work to overlap.
  const std::int64_t ctas = std::int64_t(f.m_tiles) * f.slots * p.batch;
  const std::int64_t key_tiles = ceil_div(p.seqlen_k, tile.block_n);
  const int sms = current_device_attribute(cudaDevAttrMultiProcessorCount);
  if (ctas > 0 && key_tiles >= 4) {
    const std::int64_t want = ceil_div(2 * std::int64_t(sms), ctas);
    f.n_splits = int(std::clamp<std::int64_t>(std::min(want, key_tiles / 2), 1, kMaxSplits));
  }
  ATTN_CHECK(std::int64_t(f.m_tiles) * f.n_splits * f.slots * p.batch < (std::int64_t(1) << 31),
             "q: batch x heads x seqlen_q is too large for one launch");
  // One (slot, batch) pair at a time in launch order, its m-tiles last to first (cta_work):
  // consecutive CTAs share K/V in L2. Interleaving the m-tiles of L2-sized groups of pairs
  // (heaviest first across the group) measured 6-9% slower on the H100 (bench/gpu_notes.md, v4).
  f.pairs_per_group = 1;
  if (f.n_splits > 1) {
    const std::size_t rows = std::size_t(f.n_splits) * std::size_t(p.batch) * std::size_t(p.seqlen_q) *
                             std::size_t(p.heads_q);
    plan.o_part_bytes = align_up(rows * std::size_t(p.head_dim_v) * sizeof(float));
    plan.workspace_bytes = plan.o_part_bytes + align_up(rows * sizeof(float));
  }
  if (f.sm90) {
    // Persistent grid (sm90/flash_fwd.cuh): one CTA per SM takes items from a counter in
    // launch order. Items run heaviest first across groups of pairs large enough for about
    // two items per SM, so that under a causal mask the last items to start are the short
    // ones (a simulation of the greedy schedule: within 1% of the ideal at B4 S4096 H16,
    // against 7% for one pair at a time); groups stay a few heads wide, so their K/V stay
    // in L2. ATTN_CUDA_FWD_PAIRS and ATTN_CUDA_FWD_CTAS override both, for measurements.
    const int per_pair = f.m_tiles * f.n_splits, pairs = f.slots * p.batch;
    f.total_works = per_pair * pairs;
    f.pairs_per_group = int(std::clamp<std::int64_t>(ceil_div(2 * std::int64_t(sms), per_pair), 1, pairs));
    if (const int env = env_positive("ATTN_CUDA_FWD_PAIRS")) f.pairs_per_group = std::min(env, pairs);
    f.grid_ctas = std::min(f.total_works, sms);
    if (const int env = env_positive("ATTN_CUDA_FWD_CTAS")) f.grid_ctas = std::min(env, f.total_works);
    plan.counter_offset = plan.workspace_bytes;
    plan.workspace_bytes += align_up(sizeof(int));
  }
  return plan;
}

}  // namespace

std::size_t forward_workspace_size(const AttentionProblem& p) {
  if (mla::is_mla_decode(p)) return mla::decode_workspace_size(p);
  if (p.batch == 0 || p.seqlen_q == 0) return 0;
  return plan_forward(p).workspace_bytes;
}

void forward(const AttentionProblem& p, Workspace ws) {
  if (mla::is_mla_decode(p)) return mla::decode(p, ws, nullptr);  // MLA's latent cache: 576 / 512
  if (p.batch == 0 || p.seqlen_q == 0) return;  // nothing to write
  Plan plan = plan_forward(p);
  FwdParams& f = plan.params;
  if (f.n_splits > 1) place_split_partials(ws, plan.o_part_bytes, plan.workspace_bytes, f.o_part, f.lse_part);
  constexpr cudaStream_t stream = nullptr;  // the default stream
  if (f.sm90) {
    check_workspace(ws, plan.workspace_bytes);
    f.work_counter = reinterpret_cast<int*>(static_cast<char*>(ws.data) + plan.counter_offset);
    const bool f16 = p.dtype == DType::f16;
    if (p.head_dim == 64) {
      f16 ? launch_flash_fwd_sm90<DType::f16, 64>(f, stream) : launch_flash_fwd_sm90<DType::bf16, 64>(f, stream);
    } else if (p.head_dim == 128) {
      f16 ? launch_flash_fwd_sm90<DType::f16, 128>(f, stream) : launch_flash_fwd_sm90<DType::bf16, 128>(f, stream);
    } else {
      f16 ? launch_flash_fwd_sm90<DType::f16, 256>(f, stream) : launch_flash_fwd_sm90<DType::bf16, 256>(f, stream);
    }
  } else {
    with_head_dims(p.head_dim, p.head_dim_v, "the cuda backend", [&]<int D, int Dv>() {
      if (p.dtype == DType::f16) {
        launch_flash_fwd<DType::f16, D, Dv>(f, stream);
      } else {
        launch_flash_fwd<DType::bf16, D, Dv>(f, stream);
      }
    });
  }
  if (f.n_splits > 1) launch_fwd_combine(f, stream);  // the KV splits' partials, through their lse
}

std::size_t backward_workspace_size(const detail::BackwardProblem& p) { return flash_backward_workspace_size(p); }

void backward(const detail::BackwardProblem& p, Workspace ws) { flash_backward(p, ws); }

}  // namespace attn::cuda
