// A fixed pool of worker threads running one parallel loop at a time, built to stay fast when the
// machine is busy with other work.
//
// - The loop is cut into chunks that any participant claims from one atomic counter, and the
//   calling thread takes part. A worker that the kernel has not scheduled claims nothing, so the
//   caller (or a running worker) does its share instead of waiting for it; only a chunk already
//   claimed by a thread that was then preempted is waited for.
// - Waiting spins briefly (decode runs a few hundred short loops per token, and a futex wake-up
//   costs microseconds, tens on a virtual machine), then sleeps on a futex, so a waiting thread
//   gives its core back to the thread that has the work, ours or another process's. A worker's
//   spin window counts from the end of the loop in flight, so it does not fall asleep while the
//   caller finishes a long last chunk and miss the next loop.
// - When the machine has more runnable threads than processors (other processes busy, or more
//   threads asked for than there are cores), the pool uses fewer workers for a while: a worker
//   that is not running cannot help, and one that spins steals the time slice of one that could.
//
// Sleeping uses the futex system call directly (Linux) rather than std::condition_variable, whose
// wait() needs GCC 12's libstdc++ (GLIBCXX_3.4.30) and would narrow the distributions the prebuilt
// binary loads on.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace dg {

class ThreadPool {
 public:
  // Adaptive: workers beyond the usable processors are parked, and the load check parks and
  // unparks workers as the machine gets busy or free. Fixed (tests): every worker always takes part.
  enum class Mode { Adaptive, Fixed };
  explicit ThreadPool(int threads, Mode mode = Mode::Adaptive);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Threads the pool was made with (the caller counts as one).
  int size() const { return nthreads_; }
  // Calls fn(begin, end, worker) over [0, n) split into contiguous chunks and returns when every
  // chunk is done. `worker` in [0, size()) names the thread running the chunk (0 = the caller).
  // Which thread runs which chunk, and where chunks begin, vary from call to call; each index is
  // run exactly once. One caller at a time (each model's engine serialises its passes).
  void parallelFor(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

  // Counters for tests and benchmarks.
  struct Stats {
    uint64_t loops = 0;         // parallel loops run
    uint64_t callerChunks = 0;  // chunks the caller ran
    uint64_t workerChunks = 0;  // chunks the workers ran
    uint64_t callerSleeps = 0;  // times the caller slept waiting for a preempted worker's chunk
    uint64_t workerSleeps = 0;  // times a worker slept waiting for the next loop
    int activeWorkers = 0;      // workers in use now (size() - 1 when the machine is not oversubscribed)
  };
  Stats stats() const;

 private:
  void workerLoop(int id);
  uint64_t runChunks(uint32_t gen, int who);
  void checkLoad();
  void setActiveWorkers(int n);

  const int nthreads_;
  std::vector<std::thread> workers_;

  // The job. Written by the caller before `claim_` announces it, read by a worker only after a
  // successful claim (the caller replaces it only after every chunk is done).
  std::atomic<const std::function<void(int64_t, int64_t, int)>*> fn_{nullptr};
  std::atomic<int64_t> n_{0};

  // Generation (32 bits) | chunk count (16 bits) | next chunk to hand out (16 bits).
  alignas(64) std::atomic<uint64_t> claim_{0};
  // Chunks finished in the current job; the caller sleeps on it (futex word).
  alignas(64) std::atomic<uint32_t> done_{0};
  std::atomic<uint32_t> callerWaiting_{0};
  // Bumped for every job; idle workers sleep on it (futex word).
  alignas(64) std::atomic<uint32_t> wakeSeq_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  // Workers with id <= activeWorkers_ take jobs; the others sleep on activeSeq_ (futex word).
  std::atomic<int> activeWorkers_{0};
  std::atomic<uint32_t> activeSeq_{0};
  int maxActiveWorkers_ = 0;  // size() - 1, capped by the processors this process may use
  bool adaptive_ = true;

  // Load check, run by the caller every few tens of milliseconds: how long the pool's threads
  // waited for a processor (run-queue wait, from the kernel's schedstat) since the last look.
  std::vector<std::atomic<int>> workerTids_;  // [i]: thread id of worker i + 1 (0 until it runs)
  std::vector<int64_t> workerWaitNs_;         // run-queue wait at the last look (-1: none yet)
  int callerTid_ = 0;
  int64_t callerWaitNs_ = -1;
  int64_t lastCheckNs_ = 0;
  int64_t lastChangeNs_ = 0;
  int64_t probeBackoffNs_ = 0;  // how long to wait before trying one more worker again
  bool schedstat_ = true;       // false when the kernel does not report run-queue waits
  // Loops left to cut finely: set when the last loops showed a thread falling behind.
  int fineLoops_ = 0;

  std::atomic<uint64_t> loops_{0}, callerChunks_{0}, workerChunks_{0}, callerSleeps_{0}, workerSleeps_{0};
};

// Processors this process may run on: the affinity mask, capped by a cgroup CPU quota
// (cgroup v2 cpu.max or v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up, at least 1.
int usableProcessors();

// The cgroup directories whose limits apply to this process for a controller (v2 when `controller`
// is empty, else the v1 hierarchy naming it): its own cgroup first, then each ancestor up to the
// root (a limit may be set on any of them); empty when /proc/self/cgroup names none.
std::vector<std::string> cgroupDirs(const char* controller);

}  // namespace dg
