// The thread pool on its own: every index of every loop runs exactly once whatever the thread
// count and the machine's load; more threads than processors leave the extra ones parked; on a
// busy machine the load check parks workers and unparks them when it frees up. Built and run by
// scripts/test-kernels.sh (also under ThreadSanitizer). Prints "N passed, M failed" last.
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "threadpool.h"

using namespace dg;
using Clock = std::chrono::steady_clock;

static int passed = 0, failed = 0;
static void check(bool ok, const std::string& what) {
  if (ok) {
    passed++;
  } else {
    failed++;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// Loops of random sizes: every index exactly once, chunks contiguous and inside [0, n), and the
// worker id inside [0, size()).
static void testExactlyOnce(int threads, ThreadPool::Mode mode, int loops) {
  ThreadPool pool(threads, mode);
  std::mt19937 rng(uint32_t(threads * 7 + int(mode)));
  std::vector<std::atomic<int>> hits(5000);
  bool ok = true, idsOk = true, rangesOk = true;
  for (int l = 0; l < loops && ok; l++) {
    const int64_t n = 1 + int64_t(rng() % (l % 10 == 0 ? 5000 : 64));
    for (int64_t i = 0; i < n; i++) hits[size_t(i)].store(0, std::memory_order_relaxed);
    pool.parallelFor(n, [&](int64_t b, int64_t e, int w) {
      if (w < 0 || w >= pool.size()) idsOk = false;
      if (b < 0 || e > n || b >= e) rangesOk = false;
      for (int64_t i = b; i < e; i++) hits[size_t(i)].fetch_add(1, std::memory_order_relaxed);
    });
    for (int64_t i = 0; i < n; i++)
      if (hits[size_t(i)].load() != 1) ok = false;
  }
  const std::string name =
      "threads " + std::to_string(threads) + (mode == ThreadPool::Mode::Fixed ? " fixed" : " adaptive");
  check(ok, name + ": every index exactly once");
  check(idsOk, name + ": worker ids in range");
  check(rangesOk, name + ": chunks inside the loop");
}

// The workers of a fixed pool take part. Counting their chunks after a run of tiny loops is not a
// test: on a loaded machine the caller can claim every chunk before a worker is scheduled (CI saw
// exactly that). Here each chunk the caller runs waits until some worker has run a chunk, so the
// caller cannot take them all; the check fails only if no worker runs one within 10 seconds.
static void testWorkersTakePart(int threads) {
  ThreadPool pool(threads, ThreadPool::Mode::Fixed);
  if (pool.size() < 2) return;  // no workers to take part
  std::atomic<bool> workerRan{false};
  bool timedOut = false;
  pool.parallelFor(int64_t(threads) * 4, [&](int64_t, int64_t, int w) {
    if (w != 0) {
      workerRan.store(true);
      return;
    }
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!workerRan.load()) {
      if (Clock::now() > deadline) {
        timedOut = true;
        return;
      }
      std::this_thread::yield();
    }
  });
  check(workerRan.load() && !timedOut && pool.stats().workerChunks > 0,
        "threads " + std::to_string(threads) + " fixed: the workers took part");
}

// A busy thread that runs until `stop`.
static void spin(const std::atomic<bool>& stop) {
  volatile uint64_t x = 0;
  while (!stop.load(std::memory_order_relaxed)) x = x + 1;
}

static bool pinTo(int cpus) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return false;
  cpu_set_t want;
  CPU_ZERO(&want);
  int got = 0;
  for (int c = 0; c < CPU_SETSIZE && got < cpus; c++)
    if (CPU_ISSET(c, &set)) CPU_SET(c, &want), got++;
  return got == cpus && sched_setaffinity(0, sizeof want, &want) == 0;
}

static void restoreAffinity(const cpu_set_t& set) { sched_setaffinity(0, sizeof set, &set); }

static void testOversubscribedThreads() {
  // Threads made after pinning inherit the mask: the pool sees one processor.
  cpu_set_t saved;
  sched_getaffinity(0, sizeof saved, &saved);
  if (!pinTo(1)) {
    std::printf("skipped: cannot pin to one processor\n");
    return;
  }
  check(usableProcessors() == 1, "pinned to one processor: usableProcessors() == 1");
  {
    ThreadPool pool(8);
    check(pool.size() == 8, "8 threads asked for: size() is 8");
    check(pool.stats().activeWorkers == 0, "8 threads on one processor: every worker parked");
    std::atomic<int64_t> sum{0};
    for (int l = 0; l < 2000; l++)
      pool.parallelFor(64, [&](int64_t b, int64_t e, int) { sum.fetch_add(e - b, std::memory_order_relaxed); });
    check(sum.load() == 2000 * 64, "8 threads on one processor: loops complete");
    check(pool.stats().workerChunks == 0, "8 threads on one processor: parked workers ran nothing");
  }
  {
    // Fixed mode keeps all workers: on one processor they can only run when the caller is
    // preempted, so the caller must not wait for them: it takes their chunks.
    ThreadPool pool(4, ThreadPool::Mode::Fixed);
    std::atomic<int64_t> sum{0};
    auto t0 = Clock::now();
    for (int l = 0; l < 2000; l++)
      pool.parallelFor(64, [&](int64_t b, int64_t e, int) { sum.fetch_add(e - b, std::memory_order_relaxed); });
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    check(sum.load() == 2000 * 64, "4 fixed threads on one processor: loops complete");
    std::printf(
        "4 fixed threads on one processor: 2000 loops in %.1f ms, caller ran %llu of %llu chunks, slept %llu times\n",
        ms, (unsigned long long)pool.stats().callerChunks,
        (unsigned long long)(pool.stats().callerChunks + pool.stats().workerChunks),
        (unsigned long long)pool.stats().callerSleeps);
  }
  restoreAffinity(saved);
}

