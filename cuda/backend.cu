// The CUDA op table (dg::Ops over device memory) and the library's three C entry points.
// One stream per op table; every op is stream-ordered and asynchronous except download/upload/
// sample and release (cudaFree synchronizes). Small host arrays (tokens, positions, indices,
// scales, AttnRow, KvSlot) go to the device through a pinned staging ring (see Staging).
// Later: keep index lists on the device (compaction in a kernel, kernels.md 5.1) and capture
// the decode step in a CUDA graph; both need the engine to stop building them on the host.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "json.h"
#include "cuda_loader.h"

#define DG_EXPORT extern "C" __attribute__((visibility("default")))

namespace dg {
namespace cuda {

void throwCuda(cudaError_t e, const char* expr, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the table stays usable after e.g. OOM
  std::string msg = std::string("CUDA error: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ") in " +
                    expr + " at " + file + ":" + std::to_string(line);
  throw Error(e == cudaErrorMemoryAllocation ? kErrMemory : kErrCuda, msg);
}

namespace {

// Host arrays bound for the device. Each push copies into the pinned ring, then one async H2D
// copy moves it to the same offset of a device ring; kernels read the device copy. A region is
// reused only after the stream has drained past it: when the ring wraps, the stream is
// synchronized first, so no in-flight copy or kernel can still be reading what gets overwritten.
class Staging {
 public:
  ~Staging() { freeAll(); }
  void init(size_t bytes) { grow(bytes); }
  void reset() { freeAll(); }

  template <typename T>
  const T* push(cudaStream_t s, const T* host, size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes == 0) return nullptr;
    const size_t need = (bytes + 255) & ~size_t(255);
    if (used_ + need > cap_) {
      CUDA_CHECK(cudaStreamSynchronize(s));
      used_ = 0;
      if (need > cap_) grow(std::max(need, cap_ * 2));
    }
    std::memcpy(host_ + used_, host, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dev_ + used_, host_ + used_, bytes, cudaMemcpyHostToDevice, s));
    const T* p = reinterpret_cast<const T*>(dev_ + used_);
    used_ += need;
    return p;
  }

