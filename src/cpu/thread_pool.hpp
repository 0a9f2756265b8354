// A persistent pool of std::threads for the CPU kernels.
//
// parallel_for hands out indices 0..n-1 one at a time from an atomic counter (dynamic
// scheduling: work units of attention vary a lot in cost under masks and varlen). The calling
// thread takes part as thread 0, so `thread` is in [0, threads used) and kernels index their
// per-thread workspace slice with it. An exception thrown by a task stops the hand-out and is
// rethrown to the caller once every thread has left the loop.
//
// Size: ATTN_NUM_THREADS at start-up, else std::thread::hardware_concurrency(); set_num_threads
// changes it. A parallel_for issued from inside a task, or while another caller's loop runs,
// runs serially on the calling thread as thread 0 (never deadlocks).
#pragma once

#include <cstdint>
#include <type_traits>

namespace attn::cpu {

int num_threads();
/// n >= 1; throws attn::Error otherwise. Waits for a running loop to finish, so it must not
/// be called from inside a task.
void set_num_threads(int n);

using TaskFn = void (*)(void* context, std::int64_t index, int thread);
/// Runs fn(context, i, thread) for i in [0, n) on at most max_threads threads.
void parallel_for_raw(std::int64_t n, int max_threads, TaskFn fn, void* context);

/// fn(std::int64_t index, int thread); the lambda's type makes every instantiation distinct,
/// so this is safe to call from code compiled for any instruction set.
template <class F>
void parallel_for(std::int64_t n, int max_threads, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  parallel_for_raw(
      n, max_threads, [](void* c, std::int64_t i, int t) { (*static_cast<Fn*>(c))(i, t); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}
template <class F>
void parallel_for(std::int64_t n, F&& fn) {
  parallel_for(n, num_threads(), static_cast<F&&>(fn));
}

}  // namespace attn::cpu
