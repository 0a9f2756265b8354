// Timing CPU work in a forked child process.
//
// getrusage's ru_maxrss is a high-water mark for the whole process and never goes down, so a
// bench that ran its rows one after another in one process could only report the largest. Each
// row therefore runs in a child forked from a small parent that has not touched any kernel or
// large buffer: the child's peak is the row's own allocations plus the parent's few MiB (reported
// as base_rss_mib). A crash in a row also stays in its child.
//
// Fork from a process that has not run kernels yet: a child gets only the forking thread, so a
// CPU thread pool the parent had already started would exist in the child without its threads.
// `attn bench` keeps its parent free of kernel calls for this reason. Not for CUDA either: a
// process must not fork after initialising CUDA, so GPU suites time in-process.
#pragma once

#include <array>
#include <functional>

namespace attn::cli {

struct RepeatPolicy {
  int min_runs = 3;  ///< timed runs, after one untimed warm-up
  int max_runs = 10;
  double target_seconds = 1.0;  ///< stop repeating once the timed runs took this long
  bool single_run = false;      ///< one timed run, no warm-up (rows that take many seconds)
};

struct Measurement {
  double median_ms = 0;
  double min_ms = 0;
  int runs = 0;
  double peak_rss_mib = 0;  ///< the child's getrusage ru_maxrss
  double base_rss_mib = 0;  ///< its resident size when it started, before the row allocated
};

/// In a forked child: runs `setup` (allocations, inputs), then times the call it returns as the
/// policy says. An attn::Error thrown in the child is thrown again here with the same message.
Measurement measure_in_child(const std::function<std::function<void()>()>& setup, const RepeatPolicy& policy);

/// In a forked child: runs `fn`, which fills up to 8 numbers, and returns them.
std::array<double, 8> compute_in_child(const std::function<void(std::array<double, 8>&)>& fn);

}  // namespace attn::cli