 private:
  void grow(size_t bytes) {
    freeAll();
    void* h = nullptr;
    void* d = nullptr;
    CUDA_CHECK(cudaHostAlloc(&h, bytes, cudaHostAllocDefault));
    cudaError_t e = cudaMalloc(&d, bytes);
    if (e != cudaSuccess) {
      cudaFreeHost(h);
      throwCuda(e, "cudaMalloc(staging)", __FILE__, __LINE__);
    }
    host_ = static_cast<char*>(h);
    dev_ = static_cast<char*>(d);
    cap_ = bytes;
    used_ = 0;
  }
  void freeAll() {
    if (host_) cudaFreeHost(host_);
    if (dev_) cudaFree(dev_);
    host_ = dev_ = nullptr;
    cap_ = used_ = 0;
  }
  char* host_ = nullptr;
  char* dev_ = nullptr;
  size_t cap_ = 0, used_ = 0;
};

constexpr int64_t kMaxGridY = 65535;

void checkRows(int64_t rows, const char* op) {
  if (rows > kMaxGridY)
    throw Error(kErrArg, std::string(op) + ": " + std::to_string(rows) + " rows in one call exceeds the CUDA limit of " +
                             std::to_string(kMaxGridY));
}

class CudaOps final : public Ops {
 public:
  explicit CudaOps(int device) : device_(device) {
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      staging_.init(size_t(1) << 20);
    } catch (...) {
      cudaStreamDestroy(stream_);
      throw;
    }
  }
  ~CudaOps() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (auto& kv : weights_) cudaFree(kv.second.ptr);
    weights_.clear();
    staging_.reset();
    cudaStreamDestroy(stream_);
  }
  const char* name() const override { return "cuda"; }

  float* alloc(size_t floats) override {
    use();
    const size_t bytes = (floats ? floats : 1) * sizeof(float);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw Error(kErrMemory, "cannot allocate " + std::to_string(bytes) + " bytes of GPU memory: " +
                                  cudaGetErrorString(e));
    }
    return static_cast<float*>(p);
  }
  void release(float* p) override {
    if (!p) return;
    use();
    cudaFree(p);  // synchronizes with the device first; never throws from cleanup paths
  }
  void copy(float* dst, const float* src, size_t floats) override {
    if (!floats) return;
    use();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, floats * 4, cudaMemcpyDeviceToDevice, stream_));
  }
  void download(float* host, const float* src, size_t floats) override {
    if (!floats) return;
    use();
    CUDA_CHECK(cudaMemcpyAsync(host, src, floats * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void upload(float* dst, const float* host, size_t floats) override {
    if (!floats) return;
    use();
    CUDA_CHECK(cudaMemcpyAsync(dst, host, floats * 4, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // the caller may free `host` on return
  }
  // Weights go to the device once, in their stored dtype. The same host bytes prepared twice (tied
  // embeddings: embed and lm_head views of one tensor) share one device copy.
  Weight prepareWeight(const Weight& w) override {
    Weight d = w;
    if (!w.data || w.bytes() == 0) {
      d.data = nullptr;
      return d;
    }
    use();
    const Key key{w.data, w.bytes()};
    auto it = weights_.find(key);
    if (it != weights_.end()) {
      d.data = it->second.ptr;
      return d;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, w.bytes());
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw Error(kErrMemory, "cannot allocate " + std::to_string(w.bytes()) + " bytes of GPU memory for a weight: " +
                                  cudaGetErrorString(e));
    }
    e = cudaMemcpy(p, w.data, w.bytes(), cudaMemcpyHostToDevice);  // pageable mmap source: synchronous
    if (e != cudaSuccess) {
      cudaFree(p);
      throwCuda(e, "cudaMemcpy(weight)", __FILE__, __LINE__);
    }
    weights_[key] = Dev{p};
    d.data = p;
    return d;
  }

  void embed(float* x, const int32_t* tokens, int64_t rows, const Weight& table) override {
    if (rows <= 0) return;
    use();
    checkRows(rows, "embed");
    launchEmbed(stream_, x, staging_.push(stream_, tokens, size_t(rows)), rows, table);
  }
  void rmsnorm(float* out, const float* x, int64_t rows, int64_t dim, const float* w, float eps) override {
    use();
    launchRmsnorm(stream_, out, x, rows, dim, w, eps);
  }
  void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
              const float* bias) override {
    use();
    launchMatmul(stream_, out, ldo, x, ldx, rows, W, bias);
  }
  void rope(float* x, int64_t ldx, int64_t rows, const int32_t* pos, int nHeads, int headDim,
            const float* invFreq) override {
    if (rows <= 0) return;
    use();
    launchRope(stream_, x, ldx, rows, staging_.push(stream_, pos, size_t(rows)), nHeads, headDim, invFreq);
  }
  void kvWrite(const KvSlot* slots, const float* k, const float* v, int64_t rows, int64_t width) override {
    if (rows <= 0) return;
    use();
    checkRows(rows, "kvWrite");
    launchKvWrite(stream_, staging_.push(stream_, slots, size_t(rows)), k, v, rows, width);
  }
  void attention(float* out, const float* q, const AttnRow* rows, int64_t n, int nHeads, int nKv, int headDim,
                 int window) override {
    if (n <= 0) return;
    use();
    launchAttention(stream_, out, q, staging_.push(stream_, rows, size_t(n)), n, nHeads, nKv, headDim, window);
  }
  void siluMul(float* gate, const float* up, int64_t rows, int64_t n) override {
    use();
    launchSiluMul(stream_, gate, up, rows, n);
  }
  void tanhInPlace(float* x, int64_t n) override {
    use();
    launchTanh(stream_, x, n);
  }
  void addRows(float* x, const float* y, int64_t rows, int64_t dim) override {
    use();
    launchAddRows(stream_, x, y, rows * dim);
  }
  void gatherRows(float* dst, const float* src, const int32_t* idx, int64_t n, int64_t dim) override {
    if (n <= 0 || dim <= 0) return;
    use();
    checkRows(n, "gatherRows");
    const int32_t* d = staging_.push(stream_, idx, size_t(n));
    if (dst == src) {  // in place: gather into a temporary, then copy back
      float* tmp = alloc(size_t(n * dim));
      launchGatherRows(stream_, tmp, src, d, n, dim);
      CUDA_CHECK(cudaMemcpyAsync(dst, tmp, size_t(n * dim) * 4, cudaMemcpyDeviceToDevice, stream_));
      release(tmp);
      return;
    }
    launchGatherRows(stream_, dst, src, d, n, dim);
  }
  void scatterAddRows(float* dst, const float* src, const int32_t* idx, const float* scale, int64_t n,
                      int64_t dim) override {
    if (n <= 0 || dim <= 0) return;
    use();
    checkRows(n, "scatterAddRows");
    const int32_t* d = staging_.push(stream_, idx, size_t(n));
    const float* sc = scale ? staging_.push(stream_, scale, size_t(n)) : nullptr;
    launchScatterAddRows(stream_, dst, src, d, sc, n, dim);
  }
  // The engine passes host logits (it downloads them before sampling); a device pointer is
  // downloaded first. Either way the CPU sampler decides, so CPU and CUDA draw identically.
  int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p, uint64_t& rng) override {
    use();
    cudaPointerAttributes attr{};
    cudaError_t e = cudaPointerGetAttributes(&attr, logits);
    if (e != cudaSuccess) cudaGetLastError();
    if (e == cudaSuccess && attr.type == cudaMemoryTypeDevice) {
      host_.resize(size_t(vocab));
      download(host_.data(), logits, size_t(vocab));
      return sampleToken(host_.data(), vocab, p, rng);
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return sampleToken(logits, vocab, p, rng);
  }

 private:
  // The runtime's current device is per host thread; ops may run on any worker thread.
  void use() {
    thread_local int current = -1;
    if (current != device_) {
      CUDA_CHECK(cudaSetDevice(device_));
      current = device_;
    }
  }

  using Key = std::pair<const void*, size_t>;
  struct Dev {
    void* ptr;
  };
  int device_;
  cudaStream_t stream_ = nullptr;
  Staging staging_;
  std::map<Key, Dev> weights_;
  std::vector<float> host_;
};

void writeOut(char* out, size_t len, const std::string& s) {
  if (!out || len == 0) return;
  size_t n = std::min(len - 1, s.size());
  std::memcpy(out, s.data(), n);
  out[n] = 0;
}

// The kernels are built for sm_80 and newer (see CMakeLists.txt).
constexpr int kMinMajor = 8;

// The CUDA runtime is linked statically; CUDA 13 needs an NVIDIA driver of the R580 branch or newer
// (NVIDIA's CUDA Toolkit release notes, "CUDA Driver" table). Stated in the README too.
constexpr const char* kDriverFloor = "580";

std::string cudaVersionString(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Why cudaGetDeviceCount failed, in words a user can act on: no driver at all, a driver too old for
// this runtime, or what CUDA says.
std::string deviceCountFailure(cudaError_t e, int driver, int runtime) {
  if (driver == 0)
    return "no NVIDIA driver found (libcuda.so.1 is not installed or cannot be loaded)";
  if (e == cudaErrorInsufficientDriver || driver < runtime)
    return "the NVIDIA driver is too old: it supports CUDA " + cudaVersionString(driver) + ", this build's CUDA " +
           cudaVersionString(runtime) + " runtime needs driver " + kDriverFloor + " or newer";
  return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
}

}  // namespace
}  // namespace cuda
}  // namespace dg

