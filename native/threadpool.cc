#include "threadpool.h"

#include <fcntl.h>
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpuRelax() { _mm_pause(); }
#else
static inline void cpuRelax() {}
#endif

namespace dg {

namespace {

void futexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  // Returns at once when *word != expected; the callers loop over spurious wake-ups.
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

int64_t nowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int currentTid() { return int(syscall(SYS_gettid)); }

// Nanoseconds thread `tid` of this process has spent runnable but waiting for a processor
// (the second field of /proc/self/task/TID/schedstat), or -1 when the kernel does not say.
int64_t runQueueWaitNs(int tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[96];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  unsigned long long run = 0, wait = 0;
  if (std::sscanf(buf, "%llu %llu", &run, &wait) != 2) return -1;
  return int64_t(wait);
}

// How long an idle worker spins for the next loop before it sleeps: the gaps between the ops of
// one forward pass are microseconds, and between two decode steps (JS, the N-API call, sampling)
// tens of microseconds.
constexpr int64_t kWorkerSpinNs = 300000;
// While the loop is still running on another thread the window is extended, up to this long in all
// (a preempted caller holding its chunk must not keep a worker spinning for its whole time slice).
constexpr int64_t kWorkerSpinMaxNs = 3000000;
// How long the caller spins for chunks still running on other threads before it sleeps: as long
// as its own chunks took (capped), plus kCallerSpinNs.
constexpr int64_t kCallerSpinNs = 20000;
constexpr int64_t kCallerSpinMaxNs = 1000000;
// A loop is cut into one chunk per thread, which costs least to hand out; after a loop in which a
// thread fell behind (the caller ran another thread's share, or had to wait), loops are cut into
// kFineChunks chunks per thread for a while, so the threads that do run take more of the work.
constexpr int64_t kFineChunks = 4;
constexpr int kFineLoops = 256;
// Load check: every kCheckNs the caller reads how long the workers waited for a processor. Above
// kBusyWait of the interval the machine is oversubscribed and one worker is parked; below
// kFreeWait (for the caller too) one more is tried, after a back-off that doubles each time the
// try fails (up to kMaxBackoffNs), so a busy machine is not probed every interval.
constexpr int64_t kCheckNs = 25000000;
constexpr double kBusyWait = 0.2;
constexpr double kFreeWait = 0.05;
constexpr int64_t kMinBackoffNs = 50000000;
constexpr int64_t kMaxBackoffNs = 2000000000;
// The claim word: generation (32 bits) | chunk count (16 bits) | next chunk (16 bits).
constexpr int64_t kMaxChunks = 0xffff;
constexpr uint64_t pack(uint64_t gen, uint64_t chunks, uint64_t next) { return gen << 32 | chunks << 16 | next; }
constexpr uint32_t genOf(uint64_t w) { return uint32_t(w >> 32); }
constexpr uint32_t chunksOf(uint64_t w) { return uint32_t(w >> 16) & 0xffff; }
constexpr uint32_t nextOf(uint64_t w) { return uint32_t(w) & 0xffff; }

}  // namespace

ThreadPool::ThreadPool(int threads, Mode mode)
    : nthreads_(threads < 1 ? 1 : threads),
      workerTids_(size_t(nthreads_ - 1)),
      workerWaitNs_(size_t(nthreads_ - 1), -1) {
  // More threads than processors cannot run at once; the extra ones would only take time slices
  // from the ones with work. They are made (size() stays what was asked) but stay parked.
  adaptive_ = mode == Mode::Adaptive;
  maxActiveWorkers_ = adaptive_ ? std::min(nthreads_, usableProcessors()) - 1 : nthreads_ - 1;
  activeWorkers_.store(maxActiveWorkers_);
  lastCheckNs_ = lastChangeNs_ = nowNs();
  probeBackoffNs_ = kMinBackoffNs;
  for (int i = 1; i < nthreads_; i++) workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  wakeSeq_.fetch_add(1);
  activeSeq_.fetch_add(1);
  futexWakeAll(&wakeSeq_);
  futexWakeAll(&activeSeq_);
  for (auto& t : workers_) t.join();
}

ThreadPool::Stats ThreadPool::stats() const {
  Stats s;
  s.loops = loops_.load();
  s.callerChunks = callerChunks_.load();
  s.workerChunks = workerChunks_.load();
  s.callerSleeps = callerSleeps_.load();
  s.workerSleeps = workerSleeps_.load();
  s.activeWorkers = activeWorkers_.load();
  return s;
}

void ThreadPool::setActiveWorkers(int n) {
  activeWorkers_.store(n, std::memory_order_seq_cst);
  activeSeq_.fetch_add(1, std::memory_order_seq_cst);
  futexWakeAll(&activeSeq_);
}

void ThreadPool::checkLoad() {
  const int64_t now = nowNs();
  const int64_t dt = now - lastCheckNs_;
  if (dt < kCheckNs || !adaptive_ || !schedstat_ || maxActiveWorkers_ == 0) return;
  lastCheckNs_ = now;
  const int active = activeWorkers_.load(std::memory_order_relaxed);
  // The share of the interval each thread spent waiting for a processor (the busiest worker's).
  double workerWait = 0;
  bool measured = false;
  for (int i = 0; i < maxActiveWorkers_; i++) {
    int tid = workerTids_[size_t(i)].load(std::memory_order_relaxed);
    int64_t w = tid ? runQueueWaitNs(tid) : -1;
    if (tid && w < 0) schedstat_ = false;
    if (i < active && w >= 0 && workerWaitNs_[size_t(i)] >= 0) {
      workerWait = std::max(workerWait, double(w - workerWaitNs_[size_t(i)]) / double(dt));
      measured = true;
    }
    workerWaitNs_[size_t(i)] = w;
  }
  const int tid = currentTid();
  const int64_t cw = runQueueWaitNs(tid);
  double callerWait = -1;
  if (tid == callerTid_ && cw >= 0 && callerWaitNs_ >= 0) callerWait = double(cw - callerWaitNs_) / double(dt);
  callerTid_ = tid;
  callerWaitNs_ = cw;
  if (!schedstat_) {
    setActiveWorkers(maxActiveWorkers_);
    return;
  }
  if (measured && workerWait > kBusyWait && active > 0) {
    // Oversubscribed: a worker that is not running cannot help and one that spins takes time from
    // one that could. If this undoes a try of the last interval, wait longer before the next.
    if (now - lastChangeNs_ <= 2 * kCheckNs) probeBackoffNs_ = std::min(kMaxBackoffNs, probeBackoffNs_ * 2);
    setActiveWorkers(active - 1);
    lastChangeNs_ = now;
  } else if (active < maxActiveWorkers_ && (!measured || workerWait < kFreeWait) && callerWait >= 0 &&
             callerWait < kFreeWait && now - lastChangeNs_ >= probeBackoffNs_) {
    setActiveWorkers(active + 1);
    lastChangeNs_ = now;
  } else if (active == maxActiveWorkers_ && now - lastChangeNs_ > kMaxBackoffNs) {
    probeBackoffNs_ = kMinBackoffNs;  // calm for a long while: try quickly next time
  }
}

// Claims and runs chunks of job `gen` until none is left. Returns the number run.
uint64_t ThreadPool::runChunks(uint32_t gen, int who) {
  uint64_t ran = 0;
  uint64_t w = claim_.load(std::memory_order_acquire);
  for (;;) {
    if (genOf(w) != gen || nextOf(w) >= chunksOf(w)) return ran;
    // Success proves job `gen` still had this chunk free, so the caller has not replaced fn_/n_
    // (it does so only after every chunk is done), and acquire makes them visible.
    if (!claim_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const uint32_t c = nextOf(w), chunks = chunksOf(w);
    const int64_t n = n_.load(std::memory_order_relaxed);
    (*fn_.load(std::memory_order_relaxed))(n * c / chunks, n * (c + 1) / chunks, who);
    ran++;
    if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == chunks && callerWaiting_.load(std::memory_order_seq_cst))
      futexWakeAll(&done_);
    w = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::parallelFor(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  loops_.fetch_add(1, std::memory_order_relaxed);
  checkLoad();
  const int active = activeWorkers_.load(std::memory_order_relaxed);
  if (active == 0 || n == 1) {
    fn(0, n, 0);
    callerChunks_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const int64_t perThread = fineLoops_ > 0 ? kFineChunks : 1;
  if (fineLoops_ > 0) fineLoops_--;
  const uint32_t chunks = uint32_t(std::min<int64_t>({n, int64_t(active + 1) * perThread, kMaxChunks}));
  fn_.store(&fn, std::memory_order_relaxed);
  n_.store(n, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  const uint32_t gen = genOf(claim_.load(std::memory_order_relaxed)) + 1;
  claim_.store(pack(gen, chunks, 0), std::memory_order_seq_cst);
  wakeSeq_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futexWakeAll(&wakeSeq_);

  const int64_t started = nowNs();
  const uint64_t mine = runChunks(gen, 0);
  const int64_t ranNs = nowNs() - started;
  callerChunks_.fetch_add(mine, std::memory_order_relaxed);
  // The caller ran more than its share: some worker was not there to take its chunk.
  bool behind = mine * uint64_t(active + 1) > chunks;

  // Every chunk is claimed; wait for the ones other threads are still running.
  if (done_.load(std::memory_order_acquire) != chunks) {
    // A worker that took its chunk when the caller took its own needs about as long as the caller
    // did: spin that long (plus kCallerSpinNs), so a worker that is running is waited for without
    // a futex round trip (on a virtual machine, waking a halted vCPU costs tens of microseconds);
    // one still busy after that was most likely preempted.
    const int64_t until = nowNs() + kCallerSpinNs + std::min(ranNs, kCallerSpinMaxNs);
    for (int spins = 0; done_.load(std::memory_order_acquire) != chunks;) {
      cpuRelax();
      if (++spins < 64) continue;
      spins = 0;
      if (nowNs() < until) continue;
      // A thread holding a chunk was preempted: sleep so that it can have this processor.
      behind = true;
      callerSleeps_.fetch_add(1, std::memory_order_relaxed);
      callerWaiting_.store(1, std::memory_order_seq_cst);
      for (uint32_t d; (d = done_.load(std::memory_order_seq_cst)) != chunks;) futexWait(&done_, d);
      callerWaiting_.store(0, std::memory_order_relaxed);
    }
  }
  if (behind) fineLoops_ = kFineLoops;
}

void ThreadPool::workerLoop(int id) {
  workerTids_[size_t(id - 1)].store(currentTid(), std::memory_order_relaxed);
  uint32_t seen = 0;
  for (;;) {
    // Parked: the machine is oversubscribed, or more threads were asked for than processors.
    for (uint32_t a; !stop_.load() && id > activeWorkers_.load(std::memory_order_seq_cst);) {
      a = activeSeq_.load(std::memory_order_seq_cst);
      if (id > activeWorkers_.load(std::memory_order_seq_cst) && !stop_.load()) futexWait(&activeSeq_, a);
    }
    uint32_t gen = seen;
    const int64_t spinStart = nowNs();
    int64_t until = spinStart + kWorkerSpinNs;
    for (int spins = 0; !stop_.load(std::memory_order_relaxed);) {
      const uint64_t job = claim_.load(std::memory_order_acquire);
      gen = genOf(job);
      if (gen != seen) break;
      cpuRelax();
      if (++spins < 64) continue;
      spins = 0;
      // The spin window counts from the end of the loop, not from this worker's last chunk: while
      // another thread still runs a chunk of it (the caller's last chunk can take a millisecond on
      // a large matrix), the next loop follows that chunk closely, and a worker asleep by then
      // misses it (waking a sleeping thread, a halted vCPU on a virtual machine, takes longer
      // than a chunk, so the caller runs the whole loop alone).
      if (done_.load(std::memory_order_relaxed) < chunksOf(job))
        until = std::min(nowNs() + kWorkerSpinNs, spinStart + kWorkerSpinMaxNs);
      if (nowNs() < until) continue;
      // Nothing to do for a while: sleep until the next job is announced.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      workerSleeps_.fetch_add(1, std::memory_order_relaxed);
      const uint32_t w = wakeSeq_.load(std::memory_order_seq_cst);
      if (genOf(claim_.load(std::memory_order_seq_cst)) == seen && !stop_.load()) futexWait(&wakeSeq_, w);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      if (id > activeWorkers_.load(std::memory_order_relaxed)) break;
    }
    if (stop_.load()) return;
    seen = gen;
    if (id > activeWorkers_.load(std::memory_order_relaxed)) continue;
    workerChunks_.fetch_add(runChunks(gen, id), std::memory_order_relaxed);
  }
}

namespace {

// The cgroup directory of this process for a controller: v2 ("0::/path") when `controller` is
// empty, else the v1 line naming it ("4:cpu,cpuacct:/path"); "" when there is none.
std::string cgroupPath(const char* controller) {
  FILE* f = std::fopen("/proc/self/cgroup", "r");
  if (!f) return "";
  char line[512];
  std::string found;
  while (std::fgets(line, sizeof line, f)) {
    char* a = std::strchr(line, ':');
    char* b = a ? std::strchr(a + 1, ':') : nullptr;
    if (!b) continue;
    std::string ctrls(a + 1, b), where(b + 1);
    while (!where.empty() && (where.back() == '\n' || where.back() == '\r')) where.pop_back();
    bool match = *controller == 0 ? ctrls.empty()
                                  : ("," + ctrls + ",").find(std::string(",") + controller + ",") != std::string::npos;
    if (match) {
      found = where;
      break;
    }
  }
  std::fclose(f);
  return found;
}

}  // namespace

std::vector<std::string> cgroupDirs(const char* controller) {
  std::vector<std::string> dirs;
  const std::string path = cgroupPath(controller);
  for (std::string dir = path; !path.empty();) {
    dirs.push_back(dir);
    if (dir.empty() || dir == "/") break;
    dir = dir.substr(0, dir.rfind('/'));
  }
  return dirs;
}

namespace {

bool readLongs(const std::string& file, long long* a, long long* b) {
  FILE* f = std::fopen(file.c_str(), "r");
  if (!f) return false;
  char first[32] = {0};
  int got = b ? std::fscanf(f, "%31s %lld", first, b) : std::fscanf(f, "%31s", first);
  std::fclose(f);
  if (got < 1) return false;
  *a = std::strcmp(first, "max") == 0 ? -1 : std::atoll(first);
  return true;
}

// The CPU quota in processors (e.g. 1.5), or 0 when there is none. Checks the process's own cgroup
// and its ancestors (a limit may be set on any of them).
double cpuQuota() {
  double best = 0;
  auto consider = [&](double q) {
    if (q > 0 && (best == 0 || q < best)) best = q;
  };
  for (const std::string& dir : cgroupDirs("")) {
    long long quota = 0, period = 0;
    if (readLongs("/sys/fs/cgroup" + dir + "/cpu.max", &quota, &period) && quota > 0 && period > 0)
      consider(double(quota) / double(period));
  }
  for (const std::string& dir : cgroupDirs("cpu")) {
    long long quota = 0, period = 0;
    if (readLongs("/sys/fs/cgroup/cpu" + dir + "/cpu.cfs_quota_us", &quota, nullptr) &&
        readLongs("/sys/fs/cgroup/cpu" + dir + "/cpu.cfs_period_us", &period, nullptr) && quota > 0 && period > 0)
      consider(double(quota) / double(period));
  }
  return best;
}

}  // namespace

int usableProcessors() {
  cpu_set_t set;
  int n = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = int(std::max(1u, std::thread::hardware_concurrency()));
  // A CPU quota (docker --cpus, Kubernetes limits) caps the processor time, whatever the mask.
  const double quota = cpuQuota();
  if (quota > 0) n = std::min(n, std::max(1, int(quota + 0.999)));
  return n;
}

}  // namespace dg
