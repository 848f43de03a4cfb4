// Memory of the CUDA backend: device allocations from a stream-ordered pool, the pinned staging
// ring that carries host->device copies, and growable pinned buffers.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dg {
namespace cuda {

// Device memory from a memory pool of this backend, allocated and freed in stream order on one
// stream: a free never blocks the host (a Sequence's destructor runs on the JS thread), and the
// memory is reused only by work issued after the free. Where the driver has no memory pools
// (some virtualised GPUs) it falls back to cudaMalloc / cudaFree, which do synchronise.
class DeviceHeap {
 public:
  void init(int device, cudaStream_t stream);
  ~DeviceHeap();
  // Throws dg::Error: kErrMemory when the device is out of memory, kErrCuda otherwise.
  void* alloc(size_t bytes, const char* what);
  void free(void* p);  // stream-ordered; never throws
  void destroy();      // frees the pool (outstanding frees complete asynchronously)

 private:
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  bool pooled_ = false;
};

// Pinned host buffer that grows (never shrinks). grow() reallocates: callers make sure no
// pending copy still reads or writes the old one.
class PinnedBuffer {
 public:
  ~PinnedBuffer();
  char* data() const { return p_; }
  size_t capacity() const { return cap_; }
  // Returns true when it had to reallocate.
  bool ensure(size_t bytes);
  void reset();

 private:
  char* p_ = nullptr;
  size_t cap_ = 0;
};

// Host -> device copies through a ring of pinned slots, each with an event recorded after the
// copy that reads it. upload() returns as soon as the host bytes are in a slot, so the caller
// may reuse its buffer at once; a slot is refilled only after its previous copy is done (an
// event wait on a copy issued kSlots slots ago, never a stream synchronisation). Large transfers
// (weights) stream through the slots in order, so filling one slot overlaps the copy of the last.
class StagingRing {
 public:
  static constexpr int kSlots = 4;
  static constexpr size_t kSlotBytes = size_t(4) << 20;
  void init();
  ~StagingRing();
  void upload(cudaStream_t s, void* dst, const void* host, size_t bytes);
  void reset();

 private:
  char* host_ = nullptr;
  cudaEvent_t done_[kSlots] = {};
  bool used_[kSlots] = {};
  int next_ = 0;
};

}  // namespace cuda
}  // namespace dg
