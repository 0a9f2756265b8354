#include "cache/serving_sim.hpp"

#include <algorithm>
#include <deque>
#include <random>
#include <vector>

#include "attn/block_manager.hpp"

namespace attn::cache {
namespace {

struct Request {
  std::int64_t arrival = 0;
  std::vector<std::int32_t> prompt;
  int output = 0;
};

std::vector<Request> make_trace(const SimConfig& c) {
  std::mt19937_64 rng(c.seed);
  std::exponential_distribution<double> gap(c.arrival_rate);
  std::uniform_int_distribution<int> plen(c.prompt_min, c.prompt_max), olen(c.output_min, c.output_max);
  std::uniform_int_distribution<std::int32_t> token(0, 31999);
  std::vector<std::vector<std::int32_t>> systems(std::size_t(c.shared_prefix > 0 ? c.num_prefixes : 0));
  for (auto& sys : systems) {
    sys.resize(std::size_t(c.shared_prefix));
    for (std::int32_t& x : sys) x = token(rng);
  }
  std::vector<Request> trace(std::size_t(c.num_requests));
  double t = 0;
  for (Request& r : trace) {
    t += gap(rng);
    r.arrival = std::int64_t(t);
    if (!systems.empty()) r.prompt = systems[rng() % systems.size()];
    const std::size_t head = r.prompt.size();
    r.prompt.resize(head + std::size_t(plen(rng)));
    for (std::size_t i = head; i < r.prompt.size(); ++i) r.prompt[i] = token(rng);
    r.output = olen(rng);
  }
  return trace;
}

/// A resident request: how many tokens it has produced, and its sequence in the manager.
struct Running {
  std::size_t request;
  int generated = 0;
  BlockManager::SeqId seq = -1;
  std::int64_t length = 0;
};

/// The policy-specific part: can a request be admitted, what it holds.
class Reservation {
 public:
  virtual ~Reservation() = default;
  /// Admits (reserving memory) or returns false; counts prefix-cache hits into `hit_tokens`.
  virtual bool admit(Running& r, std::span<const std::int32_t> tokens, std::size_t running,
                     std::int64_t& hit_tokens) = 0;
  /// One more token; false when there is no room (the caller preempts and retries).
  virtual bool grow(Running& r, std::int32_t token) = 0;
  virtual void release(Running& r) = 0;
  virtual std::int64_t reserved_slots(std::size_t running) const = 0;
  /// Slots holding a token (shared ones once); `tokens` is the sum of sequence lengths.
  virtual std::int64_t filled_slots(std::int64_t tokens) const = 0;
};

class ContiguousReservation final : public Reservation {
 public:
  explicit ContiguousReservation(const SimConfig& c) : max_seqlen_(c.max_seqlen), capacity_(c.memory_tokens / c.max_seqlen) {}
  bool admit(Running&, std::span<const std::int32_t>, std::size_t running, std::int64_t&) override {
    return std::int64_t(running) < capacity_;
  }
  bool grow(Running&, std::int32_t) override { return true; }  // max_seqlen was reserved up front
  void release(Running&) override {}
  std::int64_t reserved_slots(std::size_t running) const override { return std::int64_t(running) * max_seqlen_; }
  std::int64_t filled_slots(std::int64_t tokens) const override { return tokens; }  // nothing is shared

 private:
  std::int64_t max_seqlen_, capacity_;
};

class PagedReservation final : public Reservation {
 public:
  explicit PagedReservation(const SimConfig& c)
      : manager_({std::int32_t(c.memory_tokens / c.page_size), c.page_size, c.shared_prefix > 0}) {}
  bool admit(Running& r, std::span<const std::int32_t> tokens, std::size_t running, std::int64_t& hit_tokens) override {
    // Keep a page of headroom per running sequence so admissions do not force preemptions
    // on the very next decode step (vLLM keeps a similar watermark).
    if (manager_.pages_needed_to_add(tokens) + std::int64_t(running) > manager_.allocator().available()) return false;
    const BlockManager::Added added = manager_.add_sequence(tokens);
    r.seq = added.seq;
    hit_tokens += added.cached_tokens;
    return true;
  }
  bool grow(Running& r, std::int32_t token) override {
    try {
      manager_.append(r.seq, std::span<const std::int32_t>(&token, 1));
      return true;
    } catch (const OutOfPages&) {
      return false;
    }
  }
  void release(Running& r) override { manager_.free(r.seq); }
  std::int64_t reserved_slots(std::size_t) const override {
    const BlockAllocator& a = manager_.allocator();
    return std::int64_t(a.num_pages() - a.available()) * manager_.page_size();
  }
  std::int64_t filled_slots(std::int64_t tokens) const override {
    // Without prefix caching no page is shared, and the sum of lengths is exact (and cheap).
    return manager_.config().prefix_caching ? manager_.stats().slots_filled : tokens;
  }