static int64_t callerRunQueueWaitNs() {
  unsigned long long run = 0, wait = 0;
  FILE* f = std::fopen("/proc/thread-self/schedstat", "r");
  if (!f) return 0;
  if (std::fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
  std::fclose(f);
  return int64_t(wait);
}

static bool schedstatAvailable() {
  FILE* f = std::fopen("/proc/thread-self/schedstat", "r");
  if (!f) return false;
  std::fclose(f);
  return true;
}

static void testLoadCheck() {
  if (!schedstatAvailable()) {
    std::printf("skipped: the kernel does not report run-queue waits (/proc/thread-self/schedstat)\n");
    return;
  }
  cpu_set_t saved;
  sched_getaffinity(0, sizeof saved, &saved);
  if (!pinTo(2)) {
    std::printf("skipped: the load check test needs two processors\n");
    return;
  }
  {
    ThreadPool pool(2);
    check(pool.stats().activeWorkers == 1, "2 threads on two processors: one worker active");
    auto work = [&](int64_t b, int64_t e, int) {
      volatile double s = 0;
      for (int64_t i = b * 2000; i < e * 2000; i++) s = s + double(i);
    };
    // Two busy threads beside the pool's two on two processors: every thread waits about half of
    // the time for a processor, far above the load check's threshold.
    std::atomic<bool> stop{false};
    std::vector<std::thread> hogs;
    for (int i = 0; i < 2; i++) hogs.emplace_back(spin, std::cref(stop));
    int fewest = pool.stats().activeWorkers;
    for (auto t0 = Clock::now(); Clock::now() - t0 < std::chrono::milliseconds(1500);) {
      pool.parallelFor(16, work);
      fewest = std::min(fewest, pool.stats().activeWorkers);
    }
    stop = true;
    for (auto& h : hogs) h.join();
    check(fewest == 0, "two busy threads on two processors: the load check parked the worker");
    // Free again: the worker comes back within the longest back-off (2 s) and some checks. Only
    // checked when the machine really was free (the caller itself hardly waited for a processor):
    // on a CI machine running other tests beside this one, staying parked is the right answer.
    bool back = false;
    const int64_t wait0 = callerRunQueueWaitNs();
    const auto t0 = Clock::now();
    while (Clock::now() - t0 < std::chrono::milliseconds(4000) && !back) {
      pool.parallelFor(16, work);
      back = pool.stats().activeWorkers == 1;
    }
    const double window = double(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    const double callerWait = double(callerRunQueueWaitNs() - wait0) / window;
    if (back || callerWait < 0.02)
      check(back, "the machine free again: the worker is back");
    else
      std::printf("not checked: the machine stayed busy (the caller waited %.0f%% of the time for a processor)\n",
                  callerWait * 100);
  }
  restoreAffinity(saved);
}

// cgroupDirs: the process's own cgroup first, each next entry its parent, ending at the root.
// (v2, and the v1 memory and cpu hierarchies, whichever this machine has; a nested one walks up.)
static void testCgroupDirs() {
  for (const char* controller : {"", "memory", "cpu"}) {
    const std::vector<std::string> dirs = cgroupDirs(controller);
    bool ok = true;
    for (size_t i = 1; i < dirs.size(); i++)
      ok = ok && dirs[i].size() < dirs[i - 1].size() && dirs[i - 1].compare(0, dirs[i].size(), dirs[i]) == 0 &&
           dirs[i - 1][dirs[i].size()] == '/';
    if (!dirs.empty()) ok = ok && (dirs.back().empty() || dirs.back() == "/");
    check(ok, std::string("cgroupDirs(\"") + controller + "\"): own cgroup first, then each parent up to the root");
  }
}

int main() {
  for (int t : {1, 2, 3, 5}) {
    testExactlyOnce(t, ThreadPool::Mode::Fixed, 3000);
    if (t > 1) testWorkersTakePart(t);
    testExactlyOnce(t, ThreadPool::Mode::Adaptive, 3000);
  }
  testCgroupDirs();
  testOversubscribedThreads();
  testLoadCheck();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
