// A persistent thread pool for the kernels: pool_threads() - 1 workers plus the calling thread
// (MLX's stream thread, which runs our primitives' tasks). Workers spin for a few hundred
// microseconds after a job, then sleep on a condition variable: a decode step runs a job every
// few tens of microseconds (each linear, each Gated DeltaNet layer), and waking a sleeping
// worker costs about as much as a small job.

#include "kernels.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mlxnk {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

int threads_from_env_or_cpus() {
  if (const char* v = std::getenv("MLX_NODE_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (end != v && n >= 1) return static_cast<int>(n > 256 ? 256 : n);
  }
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n > 256 ? 256 : n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n > 256 ? 256 : n);
}

struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  // Workers inside run(); each leaves with its last access to the job, so the caller may
  // return once this is 0 and no worker can join any more.
  std::atomic<int> users{0};
};

void run(Job* job) {
  for (;;) {
    const int64_t i = job->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job->n) return;
    (*job->fn)(i);
  }
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) std::thread([this] { worker(); }).detach();
  }

  int threads() const { return threads_; }

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> submit(submit_, std::defer_lock);
    if (n == 1 || threads_ <= 1 || !submit.try_lock()) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    Job job;
    job.fn = &fn;
    job.n = n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run(&job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = nullptr;  // no worker joins it any more
    }
    // A worker still inside run() is finishing its last task. Waiting by spinning (yielding
    // now and then, so that a worker the scheduler preempted gets a core back) costs less
    // than sleeping and being woken, which takes longer than most jobs' tails.
    for (int spins = 1; job.users.load(std::memory_order_acquire) != 0; ++spins) {
      cpu_relax();
      if (spins % 64 == 0) std::this_thread::yield();
    }
  }

 private:
  void worker() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(400);
      while (generation_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() < spin_until) {
        for (int i = 0; i < 16; ++i) cpu_relax();
        // The thread building the next graph may be waiting for this core.
        std::this_thread::yield();
      }
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        job = job_;
        if (job == nullptr) continue;
        job->users.fetch_add(1, std::memory_order_relaxed);
      }
      run(job);
      job->users.fetch_sub(1, std::memory_order_release);  // the last access to the job
    }
  }

  const int threads_;
  std::mutex submit_;  // one job at a time
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  Job* job_ = nullptr;
};

Pool& pool() {
  // Never destroyed: detached workers may still wait on it while the process exits.
  static Pool* p = new Pool(threads_from_env_or_cpus());
  return *p;
}

}  // namespace

int pool_threads() { return pool().threads(); }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  pool().parallel_for(n, fn);
}

}  // namespace mlxnk
