#include "mapguard.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace dg {

namespace {

// A fixed table the signal handler can read without locks or allocation.
constexpr int kSlots = 256;
struct Slot {
  std::atomic<uintptr_t> base{0};
  std::atomic<size_t> size{0};
  char path[512];
};
Slot slots[kSlots];
std::mutex registerMu;
struct sigaction previous;
bool installed = false;

void writeAll(const char* s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= size_t(w);
  }
}

void onSigbus(int sig, siginfo_t* info, void* ctx) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (auto& s : slots) {
    uintptr_t b = s.base.load(std::memory_order_acquire);
    if (b && addr >= b && addr < b + s.size.load(std::memory_order_relaxed)) {
      writeAll("depthgate: fatal: the model file ");
      writeAll(s.path);
      writeAll(
          " was truncated or rewritten while it was memory-mapped (SIGBUS reading its weights). "
          "Replace checkpoints by writing a new file and renaming it over the old one.\n");
      signal(SIGBUS, SIG_DFL);
      raise(SIGBUS);
      return;
    }
  }
  // Not ours: hand over to whoever was there before.
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction) previous.sa_sigaction(sig, info, ctx);
  } else if (previous.sa_handler == SIG_IGN) {
    return;
  } else if (previous.sa_handler && previous.sa_handler != SIG_DFL) {
    previous.sa_handler(sig);
  } else {
    signal(SIGBUS, SIG_DFL);
    raise(SIGBUS);
  }
}

}  // namespace

void guardMapping(const void* base, size_t size, const std::string& path) {
  std::lock_guard<std::mutex> lock(registerMu);
  if (!installed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = onSigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) == 0) installed = true;
  }
  for (auto& s : slots) {
    if (s.base.load() == 0) {
      size_t n = path.copy(s.path, sizeof s.path - 1);
      s.path[n] = '\0';
      s.size.store(size);
      s.base.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
      return;
    }
  }
  // More than kSlots files mapped at once: those beyond are simply not named on a fault.
}

void unguardMapping(const void* base) {
  std::lock_guard<std::mutex> lock(registerMu);
  for (auto& s : slots)
    if (s.base.load() == reinterpret_cast<uintptr_t>(base)) {
      s.base.store(0, std::memory_order_release);
      s.size.store(0);
    }
}

}  // namespace dg