DG_EXPORT int dg_cuda_abi_version(void) { return DG_CUDA_ABI; }

DG_EXPORT int dg_cuda_probe(char* out, size_t len) {
  try {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);  // 0 when no driver is installed
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    std::string versions = ",\"runtimeVersion\":" + std::to_string(runtime) + ",\"driverVersion\":" + std::to_string(driver);
    if (e != cudaSuccess) {
      cudaGetLastError();
      std::string reason = dg::cuda::deviceCountFailure(e, driver, runtime);
      dg::cuda::writeOut(out, len, "{\"available\":false,\"reason\":" + dg::jsonQuote(reason) + ",\"devices\":[]" +
                                       versions + "}");
      return 0;
    }
    std::string devices;
    bool usable = false;
    for (int i = 0; i < count; i++) {
      cudaDeviceProp p{};
      if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      if (!devices.empty()) devices += ",";
      devices += "{\"index\":" + std::to_string(i) + ",\"name\":" + dg::jsonQuote(p.name) + ",\"computeCapability\":\"" +
                 std::to_string(p.major) + "." + std::to_string(p.minor) + "\",\"memoryBytes\":" +
                 std::to_string(p.totalGlobalMem) + ",\"multiprocessors\":" + std::to_string(p.multiProcessorCount) + "}";
      if (p.major >= dg::cuda::kMinMajor) usable = true;
    }
    std::string reason = count == 0 ? "no CUDA device found"
                         : usable   ? ""
                                    : "no CUDA device of compute capability 8.0 or newer (this build targets sm_80+)";
    dg::cuda::writeOut(out, len, std::string("{\"available\":") + (usable ? "true" : "false") + ",\"reason\":" +
                                     dg::jsonQuote(reason) + ",\"devices\":[" + devices + "]" + versions + "}");
    return usable ? 1 : 0;
  } catch (...) {
    dg::cuda::writeOut(out, len, "{\"available\":false,\"reason\":\"the CUDA probe failed\",\"devices\":[]}");
    return 0;
  }
}

DG_EXPORT dg::Ops* dg_cuda_create_ops(int device, char* err, size_t len) {
  try {
    int count = 0, runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();
      dg::cuda::writeOut(err, len, dg::cuda::deviceCountFailure(e, driver, runtime));
      return nullptr;
    }
    if (device < 0 || device >= count) {
      dg::cuda::writeOut(err, len, "CUDA device " + std::to_string(device) + " does not exist (" +
                                       std::to_string(count) + " found)");
      return nullptr;
    }
    cudaDeviceProp p{};
    e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
      dg::cuda::writeOut(err, len, std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(e));
      return nullptr;
    }
    if (p.major < dg::cuda::kMinMajor) {
      dg::cuda::writeOut(err, len, std::string("CUDA device ") + std::to_string(device) + " (" + p.name +
                                       ") has compute capability " + std::to_string(p.major) + "." +
                                       std::to_string(p.minor) + "; the CUDA backend needs 8.0 or newer");
      return nullptr;
    }
    return new dg::cuda::CudaOps(device);
  } catch (const std::exception& ex) {
    dg::cuda::writeOut(err, len, ex.what());
  } catch (...) {
    dg::cuda::writeOut(err, len, "unknown error creating the CUDA backend");
  }
  return nullptr;
}
