#include "threadpool.h"

#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpuRelax() { _mm_pause(); }
#else
static inline void cpuRelax() {}
#endif

namespace dg {

namespace {
struct Lock {
  pthread_mutex_t* m;
  explicit Lock(pthread_mutex_t* mu) : m(mu) { pthread_mutex_lock(m); }
  ~Lock() { pthread_mutex_unlock(m); }
};
}  // namespace

// How long an idle worker spins before sleeping: long enough to cover the gaps between the ops
// of one forward pass, short enough not to burn a core between requests.
constexpr auto kSpin = std::chrono::microseconds(2000);

ThreadPool::ThreadPool(int threads) : nthreads_(threads < 1 ? 1 : threads) {
  for (int i = 1; i < nthreads_; i++) workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    Lock lk(&mu_);
    stop_.store(true);
    generation_.fetch_add(1);
    pthread_cond_broadcast(&wake_);
  }
  for (auto& t : workers_) t.join();
  pthread_cond_destroy(&wake_);
  pthread_mutex_destroy(&mu_);
}

static inline void chunkOf(int64_t n, int parts, int i, int64_t& b, int64_t& e) {
  b = n * i / parts;
  e = n * (i + 1) / parts;
}

void ThreadPool::parallelFor(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  if (nthreads_ == 1 || n == 1) {
    fn(0, n, 0);
    return;
  }
  {
    // The lock orders the job's publication against a worker deciding to sleep.
    Lock lk(&mu_);
    job_ = &fn;
    jobN_ = n;
    pending_.store(nthreads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) pthread_cond_broadcast(&wake_);
  }
  int64_t b, e;
  chunkOf(n, nthreads_, 0, b, e);
  if (b < e) fn(b, e, 0);
  while (pending_.load(std::memory_order_acquire) != 0) cpuRelax();
}

void ThreadPool::workerLoop(int id) {
  uint64_t seen = 0;
  for (;;) {
    // Spin for the next loop, then sleep.
    auto until = std::chrono::steady_clock::now() + kSpin;
    uint64_t g;
    int spins = 0;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      cpuRelax();
      if (++spins == 1024) {
        spins = 0;
        if (std::chrono::steady_clock::now() > until) break;
      }
    }
    if (g == seen) {
      Lock lk(&mu_);
      sleepers_.fetch_add(1, std::memory_order_acq_rel);
      while (generation_.load(std::memory_order_acquire) == seen) pthread_cond_wait(&wake_, &mu_);
      sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      g = generation_.load(std::memory_order_acquire);
    }
    if (stop_.load()) return;
    seen = g;
    const std::function<void(int64_t, int64_t, int)>* job;
    int64_t n;
    {
      Lock lk(&mu_);
      job = job_;
      n = jobN_;
    }
    int64_t b, e;
    chunkOf(n, nthreads_, id, b, e);
    if (b < e) (*job)(b, e, id);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace dg
