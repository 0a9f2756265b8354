// attention_with_kvcache: validate everything, write the new tokens, then run the backend on
// an AttentionProblem whose k/v TokenLayout addresses the cache in place (paged or not) and
// whose seqlens_k holds each sequence's length. On CUDA tensors the checks run on the host
// (over host copies of cache_seqlens and the block table), then the append and the forward
// run on the device.
#include "attn/attention_kvcache.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cache/views.hpp"
#include "cpu/backend.hpp"
#include "validate.hpp"
#if defined(ATTN_WITH_CUDA)
#include "cuda/backend.hpp"
#include "cuda/kvcache_append.hpp"
#endif

namespace attn {
namespace {

using detail::select;

struct Resolved {
  detail::AttentionProblem p;
  bool paged = false;
  std::int64_t snew = 0;
  std::vector<std::int32_t> cache_len;  ///< tokens before this call
  std::vector<std::int32_t> len;        ///< keys attended: cache_len + snew (p.seqlens_k points here)
  std::vector<std::int32_t> table;      ///< host copy of the block table, (B, M) row-major
  std::int64_t table_width = 0;
};

/// The backend by q's device, as attention_forward picks it; the other tensors are checked
/// against q's device in resolve.
Backend pick(Backend requested, const TensorView& q) {
  ATTN_CHECK(q.defined(), "q: required");
  return detail::pick_backend(requested, q);
}

void check_dim(const TensorView& t, const char* name, int d, std::int64_t want, const char* what) {
  ATTN_CHECK(t.shape[std::size_t(d)] == want, name, ": expected ", what, " = ", want, " in dimension ", d,
             ", got shape ", t.shape_str());
}

/// Host copy of an i32 (B, M) block table with unit-stride rows, row-major. A CUDA table is
/// copied in one piece when its rows are adjacent, else row by row.
std::vector<std::int32_t> read_table(const TensorView& bt) {
  const std::int64_t B = bt.shape[0], M = bt.shape[1];
  std::vector<std::int32_t> out(std::size_t(B * M));
  if (out.empty()) return out;
  if (bt.device.is_cpu()) {
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < M; ++i)
        out[std::size_t(b * M + i)] = bt.as<std::int32_t>()[b * bt.stride[0] + i * bt.stride[1]];
    return out;
  }
  const bool adjacent = bt.stride[0] == M || B == 1;
  for (std::int64_t b = 0; b < (adjacent ? 1 : B); ++b) {
    const std::int64_t n = adjacent ? B * M : M;
    copy(TensorView::contiguous(out.data() + b * M, DType::i32, {n}),
         TensorView::contiguous(bt.as<std::int32_t>() + b * bt.stride[0], DType::i32, {n}, bt.device));
  }
  return out;
}

/// The cache slot (Hk, D) where token `pos` of sequence b lives.
TensorView slot(const Resolved& r, const TensorView& cache, int b, std::int64_t pos) {
  if (!r.paged) return select(select(cache, b), pos);
  const std::int64_t page_size = cache.shape[1];
  const std::int32_t page = r.table[std::size_t(b * r.table_width + pos / page_size)];
  return select(select(cache, page), pos % page_size);
}

Resolved resolve(const KVCacheArgs& a, Backend backend) {
  Resolved r;
  detail::AttentionProblem& p = r.p;
  ATTN_CHECK(a.q.defined(), "q: required");
  const DType dt = a.q.dtype;
  const Device dev = a.q.device;
  detail::check_q_dtype(backend, dt);
  detail::check_tokens(a.q, "q", false, dt, dev);
  detail::check_tokens(a.k_cache, "k_cache", false, dt, dev);
  detail::check_tokens(a.v_cache, "v_cache", false, dt, dev);
  const std::int64_t B = a.q.shape[0], Sq = a.q.shape[1], Hq = a.q.shape[2], D = a.q.shape[3];
  const std::int64_t Hk = a.k_cache.shape[2], Dv = a.v_cache.shape[3];
  p.batch = int(B);
  p.heads_q = int(Hq);
  p.heads_kv = int(Hk);
  p.head_dim = int(D);
  p.head_dim_v = int(Dv);
  p.dtype = dt;
  p.seqlen_q = int(Sq);
  ATTN_CHECK(Hk >= 1 && Hq % Hk == 0, "k_cache: expected heads_kv dividing heads_q = ", Hq, ", got ", Hk);
  check_dim(a.k_cache, "k_cache", 3, D, "head_dim (from q)");
  for (int d = 0; d < 3; ++d) check_dim(a.v_cache, "v_cache", d, a.k_cache.shape[std::size_t(d)], "the size of k_cache");
  detail::check_head_dims(backend, int(D), int(Dv));

  r.paged = a.block_table.defined();
  if (r.paged) {
    const TensorView& bt = a.block_table;
    ATTN_CHECK(bt.dtype == DType::i32 && bt.ndim == 2, "block_table: expected an i32 (batch, max_pages) tensor, got ",
               dtype_name(bt.dtype), " ", bt.shape_str());
    ATTN_CHECK(bt.device == dev, "block_table: expected device ", dev.str(), ", got ", bt.device.str());
    check_dim(bt, "block_table", 0, B, "batch (from q)");
    ATTN_CHECK(bt.stride[1] == 1 || bt.shape[1] <= 1, "block_table: expected a unit stride in the last dimension");
    ATTN_CHECK(a.k_cache.shape[1] >= 1, "k_cache: expected page_size >= 1, got ", a.k_cache.shape_str());
    r.table_width = bt.shape[1];
    r.table = read_table(bt);
  } else {
    check_dim(a.k_cache, "k_cache", 0, B, "batch (from q)");
  }

  const TensorView& cs = a.cache_seqlens;
  ATTN_CHECK(cs.defined(), "cache_seqlens: required");
  ATTN_CHECK(cs.dtype == DType::i32 && cs.ndim == 1, "cache_seqlens: expected an i32 vector of batch entries, got ",
             dtype_name(cs.dtype), " ", cs.shape_str());
  ATTN_CHECK(cs.device == dev, "cache_seqlens: expected device ", dev.str(), ", got ", cs.device.str());
  check_dim(cs, "cache_seqlens", 0, B, "batch (from q)");
  // The device kernels read cache_seqlens in place, one int per sequence.
  ATTN_CHECK(cs.device.is_cpu() || cs.stride[0] == 1 || B <= 1,
             "cache_seqlens: expected a contiguous vector on a CUDA device, got stride ", cs.stride[0]);
  // As in flash_attn, the lengths of CUDA tensors live on the device; every check below needs
  // them on the host, so B ints are copied back (a synchronous copy, which also waits for the
  // work queued before this call that may still be writing them).
  r.cache_len = detail::read_i32(cs);

  ATTN_CHECK(a.k_new.defined() == a.v_new.defined(), "k_new: expected k_new and v_new together, or neither");
  if (a.k_new.defined()) {
    detail::check_tokens(a.k_new, "k_new", false, dt, dev);
    detail::check_tokens(a.v_new, "v_new", false, dt, dev);
    r.snew = a.k_new.shape[1];
    check_dim(a.k_new, "k_new", 0, B, "batch (from q)");
    check_dim(a.k_new, "k_new", 2, Hk, "heads_kv (from k_cache)");
    check_dim(a.k_new, "k_new", 3, D, "head_dim (from q)");
    check_dim(a.v_new, "v_new", 0, B, "batch (from q)");
    check_dim(a.v_new, "v_new", 1, r.snew, "seqlen_new (from k_new)");
    check_dim(a.v_new, "v_new", 2, Hk, "heads_kv (from k_cache)");
    check_dim(a.v_new, "v_new", 3, Dv, "head_dim_v (from v_cache)");
  }

  // Every length against the capacity, every used page id against the pool.
  const std::int64_t cap = r.paged ? r.table_width * a.k_cache.shape[1] : a.k_cache.shape[1];
  r.len.resize(std::size_t(B));
  std::int64_t max_len = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t c = r.cache_len[std::size_t(b)];
    ATTN_CHECK(c >= 0, "cache_seqlens: expected values >= 0, got ", c, " at index ", b);
    const std::int64_t L = c + r.snew;
    ATTN_CHECK(L <= cap, r.paged ? "block_table" : "k_cache", ": sequence ", b, " needs ", L, " slots (", c,
               " cached + ", r.snew, " new), but ", r.paged ? "its table row holds " : "max_seqlen is ", cap,
               r.paged ? " slots" : "");
    r.len[std::size_t(b)] = std::int32_t(L);
    max_len = std::max(max_len, L);
    if (!r.paged) continue;
    const std::int64_t used_pages = (L + a.k_cache.shape[1] - 1) / a.k_cache.shape[1];
    for (std::int64_t i = 0; i < used_pages; ++i) {
      const std::int32_t pg = r.table[std::size_t(b * r.table_width + i)];
      ATTN_CHECK(pg >= 0 && pg < a.k_cache.shape[0], "block_table: entry [", b, "][", i, "] = ", pg,
                 " is not a page of the pool (0 <= page < ", a.k_cache.shape[0], ")");
    }
  }
  if (r.paged && r.snew > 0) {
    // Two sequences writing one slot means a shared page escaped copy-on-write: refuse
    // rather than let one sequence overwrite another's tokens. Sorting the written slots
    // keeps this O(n log n) for long chunked prefills.
    const std::int64_t ps = a.k_cache.shape[1];
    struct Write {
      std::int64_t slot;  // page * page_size + offset
      std::int64_t seq;
    };
    std::vector<Write> writes;
    writes.reserve(std::size_t(B * r.snew));
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t pos = r.cache_len[std::size_t(b)]; pos < r.len[std::size_t(b)]; ++pos)
        writes.push_back({r.table[std::size_t(b * r.table_width + pos / ps)] * ps + pos % ps, b});
    std::sort(writes.begin(), writes.end(), [](const Write& x, const Write& y) { return x.slot < y.slot; });
    for (std::size_t i = 1; i < writes.size(); ++i)
      ATTN_CHECK(writes[i].slot != writes[i - 1].slot, "block_table: sequences ", writes[i - 1].seq, " and ",
                 writes[i].seq, " would both write slot ", writes[i].slot % ps, " of page ", writes[i].slot / ps);
  }
  p.seqlen_k = int(max_len);

  const DType out_dt = backend == Backend::reference ? a.out.dtype : dt;
  if (backend == Backend::reference)
    ATTN_CHECK(is_storage_dtype(out_dt) || out_dt == DType::f64, "out: expected a float dtype, got ", dtype_name(out_dt));
  detail::check_tokens(a.out, "out", false, out_dt, dev);
  check_dim(a.out, "out", 0, B, "batch (from q)");
  check_dim(a.out, "out", 1, Sq, "seqlen_q (from q)");
  check_dim(a.out, "out", 2, Hq, "heads_q (from q)");
  check_dim(a.out, "out", 3, Dv, "head_dim_v (from v_cache)");
  if (a.lse.defined()) {
    ATTN_CHECK(a.lse.dtype == DType::f32 || (backend == Backend::reference && a.lse.dtype == DType::f64),
               "lse: expected dtype f32, got ", dtype_name(a.lse.dtype));
    ATTN_CHECK(a.lse.device == dev, "lse: expected device ", dev.str(), ", got ", a.lse.device.str());
    ATTN_CHECK(a.lse.ndim == 3 && a.lse.shape[0] == B && a.lse.shape[1] == Hq && a.lse.shape[2] == Sq,
               "lse: expected shape (", B, ", ", Hq, ", ", Sq, "), got ", a.lse.shape_str());
    p.lse = a.lse.as<float>();
    p.lse_layout.batch_stride = a.lse.stride[0];
    p.lse_layout.head_stride = a.lse.stride[1];
    p.lse_layout.token_stride = a.lse.stride[2];
  }

  const AttentionParams& prm = a.params;
  ATTN_CHECK(std::isfinite(prm.scale) && prm.scale >= 0.0f, "scale: expected a finite value > 0 (0 = default), got ",
             prm.scale);
  ATTN_CHECK(std::isfinite(prm.softcap) && prm.softcap >= 0.0f, "softcap: expected a finite value >= 0 (0 = off), got ",
             prm.softcap);
  p.scale = prm.scale > 0.0f ? prm.scale : 1.0f / std::sqrt(float(D));
  p.softcap = prm.softcap;
  p.mask = detail::resolve_mask(prm.mask, int(Hq), int(Sq), int(max_len), dev);

  p.q = a.q.data;
  p.q_layout = detail::token_layout(a.q, false, nullptr);
  p.out = a.out.data;
  p.out_layout = detail::token_layout(a.out, false, nullptr);
  p.k = a.k_cache.data;
  p.v = a.v_cache.data;
  p.k_layout = detail::token_layout(a.k_cache, false, nullptr);
  p.v_layout = detail::token_layout(a.v_cache, false, nullptr);
  if (r.paged) {
    for (detail::TokenLayout* l : {&p.k_layout, &p.v_layout}) {
      const TensorView& c = l == &p.k_layout ? a.k_cache : a.v_cache;
      l->batch_stride = 0;
      l->block_table = a.block_table.as<std::int32_t>();
      l->block_table_stride = a.block_table.stride[0];
      l->page_size = int(c.shape[1]);
      l->page_stride = c.stride[0];
    }
  }
  p.seqlens_k = r.len.data();
  return r;
}

