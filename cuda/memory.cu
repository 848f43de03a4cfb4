#include "memory.h"

#include <cstring>
#include <string>

#include "common.cuh"

namespace dg {
namespace cuda {

namespace {
[[noreturn]] void allocFailed(cudaError_t e, size_t bytes, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so the backend stays usable after an OOM
  if (e == cudaErrorMemoryAllocation) {
    size_t freeB = 0, totalB = 0;
    cudaMemGetInfo(&freeB, &totalB);
    cudaGetLastError();
    throw Error(kErrMemory, "cannot allocate " + std::to_string(bytes) + " bytes of GPU memory for " + what + " (" +
                                std::to_string(freeB) + " of " + std::to_string(totalB) + " bytes free)");
  }
  throwCuda(e, what, __FILE__, __LINE__);
}
}  // namespace

void DeviceHeap::init(int device, cudaStream_t stream) {
  stream_ = stream;
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    cudaGetLastError();
    supported = 0;
  }
  if (!supported) return;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  CUDA_CHECK(cudaMemPoolCreate(&pool_, &props));
  // Keep freed memory in the pool: steps allocate and free the same sizes again and again.
  uint64_t keep = ~uint64_t(0);
  CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep));
  pooled_ = true;
}

DeviceHeap::~DeviceHeap() { destroy(); }

void DeviceHeap::destroy() {
  if (pool_) cudaMemPoolDestroy(pool_);
  pool_ = nullptr;
  pooled_ = false;
}

void* DeviceHeap::alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  const size_t n = bytes ? bytes : 1;
  const cudaError_t e = pooled_ ? cudaMallocFromPoolAsync(&p, n, pool_, stream_) : cudaMalloc(&p, n);
  if (e != cudaSuccess) allocFailed(e, n, what);
  return p;
}

void DeviceHeap::free(void* p) {
  if (!p) return;
  const cudaError_t e = pooled_ ? cudaFreeAsync(p, stream_) : cudaFree(p);
  if (e != cudaSuccess) cudaGetLastError();  // cleanup paths never throw
}

PinnedBuffer::~PinnedBuffer() { reset(); }

void PinnedBuffer::reset() {
  if (p_) cudaFreeHost(p_);
  p_ = nullptr;
  cap_ = 0;
}

bool PinnedBuffer::ensure(size_t bytes) {
  if (bytes <= cap_) return false;
  size_t cap = cap_ ? cap_ : size_t(64) << 10;
  while (cap < bytes) cap *= 2;
  reset();
  void* h = nullptr;
  const cudaError_t e = cudaHostAlloc(&h, cap, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorMemoryAllocation)
      throw Error(kErrMemory, "cannot allocate " + std::to_string(cap) + " bytes of pinned host memory");
    throwCuda(e, "cudaHostAlloc", __FILE__, __LINE__);
  }
  p_ = static_cast<char*>(h);
  cap_ = cap;
  return true;
}

void StagingRing::init() {
  void* h = nullptr;
  const cudaError_t e = cudaHostAlloc(&h, kSlots * kSlotBytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorMemoryAllocation)
      throw Error(kErrMemory,
                  "cannot allocate " + std::to_string(kSlots * kSlotBytes) + " bytes of pinned staging memory");
    throwCuda(e, "cudaHostAlloc(staging)", __FILE__, __LINE__);
  }
  host_ = static_cast<char*>(h);
  for (int i = 0; i < kSlots; i++) {
    const cudaError_t ev = cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming);
    if (ev != cudaSuccess) {
      reset();
      throwCuda(ev, "cudaEventCreate(staging)", __FILE__, __LINE__);
    }
  }
}

StagingRing::~StagingRing() { reset(); }

void StagingRing::reset() {
  for (int i = 0; i < kSlots; i++) {
    if (done_[i]) {
      cudaEventSynchronize(done_[i]);
      cudaEventDestroy(done_[i]);
    }
    done_[i] = nullptr;
    used_[i] = false;
  }
  if (host_) cudaFreeHost(host_);
  host_ = nullptr;
}

void StagingRing::upload(cudaStream_t s, void* dst, const void* host, size_t bytes) {
  const char* src = static_cast<const char*>(host);
  char* d = static_cast<char*>(dst);
  while (bytes > 0) {
    const size_t n = bytes < kSlotBytes ? bytes : kSlotBytes;
    const int slot = next_;
    next_ = (next_ + 1) % kSlots;
    if (used_[slot]) CUDA_CHECK(cudaEventSynchronize(done_[slot]));  // its last copy has read it
    char* h = host_ + size_t(slot) * kSlotBytes;
    std::memcpy(h, src, n);
    CUDA_CHECK(cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaEventRecord(done_[slot], s));
    used_[slot] = true;
    src += n;
    d += n;
    bytes -= n;
  }
}

}  // namespace cuda
}  // namespace dg
