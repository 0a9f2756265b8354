// KV-cache memory arithmetic and the serving simulation behind `attn mem`.
#include <string>

#include <gtest/gtest.h>

#include "attn/error.hpp"
#include "cache/memory_model.hpp"
#include "cache/serving_sim.hpp"

namespace attn::cache {
namespace {

constexpr std::int64_t kMiB = 1 << 20, kGiB = 1 << 30;

TEST(MemoryModel, PresetsFollowTheDesignFormula) {
  // 2 * L * S * H_kv * d * b
  EXPECT_EQ(kv_cache_bytes(find_preset("llama3-8b"), 8192, 2), 2LL * 32 * 8192 * 8 * 128 * 2);
  EXPECT_EQ(kv_cache_bytes(find_preset("llama3-8b"), 8192, 2), 1 * kGiB);
  EXPECT_EQ(kv_cache_bytes(find_preset("llama2-7b"), 8192, 2), 4 * kGiB);
  EXPECT_EQ(kv_cache_bytes(find_preset("falcon-7b"), 8192, 2), 64 * kMiB);
  // MLA: L * S * (kv_lora_rank + rope_dim) * b
  EXPECT_EQ(kv_cache_bytes(find_preset("deepseek-v3"), 8192, 2), 61LL * 8192 * (512 + 64) * 2);
  EXPECT_STREQ(find_preset("llama3-8b").kind(), "GQA");
  EXPECT_STREQ(find_preset("llama2-7b").kind(), "MHA");
  EXPECT_STREQ(find_preset("falcon-7b").kind(), "MQA");
  EXPECT_STREQ(find_preset("deepseek-v3").kind(), "MLA");
  EXPECT_EQ(kv_bytes_per_token(find_preset("llama3-8b"), 1), 64 * 1024);
}

TEST(MemoryModel, ErrorsNameTheArgument) {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { find_preset("gpt-5"); }).find("preset"), std::string::npos);
  EXPECT_NE(message([] { ModelShape{"x", 32, 32, 6, 128, 0, 0}.validate(); }).find("kv-heads"), std::string::npos);
  EXPECT_NE(message([] { ModelShape{"x", 0, 32, 8, 128, 0, 0}.validate(); }).find("layers"), std::string::npos);
  EXPECT_NE(message([] { parse_cache_dtype_bytes("f64"); }).find("dtype"), std::string::npos);
  EXPECT_EQ(parse_cache_dtype_bytes("bf16"), 2);
  EXPECT_EQ(parse_cache_dtype_bytes("fp8"), 1);
}

SimConfig small_trace() {
  SimConfig c;
  c.num_requests = 200;
  c.arrival_rate = 1.0;
  c.prompt_min = 16;
  c.prompt_max = 512;
  c.output_min = 16;
  c.output_max = 256;
  c.max_seqlen = 1024;
  c.memory_tokens = 16384;
  return c;
}

TEST(ServingSim, PagedWastesOnlyTheLastPartialPage) {
  const SimConfig c = small_trace();
  const SimReport r = simulate(c);
  EXPECT_GT(r.paged.reserved_used_fraction, 0.96);  // the target: under 4% waste
  EXPECT_LT(r.contiguous.reserved_used_fraction, 0.6);
  EXPECT_GT(r.paged.mean_running, 1.5 * r.contiguous.mean_running);
  EXPECT_LE(r.contiguous.max_running, c.memory_tokens / c.max_seqlen);
  EXPECT_LT(r.paged.steps, r.contiguous.steps);
  EXPECT_LE(r.paged.budget_used_fraction, 1.0);
  // Every request ran to the end under both policies (preempted work is regenerated, so
  // paged may generate more in total).
  EXPECT_GE(r.paged.tokens_generated, r.contiguous.tokens_generated);
  EXPECT_EQ(r.contiguous.preemptions, 0);
}

TEST(ServingSim, SeededAndRepeatable) {
  const SimReport a = simulate(small_trace()), b = simulate(small_trace());
  EXPECT_EQ(a.paged.steps, b.paged.steps);
  EXPECT_EQ(a.paged.reserved_used_fraction, b.paged.reserved_used_fraction);
  SimConfig other = small_trace();
  other.seed = 2;
  EXPECT_NE(simulate(other).contiguous.tokens_generated, a.contiguous.tokens_generated);
}

TEST(ServingSim, SmallerPagesWasteLess) {
  SimConfig c = small_trace();
  c.page_size = 64;
  const double big = simulate(c).paged.reserved_used_fraction;
  c.page_size = 4;
  EXPECT_GT(simulate(c).paged.reserved_used_fraction, big);
}

TEST(ServingSim, SharedSystemPromptsHitThePrefixCache) {
  SimConfig c = small_trace();
  const SimReport plain = simulate(c);
  EXPECT_EQ(plain.paged.prefix_hit_tokens, 0);
  c.shared_prefix = 256;
  c.num_prefixes = 2;
  c.max_seqlen = 256 + 512 + 256;
  const SimReport shared = simulate(c);
  // Most of each 256-token system prompt (whole pages) comes from the cache...
  EXPECT_GT(shared.paged.prefix_hit_tokens, std::int64_t(c.num_requests) * 200);
  EXPECT_EQ(shared.contiguous.prefix_hit_tokens, 0);
  // ...and one physical copy serves many sequences, so shared pages hold many sequences' tokens.
  EXPECT_GT(shared.paged.reserved_used_fraction, 0.96);
  EXPECT_GT(shared.paged.mean_running, 2.0 * shared.contiguous.mean_running);
}

TEST(ServingSim, RejectsBadConfigNamingTheField) {
  SimConfig c = small_trace();
  c.max_seqlen = 100;  // shorter than the longest request
  try {
    simulate(c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max-seqlen"), std::string::npos);
  }
}

}  // namespace
}  // namespace attn::cache
