#include "measure.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <vector>

#include "attn/error.hpp"

namespace attn::cli {
namespace {

/// What a child sends back through its pipe, in one write (smaller than PIPE_BUF, so atomic).
struct Wire {
  int ok = 0;
  std::array<double, 8> values{};
  double start_rss_mib = 0;
  double peak_rss_mib = 0;
  char message[400] = {};
};
static_assert(sizeof(Wire) < 4096);

// A row that runs this long is stuck (a deadlock, say), not slow: the child is stopped so the
// other rows still run. The largest preset row takes well under a minute.
constexpr unsigned kChildSeconds = 900;

double maxrss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

/// Forks, runs `fn` in the child, and returns the child's Wire; errors re-thrown here.
Wire run_child(const std::function<void(Wire&)>& fn) {
  // Buffered output would otherwise be printed twice, once by each process.
  std::cout.flush();
  std::fflush(nullptr);
  int fds[2];
  ATTN_CHECK(pipe(fds) == 0, "bench: pipe failed: ", std::strerror(errno));
  const pid_t pid = fork();
  ATTN_CHECK(pid >= 0, "bench: fork failed: ", std::strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    alarm(kChildSeconds);
    Wire w;
    w.start_rss_mib = maxrss_mib();
    try {
      fn(w);
      w.ok = 1;
    } catch (const std::exception& e) {
      std::snprintf(w.message, sizeof(w.message), "%s", e.what());
    }
    w.peak_rss_mib = maxrss_mib();
    const ssize_t n = write(fds[1], &w, sizeof(w));
    _exit(n == ssize_t(sizeof(w)) ? 0 : 1);  // no atexit handlers, no gtest teardown in the child
  }
  close(fds[1]);
  Wire w;
  std::size_t got = 0;
  while (got < sizeof(w)) {
    const ssize_t n = read(fds[0], reinterpret_cast<char*>(&w) + got, sizeof(w) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += std::size_t(n);
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
    detail::fail("bench: the row ran longer than ", kChildSeconds, " s and was stopped");
  if (WIFSIGNALED(status)) detail::fail("bench: the measuring child died from signal ", WTERMSIG(status));
  ATTN_CHECK(got == sizeof(w), "bench: the measuring child exited without a result");
  if (!w.ok) throw Error(w.message);
  return w;
}

}  // namespace

Measurement measure_in_child(const std::function<std::function<void()>()>& setup, const RepeatPolicy& policy) {
  const Wire w = run_child([&](Wire& out) {
    using Clock = std::chrono::steady_clock;
    const std::function<void()> call = setup();
    if (!policy.single_run) call();  // warm-up: page faults, thread start-up, caches
    std::vector<double> ms;
    double total = 0;
    while (ms.empty() || (!policy.single_run && int(ms.size()) < policy.max_runs &&
                          (int(ms.size()) < policy.min_runs || total < policy.target_seconds))) {
      const auto t0 = Clock::now();
      call();
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      ms.push_back(s * 1e3);
      total += s;
    }
    std::sort(ms.begin(), ms.end());
    const std::size_t n = ms.size();
    out.values[0] = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
    out.values[1] = ms.front();
    out.values[2] = double(n);
  });
  return {w.values[0], w.values[1], int(w.values[2]), w.peak_rss_mib, w.start_rss_mib};
}

std::array<double, 8> compute_in_child(const std::function<void(std::array<double, 8>&)>& fn) {
  return run_child([&](Wire& out) { fn(out.values); }).values;
}

}  // namespace attn::cli
