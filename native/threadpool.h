// A fixed pool of worker threads running one parallel loop at a time. The calling thread
// takes part, so a pool of N threads uses N-1 helpers. Decode runs a few hundred short loops per
// token, so waking by condition variable (tens of microseconds each) would dominate: workers spin
// on an atomic generation counter for a while after each loop and only then go to sleep.
// Sleeping uses pthread's mutex and condition variable rather than std::condition_variable,
// whose wait() needs GCC 12's libstdc++ (GLIBCXX_3.4.30) and would narrow the distributions the
// prebuilt binary loads on.
#pragma once
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace dg {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return nthreads_; }
  // Calls fn(begin, end, worker) over [0, n) split into contiguous chunks, one per worker,
  // and returns when every chunk is done. `worker` is in [0, size()).
  void parallelFor(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

 private:
  void workerLoop(int id);
  int nthreads_;
  std::vector<std::thread> workers_;
  pthread_mutex_t mu_ = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t wake_ = PTHREAD_COND_INITIALIZER;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t jobN_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace dg
