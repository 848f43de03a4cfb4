// Anonymous memory for the CPU backend's copies of the weights (cpu_layout.cc), one region per
// model, aligned to 2 MB and advised for transparent huge pages (THP) when the kernel offers them.
//
// Why: decode streams every weight once per token, and with 4 KB pages that is a TLB miss every
// 4 KB, and the hardware prefetchers stop at every 4 KB boundary. With 2 MB pages, on the AMD EPYC
// (Zen 4) VM, Q4_K_M decode of the bench model (hidden 1024, 16 layers, 2 threads) went from
// 5.0 / 5.7 / 7.0 to 4.7 / 5.3 / 5.3 ms/token in three alternating pairs, bf16 from 16.0 to 14.9;
// Q8_0 (repacked, in anonymous memory either way) moved less than the noise. A memory-mapped file
// cannot have them (the page cache holds 4 KB pages), so the weights are copied in.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dg {

// Whether this kernel's transparent huge pages are on for memory that asks for them
// (/sys/kernel/mm/transparent_hugepage/enabled says [always] or [madvise]); false when the file is
// missing (not Linux, no THP) or says [never]. Read once.
bool transparentHugePagesOn();

// Bytes this process can still take without swapping or meeting its memory limit: /proc/meminfo's
// MemAvailable, less for a cgroup v2 memory.max of this process's cgroup or an ancestor (its max
// less what it holds). 0 when /proc/meminfo cannot be read (not Linux): unknown.
size_t availableMemoryBytes();

// One reservation of `capacity` bytes: virtual until written (an untouched tail takes no memory),
// handed out front to back in 64-byte-aligned pieces, released whole when the arena is destroyed.
class WeightArena {
 public:
  // Throws dg::Error (kErrMemory) naming `what` when the reservation fails. hugePages: advise the
  // region for THP (MADV_HUGEPAGE), effective only when transparentHugePagesOn().
  WeightArena(size_t capacity, bool hugePages, const char* what);
  ~WeightArena();
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  // The next n bytes, 64-byte aligned. Throws dg::Error (kErrArg) past the capacity: a caller bug,
  // the capacity is what the caller summed.
  unsigned char* take(size_t n);
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  bool hugePages() const { return hugePages_; }

  // Bytes take(n) uses: n rounded up to the 64-byte alignment.
  static size_t footprint(size_t n) { return (n + 63) / 64 * 64; }

 private:
  unsigned char* base_ = nullptr;  // 2 MB aligned
  void* map_ = nullptr;            // what mmap returned, for munmap
  size_t mapBytes_ = 0;
  size_t capacity_ = 0;
  size_t used_ = 0;
  bool hugePages_ = false;
};

}  // namespace dg
