// Linear attention: one pass over the keys per (sequence, kv head), with the D x Dv state in
// a per-thread buffer that stays in L1/L2; the query heads of a GQA group share the pass.
#include "attn/modules/linear_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/thread_pool.hpp"
#include "modules/tensor_util.hpp"

namespace attn::modules {
namespace {

struct Dims {
  int batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, head_dim_v;
};

Dims check_args(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out) {
  detail::check_f32(q, "q", 4);
  detail::check_f32(k, "k", 4);
  detail::check_f32(v, "v", 4);
  detail::check_f32(out, "out", 4);
  const Dims d{int(q.size(0)), int(q.size(1)), int(k.size(1)), int(q.size(2)), int(k.size(2)), int(q.size(3)),
               int(v.size(3))};
  detail::check_dim(k, "k", 0, d.batch, "batch, from q");
  detail::check_dim(k, "k", 3, d.head_dim, "head_dim, from q");
  detail::check_dim(v, "v", 0, d.batch, "batch, from q");
  detail::check_dim(v, "v", 1, d.seqlen_k, "seqlen_k, from k");
  detail::check_dim(v, "v", 2, d.heads_kv, "heads_kv, from k");
  detail::check_dim(out, "out", 0, d.batch, "batch, from q");
  detail::check_dim(out, "out", 1, d.seqlen_q, "seqlen_q, from q");
  detail::check_dim(out, "out", 2, d.heads, "heads, from q");
  detail::check_dim(out, "out", 3, d.head_dim_v, "head_dim_v, from v");
  ATTN_CHECK(d.heads_kv >= 1 && d.heads % d.heads_kv == 0, "k: heads_kv = ", d.heads_kv,
             " must divide the query heads = ", d.heads);
  return d;
}

const float* row(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h) {
  return t.as<float>() + b * t.stride[0] + s * t.stride[1] + h * t.stride[2];
}
float* row_mut(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h) {
  return t.as<float>() + b * t.stride[0] + s * t.stride[1] + h * t.stride[2];
}

float phi(float x) { return x > 0.0f ? x + 1.0f : std::exp(x); }

/// state += phi(k) v^T, normaliser += phi(k).
void accumulate(const float* k, const float* v, int d, int dv, float* state, float* normaliser, float* phi_k) {
  for (int i = 0; i < d; ++i) phi_k[i] = phi(k[i]);
  for (int i = 0; i < d; ++i) {
    normaliser[i] += phi_k[i];
    float* srow = state + std::int64_t(i) * dv;
    for (int e = 0; e < dv; ++e) srow[e] += phi_k[i] * v[e];
  }
}

/// out = phi(q)^T state / (phi(q) . normaliser); `empty` (no key yet) gives 0.
void read_out(const float* q, int d, int dv, const float* state, const float* normaliser, bool empty, float* out,
              float* phi_q) {
  std::fill(out, out + dv, 0.0f);
  if (empty) return;
  float den = 0.0f;
  for (int i = 0; i < d; ++i) {
    phi_q[i] = phi(q[i]);
    den += phi_q[i] * normaliser[i];
  }
  for (int i = 0; i < d; ++i) {
    const float* srow = state + std::int64_t(i) * dv;
    for (int e = 0; e < dv; ++e) out[e] += phi_q[i] * srow[e];
  }
  for (int e = 0; e < dv; ++e) out[e] /= den;
}

}  // namespace

void linear_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                      bool causal) {
  const Dims n = check_args(q, k, v, out);
  const int group = n.heads / n.heads_kv;
  // One task is a pass over Sk keys and Sq queries of D x Dv work; ask for ~64K multiply-adds
  // per thread so small problems do not wake the pool.
  const std::int64_t tasks = std::int64_t(n.batch) * n.heads_kv;
  const std::int64_t task_work = std::int64_t(n.seqlen_k + n.seqlen_q * group) * n.head_dim * n.head_dim_v;
  const int threads = int(std::clamp<std::int64_t>(tasks * task_work >> 16, 1, cpu::num_threads()));
  // Each thread's state, normaliser and scratch, allocated once per call.
  const std::int64_t per_thread = std::int64_t(n.head_dim) * (n.head_dim_v + 2);
  std::vector<float> buffers(std::size_t(per_thread * threads));
  cpu::parallel_for(tasks, threads, [&](std::int64_t task, int thread) {
    float* const state = buffers.data() + thread * per_thread;
    float* const normaliser = state + std::int64_t(n.head_dim) * n.head_dim_v;
    float* const scratch = normaliser + n.head_dim;
    const int b = int(task / n.heads_kv), hk = int(task % n.heads_kv);
    std::fill(state, scratch, 0.0f);
    const auto emit = [&](int i, bool empty) {
      for (int h = hk * group; h < (hk + 1) * group; ++h)
        read_out(row(q, b, i, h), n.head_dim, n.head_dim_v, state, normaliser, empty, row_mut(out, b, i, h), scratch);
    };
    const auto add_key = [&](int j) {
      accumulate(row(k, b, j, hk), row(v, b, j, hk), n.head_dim, n.head_dim_v, state, normaliser, scratch);
    };
    if (!causal) {
      for (int j = 0; j < n.seqlen_k; ++j) add_key(j);
      for (int i = 0; i < n.seqlen_q; ++i) emit(i, n.seqlen_k == 0);
      return;
    }
    // Query i sees keys j <= i + Sk - Sq: emit it right after that key enters the prefix sums.
    const int shift = n.seqlen_k - n.seqlen_q;
    int next_key = 0;
    for (int i = 0; i < n.seqlen_q; ++i) {
      const int last = std::min(i + shift, n.seqlen_k - 1);
      for (; next_key <= last; ++next_key) add_key(next_key);
      emit(i, i + shift < 0);
    }
  });
}