void write_new_tokens(const KVCacheArgs& a, const Resolved& r) {
  for (int b = 0; b < r.p.batch; ++b)
    for (std::int64_t t = 0; t < r.snew; ++t) {
      const std::int64_t pos = r.cache_len[std::size_t(b)] + t;
      copy(slot(r, a.k_cache, b, pos), select(select(a.k_new, b), t));
      copy(slot(r, a.v_cache, b, pos), select(select(a.v_new, b), t));
    }
}

/// The oracle sees each sequence's used prefix gathered into a contiguous (1, L_b, Hk, D).
void reference_forward(const KVCacheArgs& a, const Resolved& r) {
  const std::int64_t Hk = r.p.heads_kv;
  for (int b = 0; b < r.p.batch; ++b) {
    const std::int64_t L = r.len[std::size_t(b)];
    Tensor k({1, L, Hk, r.p.head_dim}, a.k_cache.dtype), v({1, L, Hk, r.p.head_dim_v}, a.v_cache.dtype);
    for (std::int64_t pos = 0; pos < L; ++pos) {
      copy(select(select(k, 0), pos), slot(r, a.k_cache, b, pos));
      copy(select(select(v, 0), pos), slot(r, a.v_cache, b, pos));
    }
    ForwardArgs f;
    f.q = detail::narrow(a.q, b, 1);
    f.k = k;
    f.v = v;
    f.out = detail::narrow(a.out, b, 1);
    if (a.lse.defined()) f.lse = detail::narrow(a.lse, b, 1);
    f.params = a.params;
    attention_forward(f, Backend::reference);
  }
}

