#include "weight_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "errors.h"
#include "threadpool.h"

namespace dg {

namespace {
constexpr size_t kHugePage = size_t(1) << 21;
}

bool transparentHugePagesOn() {
  static const bool on = [] {
    std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return false;
    char buf[128] = {0};
    const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
    std::fclose(f);
    buf[n] = 0;
    // The mode in effect is the bracketed one: "always [madvise] never".
    return std::strstr(buf, "[always]") != nullptr || std::strstr(buf, "[madvise]") != nullptr;
  }();
  return on;
}

size_t availableMemoryBytes() {
  size_t avail = 0;
  if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        avail = size_t(kb) * 1024;
        break;
      }
    std::fclose(f);
  }
  if (avail == 0) return 0;
  for (const std::string& dir : cgroupDirs("")) {
    unsigned long long max = 0, current = 0;
    std::FILE* fm = std::fopen(("/sys/fs/cgroup" + dir + "/memory.max").c_str(), "r");
    std::FILE* fc = std::fopen(("/sys/fs/cgroup" + dir + "/memory.current").c_str(), "r");
    // "max" (no limit) does not parse as a number.
    if (fm && fc && std::fscanf(fm, "%llu", &max) == 1 && std::fscanf(fc, "%llu", &current) == 1)
      avail = std::min(avail, size_t(max > current ? max - current : 0));
    if (fm) std::fclose(fm);
    if (fc) std::fclose(fc);
  }
  return avail;
}

WeightArena::WeightArena(size_t capacity, bool hugePages, const char* what) : capacity_(capacity) {
  // Reserve one huge page more than rounded up, and start at the first 2 MB boundary inside: the
  // kernel can back a huge page only where the range covers a whole aligned 2 MB.
  const size_t rounded = (capacity + kHugePage - 1) / kHugePage * kHugePage;
  mapBytes_ = rounded + kHugePage;
  void* p = mmap(nullptr, mapBytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error(kErrMemory, std::string("out of memory: ") + std::to_string(capacity) + " bytes for " + what);
  map_ = p;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  base_ = reinterpret_cast<unsigned char*>((a + kHugePage - 1) / kHugePage * kHugePage);
#ifdef MADV_HUGEPAGE
  // A refusal (a kernel without THP) only means 4 KB pages: the arena works either way.
  hugePages_ = hugePages && transparentHugePagesOn() && madvise(base_, rounded, MADV_HUGEPAGE) == 0;
#else
  (void)hugePages;
#endif
}

WeightArena::~WeightArena() {
  if (map_) munmap(map_, mapBytes_);
}

unsigned char* WeightArena::take(size_t n) {
  const size_t need = footprint(n);
  if (need > capacity_ - used_)
    throw Error(kErrArg, "WeightArena: " + std::to_string(n) + " bytes asked past the capacity of " +
                             std::to_string(capacity_) + " (" + std::to_string(used_) + " used)");
  unsigned char* p = base_ + used_;
  used_ += need;
  return p;
}

}  // namespace dg
