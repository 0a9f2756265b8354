#include "cpu/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "attn/error.hpp"

namespace attn::cpu {
namespace {

// Set while a thread runs tasks, so a nested parallel_for runs inline instead of waiting on
// the pool it is part of.
thread_local bool inside_task = false;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) { start(threads); }
  ~ThreadPool() { stop(); }

  // Lock-free: tasks ask for the size while their loop holds run_mutex_.
  int size() const { return size_.load(std::memory_order_relaxed); }

  void resize(int threads) {
    std::lock_guard run(run_mutex_);
    stop();
    start(threads);
  }

  void run(std::int64_t n, int max_threads, TaskFn fn, void* context) {
    if (n <= 0) return;
    std::unique_lock run(run_mutex_, std::defer_lock);
    if (inside_task || max_threads <= 1 || n == 1 || !run.try_lock()) {
      run_serial(n, fn, context);
      return;
    }
    const int threads = int(std::min<std::int64_t>({std::int64_t(max_threads), n, std::int64_t(workers_.size()) + 1}));
    if (threads <= 1) {
      run.unlock();
      run_serial(n, fn, context);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      fn_ = fn;
      context_ = context;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      participants_ = threads;
      pending_ = threads - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static void run_serial(std::int64_t n, TaskFn fn, void* context) {
    const bool was_inside = inside_task;
    inside_task = true;
    try {
      for (std::int64_t i = 0; i < n; ++i) fn(context, i, 0);
    } catch (...) {
      inside_task = was_inside;
      throw;
    }
    inside_task = was_inside;
  }

  // Takes indices until none are left; the first exception stops everyone's hand-out.
  void work(int thread) {
    inside_task = true;
    for (;;) {
      const std::int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_) break;
      try {
        fn_(context_, i, thread);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_, std::memory_order_relaxed);
      }
    }
    inside_task = false;
  }

  // `seen` starts at the generation current when the worker was started: a worker born after
  // earlier loops (set_num_threads) must not take the last loop's generation for a new one.
  // It did: it then ran into the next loop's indices, counted itself out of pending_ once for
  // the stale generation and once for the real one, and run() could wait on pending_ == -1.
  void worker_loop(int thread, std::uint64_t seen) {
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (thread >= participants_) continue;
      }
      work(thread);
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  void start(int threads) {
    stopping_ = false;
    // generation_ only moves in run(), under run_mutex_, which resize() holds here.
    const std::uint64_t current = generation_;
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t, current] { worker_loop(t, current); });
    size_.store(threads, std::memory_order_relaxed);
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& w : workers_) w.join();
    workers_.clear();
  }

  std::mutex run_mutex_;  // one loop at a time
  std::mutex mutex_;      // guards the fields below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::atomic<int> size_{1};
  bool stopping_ = false;
  std::uint64_t generation_ = 0;
  TaskFn fn_ = nullptr;
  void* context_ = nullptr;
  std::int64_t n_ = 0;
  std::atomic<std::int64_t> next_{0};
  int participants_ = 0;
  int pending_ = 0;
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* env = std::getenv("ATTN_NUM_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    ATTN_CHECK(*end == '\0' && n >= 1 && n <= 4096, "ATTN_NUM_THREADS: expected an integer >= 1, got '", env, "'");
    return int(n);
  }
  return std::max(1, int(std::thread::hardware_concurrency()));
}

ThreadPool& pool() {
  static ThreadPool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) {
  ATTN_CHECK(n >= 1, "set_num_threads: expected >= 1, got ", n);
  pool().resize(n);
}

void parallel_for_raw(std::int64_t n, int max_threads, TaskFn fn, void* context) {
  pool().run(n, max_threads, fn, context);
}

}  // namespace attn::cpu
