// The CPU implementation of the op table: host memory, kernels from native/cpu/*.cc, and one
// thread pool shared by every op.
#include <sys/mman.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "../backend.h"
#include "../errors.h"

namespace dg {

namespace {

// Bytes held by CPU backends, for leak checks (mapped buffers are invisible to LeakSanitizer).
std::atomic<size_t> outstanding{0};

class CpuOps final : public Ops {
  static constexpr size_t kHeader = 64;
  static constexpr size_t kMapThreshold = size_t(1) << 20;

 public:
  explicit CpuOps(int threads) : pool_(threads) {}
  const char* name() const override { return "cpu"; }

  // Buffers carry a 64-byte header (their size) so release knows how they were made. Large ones
  // (KV caches, scratch) are mapped directly: unmapping returns them to the system at once,
  // whereas malloc keeps freed memory once glibc has raised its dynamic mmap threshold.
  float* alloc(size_t floats) override {
    size_t bytes = (((floats ? floats : 1) * sizeof(float)) + 63) & ~size_t(63);
    size_t total = bytes + kHeader;
    void* p = nullptr;
    if (total >= kMapThreshold) {
      p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) p = nullptr;
    } else if (posix_memalign(&p, 64, total) != 0) {
      p = nullptr;
    }
    if (!p) throw Error(kErrMemory, "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    *static_cast<size_t*>(p) = total;
    outstanding += total;
    return reinterpret_cast<float*>(static_cast<char*>(p) + kHeader);
  }
  void release(float* ptr) override {
    if (!ptr) return;
    char* p = reinterpret_cast<char*>(ptr) - kHeader;
    size_t total = *reinterpret_cast<size_t*>(p);
    outstanding -= total;
    if (total >= kMapThreshold) munmap(p, total);
    else std::free(p);
  }
  void copy(float* dst, const float* src, size_t floats) override { std::memcpy(dst, src, floats * 4); }
  void download(float* host, const float* src, size_t floats) override { std::memcpy(host, src, floats * 4); }
  void upload(float* dst, const float* host, size_t floats) override { std::memcpy(dst, host, floats * 4); }
  Weight prepareWeight(const Weight& w) override { return w; }

  void embed(float* x, const int32_t* tokens, int64_t rows, const Weight& t) override {
    for (int64_t r = 0; r < rows; r++) toF32(x + r * t.cols, t.data, t.dtype, size_t(tokens[r]) * t.cols, t.cols);
  }
  void rmsnorm(float* out, const float* x, int64_t rows, int64_t dim, const float* w, float eps) override {
    dg::rmsnorm(pool_, out, x, rows, dim, w, eps);
  }
  void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
              const float* bias) override {
    dg::matmul(pool_, out, ldo, x, ldx, rows, W, bias);
  }
  void rope(float* x, int64_t ldx, int64_t rows, const int32_t* pos, int nHeads, int headDim,
            const float* invFreq) override {
    dg::rope(pool_, x, ldx, rows, pos, nHeads, headDim, invFreq);
  }
  void kvWrite(const KvSlot* slots, const float* k, const float* v, int64_t rows, int64_t width) override {
    for (int64_t r = 0; r < rows; r++) {
      std::memcpy(slots[r].k, k + r * width, size_t(width) * 4);
      std::memcpy(slots[r].v, v + r * width, size_t(width) * 4);
    }
  }
  void attention(float* out, const float* q, const AttnRow* rows, int64_t n, int nHeads, int nKv, int headDim,
                 int window) override {
    rows_.resize(size_t(n));
    int64_t qd = int64_t(nHeads) * headDim;
    for (int64_t i = 0; i < n; i++)
      rows_[size_t(i)] = AttentionRow{q + rows[i].qRow * qd, rows[i].k, rows[i].v, out + rows[i].outRow * qd,
                                      rows[i].pos};
    dg::attention(pool_, rows_.data(), n, nHeads, nKv, headDim, window, 1.0f / std::sqrt(float(headDim)));
  }
  void siluMul(float* gate, const float* up, int64_t rows, int64_t n) override {
    dg::siluMul(pool_, gate, n, up, n, rows, n);
  }
  void tanhInPlace(float* x, int64_t n) override {
    for (int64_t i = 0; i < n; i++) x[i] = std::tanh(x[i]);
  }
  void addRows(float* x, const float* y, int64_t rows, int64_t dim) override {
    int64_t total = rows * dim;
    pool_.parallelFor(total, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; i++) x[i] += y[i];
    });
  }
  void gatherRows(float* dst, const float* src, const int32_t* idx, int64_t n, int64_t dim) override {
    for (int64_t i = 0; i < n; i++) std::memcpy(dst + i * dim, src + int64_t(idx[i]) * dim, size_t(dim) * 4);
  }
  void scatterAddRows(float* dst, const float* src, const int32_t* idx, const float* scale, int64_t n,
                      int64_t dim) override {
    pool_.parallelFor(n, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; i++) {
        float* d = dst + int64_t(idx[i]) * dim;
        const float* s = src + i * dim;
        float a = scale ? scale[i] : 1.0f;
        for (int64_t j = 0; j < dim; j++) d[j] += a * s[j];
      }
    });
  }
  int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p, uint64_t& rng) override {
    return sampleToken(logits, vocab, p, rng);
  }

 private:
  ThreadPool pool_;
  std::vector<AttentionRow> rows_;
};

}  // namespace

Ops* createCpuOps(int threads) { return new CpuOps(threads); }

size_t cpuBytesOutstanding() { return outstanding.load(); }

}  // namespace dg
