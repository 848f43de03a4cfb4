// The CPU implementation of the op table: host memory, kernels from native/cpu/*.cc, and one
// thread pool shared by every op. "Backend memory" is host memory here, so row counts and index
// lists that a device backend would keep on the GPU are simply read.
#include <sys/mman.h>

#include <algorithm>
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

inline int64_t countOf(const RowSet& s) { return s.count ? std::min<int64_t>(*s.count, s.max) : s.max; }
inline int64_t rowOf(const RowSet& s, int64_t i) { return s.idx ? s.idx[i] : i; }

// Rounds n f32 values into the cache dtype.
void storeAs(void* dst, DType t, const float* src, int64_t n) {
  if (t == DType::F32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  if (t == DType::BF16)
    for (int64_t i = 0; i < n; i++) d[i] = f32ToBf16(src[i]);
  else
    for (int64_t i = 0; i < n; i++) d[i] = f32ToF16(src[i]);
}

class CpuOps final : public Ops {
  static constexpr size_t kHeader = 64;
  static constexpr size_t kMapThreshold = size_t(1) << 20;

 public:
  explicit CpuOps(int threads) : pool_(threads) {}
  const char* name() const override { return "cpu"; }

  // Buffers carry a 64-byte header (their size) so release knows how they were made. Large ones
  // (KV caches, scratch) are mapped directly: unmapping returns them to the system at once,
  // whereas malloc keeps freed memory once glibc has raised its dynamic mmap threshold.
  void* alloc(size_t bytes) override {
    const size_t rounded = ((bytes ? bytes : 1) + 63) & ~size_t(63);
    const size_t total = rounded + kHeader;
    void* p = nullptr;
    if (total >= kMapThreshold) {
      p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) p = nullptr;
    } else if (posix_memalign(&p, 64, total) != 0) {
      p = nullptr;
    }
    if (!p) throw Error(kErrMemory, "cannot allocate " + std::to_string(rounded) + " bytes of host memory");
    *static_cast<size_t*>(p) = total;
    outstanding += total;
    return static_cast<char*>(p) + kHeader;
  }
  void release(void* ptr) override {
    if (!ptr) return;
    char* p = static_cast<char*>(ptr) - kHeader;
    const size_t total = *reinterpret_cast<size_t*>(p);
    outstanding -= total;
    if (total >= kMapThreshold)
      munmap(p, total);
    else
      std::free(p);
  }
  void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void upload(void* dst, const void* host, size_t bytes) override { std::memcpy(dst, host, bytes); }
  void download(void* host, const void* src, size_t bytes) override { std::memcpy(host, src, bytes); }
  void sync() override {}
  Weight prepareWeight(const Weight& w) override { return w; }

  void embed(float* x, const int32_t* tokens, int64_t rows, const Weight& t) override {
    for (int64_t r = 0; r < rows; r++)
      toF32(x + r * t.cols, t.data, t.dtype, size_t(tokens[r]) * size_t(t.cols), size_t(t.cols));
  }

  void rmsnorm(float* out, const float* x, RowSet rows, int64_t dim, const float* w, float eps) override {
    const int64_t n = countOf(rows);
    if (n <= 0) return;
    if (!rows.idx) {
      dg::rmsnorm(pool_, out, x, n, dim, w, eps);
      return;
    }
    for (int64_t i = 0; i < n; i++)
      if (out + i * dim != x + rowOf(rows, i) * dim)
        std::memmove(out + i * dim, x + rowOf(rows, i) * dim, size_t(dim) * 4);
    dg::rmsnorm(pool_, out, out, n, dim, w, eps);
  }

  void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W, const float* bias,
              Epilogue ep) override {
    const int64_t n = countOf(rows);
    if (n <= 0) return;
    int64_t ld = ldx;
    const float* in = gathered(x, ldx, rows, n, W.cols, gather_, ld);
    if (ep.mode == Epilogue::Store || ep.mode == Epilogue::Add) {
      dg::matmul(pool_, out, ldo, in, ld, n, W, bias, ep.mode == Epilogue::Add);
      return;
    }
    // ScatterAdd: the product into scratch, then out[dst[i]] += s_i * y_i.
    y_.resize(size_t(n) * size_t(W.rows));
    dg::matmul(pool_, y_.data(), W.rows, in, ld, n, W, bias, false);
    for (int64_t i = 0; i < n; i++) {
      const int64_t r = ep.dst[i];
      const float s = ep.scaleMode == Epilogue::One ? 1.f
                      : ep.scaleMode == Epilogue::W ? ep.scale[r]
                                                    : 1.f - ep.scale[r];
      float* o = out + r * ldo;
      const float* y = y_.data() + i * W.rows;
      for (int64_t j = 0; j < W.rows; j++) o[j] += s * y[j];
    }
  }

  void matmul2(float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx, RowSet rows,
               const Weight& W0, const float* b0, const Weight& W1, const float* b1) override {
    const int64_t n = countOf(rows);
    if (n <= 0) return;
    int64_t ld = ldx;
    const float* in = gathered(x, ldx, rows, n, W0.cols, gather_, ld);
    if (n == 1) {  // decode: both matrices in one parallel loop
      const GemvJob jobs[2] = {{out0, &W0, b0, false}, {out1, &W1, b1, false}};
      matmulMany(pool_, in, jobs, 2);
      return;
    }
    dg::matmul(pool_, out0, ldo0, in, ld, n, W0, b0, false);
    dg::matmul(pool_, out1, ldo1, in, ld, n, W1, b1, false);
  }

  void matmulGateUp(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                    const float* bg, const Weight& Wu, const float* bu) override {
    const int64_t n = countOf(rows);
    if (n <= 0) return;
    int64_t ld = ldx;
    const float* in = gathered(x, ldx, rows, n, Wg.cols, gather_, ld);
    if (n == 1) {
      gateUpVector(pool_, out, in, Wg, bg, Wu, bu);
      return;
    }
    y_.resize(size_t(n) * size_t(Wu.rows));
    dg::matmul(pool_, out, ldo, in, ld, n, Wg, bg, false);
    dg::matmul(pool_, y_.data(), Wu.rows, in, ld, n, Wu, bu, false);
    dg::siluMul(pool_, out, ldo, y_.data(), Wu.rows, n, Wg.rows);
  }

  void kvWriteRope(float* k, const float* v, const StepRows& step, int layer, const AttnShape& a,
                   const float* invFreq) override {
    const int64_t kvd = a.kvWidth();
    const size_t es = dtypeSize(a.kv);
    for (int64_t r = 0; r < step.rows; r++) {
      float* kr = k + r * kvd;
      ropeRow(kr, a.nKv, a.headDim, invFreq, step.pos[r]);
      const KvCacheRef& s = step.seqs[step.seq[r]];
      const size_t at = (size_t(layer) * size_t(s.capacity) + size_t(step.pos[r])) * size_t(kvd) * es;
      storeAs(static_cast<char*>(s.k) + at, a.kv, kr, kvd);
      storeAs(static_cast<char*>(s.v) + at, a.kv, v + r * kvd, kvd);
    }
  }

  void ropeRows(float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                const float* invFreq) override {
    const int64_t n = countOf(rows);
    for (int64_t i = 0; i < n; i++) ropeRow(q + i * ldq, nHeads, headDim, invFreq, step.pos[rowOf(rows, i)]);
  }

  void attention(float* out, const float* q, RowSet rows, const StepRows& step, int layer,
                 const AttnShape& a) override {
    const int64_t n = countOf(rows);
    if (n <= 0) return;
    const int64_t qd = int64_t(a.nHeads) * a.headDim, kvd = a.kvWidth();
    const size_t es = dtypeSize(a.kv);
    attnRows_.resize(size_t(n));
    for (int64_t i = 0; i < n; i++) {
      const int64_t r = rowOf(rows, i);
      const KvCacheRef& s = step.seqs[step.seq[r]];
      const size_t layerAt = size_t(layer) * size_t(s.capacity) * size_t(kvd) * es;
      attnRows_[size_t(i)] = AttentionRow{q + i * qd, static_cast<const char*>(s.k) + layerAt,
                                          static_cast<const char*>(s.v) + layerAt, out + i * qd, step.pos[r]};
    }
    dg::attention(pool_, attnRows_.data(), n, a.nHeads, a.nKv, a.headDim, a.window, 1.0f / std::sqrt(float(a.headDim)),
                  a.kv);
  }

  void tanhRows(float* x, RowSet rows, int64_t dim) override {
    const int64_t n = countOf(rows);
    for (int64_t i = 0; i < n; i++) {
      float* row = x + rowOf(rows, i) * dim;
      for (int64_t j = 0; j < dim; j++) row[j] = std::tanh(row[j]);
    }
  }

  void routeThreshold(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits, int64_t rows,
                      float threshold) override {
    for (int64_t r = 0; r < rows; r++) {
      const float w = 1.0f / (1.0f + std::exp(-logits[r]));
      const uint8_t run = w > threshold ? 1 : 0;
      runAttn[r] = run;
      runMlp[r] = run;
      weight[r] = w;
    }
  }

  void routeArgmax(uint8_t* run, const float* logits, int64_t rows) override {
    for (int64_t r = 0; r < rows; r++) run[r] = logits[2 * r + 1] > logits[2 * r] ? 1 : 0;
  }

  void compact(const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
               int32_t* skipCount) override {
    int32_t a = 0, b = 0;
    for (int64_t r = 0; r < rows; r++) {
      if (flags[r])
        runIdx[a++] = int32_t(r);
      else if (skipIdx)
        skipIdx[b++] = int32_t(r);
    }
    *runCount = a;
    if (skipCount) *skipCount = b;
  }

  void sample(int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
              const PenaltyToken* penalties) override {
    for (int64_t i = 0; i < rows; i++) {
      SampleRow& p = params[i];
      if (penalties && p.penaltyCount > 0)
        applyPenalties(logits + i * vocab, vocab, penalties + p.penaltyStart, p.penaltyCount, p.repetitionPenalty,
                       p.frequencyPenalty, p.presencePenalty);
      if (!p.draw) continue;
      SamplingParams sp;
      sp.temperature = p.temperature;
      sp.topK = p.topK;
      sp.topP = p.topP;
      tokens[i] = sampleToken(logits + i * vocab, vocab, sp, p.rng);
    }
  }

 private:
  // The rows of a set as a contiguous input: x itself when the set is dense, else a copy.
  static const float* gathered(const float* x, int64_t ldx, const RowSet& rows, int64_t n, int64_t cols,
                               std::vector<float>& buf, int64_t& ld) {
    if (!rows.idx) return x;
    buf.resize(size_t(n) * size_t(cols));
    for (int64_t i = 0; i < n; i++) std::memcpy(buf.data() + i * cols, x + rows.idx[i] * ldx, size_t(cols) * 4);
    ld = cols;
    return buf.data();
  }

  ThreadPool pool_;
  std::vector<AttentionRow> attnRows_;
  std::vector<float> gather_, y_;
};

}  // namespace

Ops* createCpuOps(int threads) { return new CpuOps(threads); }

size_t cpuBytesOutstanding() { return outstanding.load(); }

}  // namespace dg
