// A serving trace replayed against two ways of reserving KV memory, to show what paging buys:
//   contiguous  every admitted sequence reserves max_seqlen slots up front
//   paged       sequences take page_size-token pages as they grow (the real BlockManager)
// Time advances in steps; a step prefills every newly admitted request and decodes one
// token for every running one. Requests arrive as a Poisson process with uniform prompt and
// output lengths (seeded, so runs repeat). When a decode step runs out of pages, the most
// recently admitted sequence is preempted and later recomputed (vLLM's policy).
// With shared_prefix > 0 every prompt starts with one of num_prefixes system prompts, and the
// paged side reuses their cached pages (prefix caching) where contiguous copies them.
#pragma once

#include <cstdint>

namespace attn::cache {

struct SimConfig {
  std::uint64_t seed = 1;
  int num_requests = 1000;
  double arrival_rate = 2.0;  ///< mean requests per step
  int prompt_min = 32, prompt_max = 2048;
  int output_min = 32, output_max = 1024;
  int max_seqlen = 4096;              ///< contiguous reservation per sequence (the context limit)
  std::int64_t memory_tokens = 1 << 17;  ///< KV budget, in token slots (all layers of a token = 1 slot)
  int page_size = 16;
  int shared_prefix = 0;  ///< tokens of system prompt before every prompt (0 = none)
  int num_prefixes = 4;   ///< distinct system prompts

  /// Throws attn::Error naming the first bad field.
  void validate() const;
};

struct SimResult {
  /// Sum over steps of slots holding a token / sum over steps of slots reserved (1 = no waste).
  /// A page shared by several sequences counts once.
  double reserved_used_fraction = 0;
  /// Sum over steps of tokens stored / (steps * memory_tokens): how full the whole budget was.
  double budget_used_fraction = 0;
  double mean_running = 0;  ///< sequences resident per step, on average
  std::int64_t max_running = 0;
  std::int64_t steps = 0;  ///< until every request finished
  std::int64_t preemptions = 0;
  std::int64_t tokens_generated = 0;
  std::int64_t prompt_tokens = 0;      ///< prompt tokens admitted (again after a preemption)
  std::int64_t prefix_hit_tokens = 0;  ///< of those, found in the prefix cache (not recomputed)
};

struct SimReport {
  SimResult contiguous, paged;
};

SimReport simulate(const SimConfig& config);

}  // namespace attn::cache