LinearAttentionState::LinearAttentionState(int batch, int heads_kv, int head_dim, int head_dim_v) {
  ATTN_CHECK(batch >= 1, "batch: expected >= 1, got ", batch);
  ATTN_CHECK(heads_kv >= 1, "heads_kv: expected >= 1, got ", heads_kv);
  ATTN_CHECK(head_dim >= 1 && head_dim_v >= 1, "head_dim: expected >= 1, got ", head_dim, " / ", head_dim_v);
  state_ = Tensor({batch, heads_kv, head_dim, head_dim_v}, DType::f32);
  normaliser_ = Tensor({batch, heads_kv, head_dim}, DType::f32);
  for (int b = 0; b < batch; ++b) reset(b);
}

void LinearAttentionState::reset(int b) {
  ATTN_CHECK(b >= 0 && b < state_.size(0), "b: expected a sequence in [0, ", state_.size(0), "), got ", b);
  const std::int64_t per_state = state_.numel() / state_.size(0), per_norm = normaliser_.numel() / normaliser_.size(0);
  std::fill_n(state_.as<float>() + b * per_state, per_state, 0.0f);
  std::fill_n(normaliser_.as<float>() + b * per_norm, per_norm, 0.0f);
}

std::int64_t LinearAttentionState::bytes_per_sequence() const {
  return std::int64_t(state_.nbytes() + normaliser_.nbytes()) / state_.size(0);
}

void LinearAttentionState::step(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out) {
  const Dims n = check_args(q, k, v, out);
  detail::check_dim(k, "k", 0, state_.size(0), "the state's batch");
  detail::check_dim(k, "k", 1, n.seqlen_q, "one key per query");
  detail::check_dim(k, "k", 2, state_.size(1), "the state's kv heads");
  detail::check_dim(k, "k", 3, state_.size(2), "the state's head_dim");
  detail::check_dim(v, "v", 3, state_.size(3), "the state's head_dim_v");
  const int group = n.heads / n.heads_kv, d = n.head_dim, dv = n.head_dim_v;
  std::vector<float> scratch(static_cast<std::size_t>(d));
  for (int b = 0; b < n.batch; ++b)
    for (int hk = 0; hk < n.heads_kv; ++hk) {
      float* state = state_.as<float>() + (std::int64_t(b) * n.heads_kv + hk) * d * dv;
      float* normaliser = normaliser_.as<float>() + (std::int64_t(b) * n.heads_kv + hk) * d;
      for (int s = 0; s < n.seqlen_q; ++s) {
        accumulate(row(k, b, s, hk), row(v, b, s, hk), d, dv, state, normaliser, scratch.data());
        for (int h = hk * group; h < (hk + 1) * group; ++h)
          read_out(row(q, b, s, h), d, dv, state, normaliser, false, row_mut(out, b, s, h), scratch.data());
      }
    }
}

}  // namespace attn::modules
