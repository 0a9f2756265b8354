// A tiny fork-join parallel-for for the layers until src/cpu's thread pool is merged: it starts
// threads per call (tens of microseconds), which is noise next to the matrix products it splits.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace attn::modules::detail {

template <class Body>
void parallel_for(std::int64_t n, std::int64_t grain, Body&& body) {
  if (n <= 0) return;
  const std::int64_t hw = std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  const std::int64_t chunks = std::min(hw, std::max<std::int64_t>(1, n / std::max<std::int64_t>(1, grain)));
  if (chunks == 1) {
    body(std::int64_t(0), n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(std::size_t(chunks - 1));
  const auto chunk_begin = [&](std::int64_t c) { return n * c / chunks; };
  for (std::int64_t c = 1; c < chunks; ++c)
    workers.emplace_back([&body, b = chunk_begin(c), e = chunk_begin(c + 1)] { body(b, e); });
  body(std::int64_t(0), chunk_begin(1));
  for (std::thread& t : workers) t.join();
}

}  // namespace attn::modules::detail