 private:
  BlockManager manager_;
};

SimResult run(const SimConfig& c, const std::vector<Request>& trace, Reservation& policy) {
  SimResult res;
  std::deque<std::size_t> waiting;
  std::vector<std::vector<std::int32_t>> produced(trace.size());  // generated tokens, kept across preemption
  std::vector<Running> running;
  std::size_t next_arrival = 0, finished = 0;
  double filled_sum = 0, reserved_sum = 0, running_sum = 0;
  std::mt19937_64 rng(c.seed ^ 0x5eedull);
  std::uniform_int_distribution<std::int32_t> token(0, 31999);
  for (std::int64_t step = 0; finished < trace.size(); ++step) {
    while (next_arrival < trace.size() && trace[next_arrival].arrival <= step) waiting.push_back(next_arrival++);
    // Admit in arrival order; a preempted request re-enters with what it had generated.
    while (!waiting.empty()) {
      const std::size_t i = waiting.front();
      std::vector<std::int32_t> tokens = trace[i].prompt;
      tokens.insert(tokens.end(), produced[i].begin(), produced[i].end());
      Running r{i, int(produced[i].size()), -1, std::int64_t(tokens.size())};
      if (!policy.admit(r, tokens, running.size(), res.prefix_hit_tokens)) break;
      res.prompt_tokens += std::int64_t(tokens.size());
      running.push_back(r);
      waiting.pop_front();
    }
    // Decode one token for every resident sequence, preempting the newest when out of room.
    for (std::size_t k = 0; k < running.size();) {
      const std::int32_t t = token(rng);
      if (!policy.grow(running[k], t)) {
        Running victim = running.back();
        running.pop_back();
        policy.release(victim);
        waiting.push_front(victim.request);
        ++res.preemptions;
        continue;  // retry k (unless k itself was the victim, then the loop ends)
      }
      Running& r = running[k];
      produced[r.request].push_back(t);
      ++r.generated;
      ++r.length;
      ++res.tokens_generated;
      ++k;
    }
    std::int64_t tokens = 0;
    for (const Running& r : running) tokens += r.length;
    filled_sum += double(policy.filled_slots(tokens));
    reserved_sum += double(policy.reserved_slots(running.size()));
    running_sum += double(running.size());
    res.max_running = std::max<std::int64_t>(res.max_running, std::int64_t(running.size()));
    // Finished sequences leave at the end of the step.
    for (std::size_t k = 0; k < running.size();) {
      if (running[k].generated >= trace[running[k].request].output) {
        policy.release(running[k]);
        running.erase(running.begin() + std::ptrdiff_t(k));
        ++finished;
      } else {
        ++k;
      }
    }
    res.steps = step + 1;
  }
  res.reserved_used_fraction = reserved_sum > 0 ? filled_sum / reserved_sum : 1.0;
  res.budget_used_fraction = filled_sum / (double(res.steps) * double(c.memory_tokens));
  res.mean_running = running_sum / double(res.steps);
  return res;
}

}  // namespace

void SimConfig::validate() const {
  ATTN_CHECK(num_requests >= 1, "requests: expected >= 1, got ", num_requests);
  ATTN_CHECK(arrival_rate > 0, "rate: expected > 0 requests per step, got ", arrival_rate);
  ATTN_CHECK(prompt_min >= 1 && prompt_min <= prompt_max, "prompt: expected 1 <= min <= max, got ", prompt_min, ":",
             prompt_max);
  ATTN_CHECK(output_min >= 1 && output_min <= output_max, "output: expected 1 <= min <= max, got ", output_min, ":",
             output_max);
  ATTN_CHECK(shared_prefix >= 0, "shared-prefix: expected >= 0, got ", shared_prefix);
  ATTN_CHECK(num_prefixes >= 1, "prefixes: expected >= 1, got ", num_prefixes);
  ATTN_CHECK(max_seqlen >= shared_prefix + prompt_max + output_max,
             "max-seqlen: expected >= shared prefix + prompt max + output max = ", shared_prefix + prompt_max + output_max,
             ", got ", max_seqlen);
  ATTN_CHECK(page_size >= 1, "page-size: expected >= 1, got ", page_size);
  ATTN_CHECK(memory_tokens >= max_seqlen, "memory: expected room for at least one max_seqlen sequence (",
             max_seqlen, " tokens), got ", memory_tokens, " tokens");
  ATTN_CHECK(memory_tokens / page_size <= INT32_MAX, "memory: at most 2^31 - 1 pages, got ", memory_tokens / page_size);
}

SimReport simulate(const SimConfig& c) {
  c.validate();
  const std::vector<Request> trace = make_trace(c);
  ContiguousReservation contiguous(c);
  PagedReservation paged(c);
  return {run(c, trace, contiguous), run(c, trace, paged)};
}

}  // namespace attn::cache