#if defined(ATTN_WITH_CUDA)
constexpr std::size_t kWorkspaceAlign = 256;

/// The CUDA workspace starts with the device copy of the key lengths (the forward reads
/// seqlens_k on the device), then holds the forward's split-KV partials.
std::size_t cuda_lengths_bytes(const Resolved& r) {
  return (std::size_t(r.p.batch) * sizeof(std::int32_t) + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

/// Also the CUDA path's last checks: the forward's planner rejects what its kernels cannot
/// run (dtype, rows off the 16-byte grid, grid limits), and it must do so before the append.
std::size_t cuda_workspace_size(const Resolved& r) {
  ATTN_CHECK(r.p.dtype == DType::f16 || r.p.dtype == DType::bf16,
             "q: the cuda backend runs f16 and bf16 (f32 accumulation); got ", dtype_name(r.p.dtype),
             " (convert the inputs to bf16 or f16, or use the cpu backend)");
  return cuda_lengths_bytes(r) + cuda::forward_workspace_size(r.p);
}

/// Append on the device, then the forward over each sequence's first cache_seqlens[b] + Snew
/// keys. Everything queues on the default stream, so the forward sees the appended tokens.
void cuda_run(const KVCacheArgs& a, Resolved& r, Workspace ws) {
  const auto* cache_seqlens = a.cache_seqlens.as<std::int32_t>();
  if (r.snew > 0) {
    cuda::KvAppendParams ap;
    ap.k = {a.k_cache.data, r.p.k_layout, a.k_new.data, detail::token_layout(a.k_new, false, nullptr), r.p.head_dim};
    ap.v = {a.v_cache.data, r.p.v_layout, a.v_new.data, detail::token_layout(a.v_new, false, nullptr),
            r.p.head_dim_v};
    ap.cache_seqlens = cache_seqlens;
    ap.batch = r.p.batch;
    ap.seqlen_new = int(r.snew);
    ap.heads_kv = r.p.heads_kv;
    ap.element_size = dtype_size(r.p.dtype);
    cuda::launch_kvcache_append(ap);
  }
  auto* lengths = static_cast<std::int32_t*>(ws.data);
  cuda::launch_kvcache_seqlens(cache_seqlens, int(r.snew), r.p.batch, lengths);
  r.p.seqlens_k = lengths;
  const std::size_t skip = cuda_lengths_bytes(r);
  cuda::forward(r.p, Workspace{skip < ws.bytes ? static_cast<char*>(ws.data) + skip : nullptr, ws.bytes - skip});
}
#endif

std::size_t workspace_size(const Resolved& r, Backend backend) {
  if (backend == Backend::reference) return 0;
#if defined(ATTN_WITH_CUDA)
  if (backend == Backend::cuda) return cuda_workspace_size(r);
#endif
  return cpu::forward_workspace_size(r.p);
}

}  // namespace

std::size_t attention_with_kvcache_workspace_size(const KVCacheArgs& args, Backend backend) {
  backend = pick(backend, args.q);
  return workspace_size(resolve(args, backend), backend);
}

void attention_with_kvcache(const KVCacheArgs& args, Workspace ws, Backend backend) {
  backend = pick(backend, args.q);
  Resolved r = resolve(args, backend);
  const std::size_t need = workspace_size(r, backend);
  ATTN_CHECK(need == 0 || (ws.data != nullptr && ws.bytes >= need), "workspace: expected at least ", need,
             " bytes, got ", ws.bytes);
  // Nothing has been written up to here: every check above throws with the caches untouched.
#if defined(ATTN_WITH_CUDA)
  if (backend == Backend::cuda) return cuda_run(args, r, ws);
#endif
  write_new_tokens(args, r);
  if (backend == Backend::reference) {
    reference_forward(args, r);
  } else {
    cpu::forward(r.p, ws);
  }
}

void attention_with_kvcache(const KVCacheArgs& args, Backend backend) {
  backend = pick(backend, args.q);
  const std::size_t bytes = attention_with_kvcache_workspace_size(args, backend);
  Tensor scratch;
  if (bytes > 0) scratch = Tensor({std::int64_t(bytes)}, DType::u8, args.q.device);
  attention_with_kvcache(args, Workspace{scratch.defined() ? scratch.data() : nullptr, bytes}, backend);
}

}  // namespace attn
