// The op table: every operation the decoder's forward pass needs, with buffers owned by the
// backend. The engine (engine.cc) is written only against this interface; the CPU backend
// (cpu/cpu_backend.cc) implements it with the kernels in native/cpu/, and the CUDA backend
// (cuda/, loaded at run time) implements the same table on the GPU.
//
// Buffers passed to ops are backend memory (host memory for the CPU, device memory for CUDA).
// Activations are f32; weights are Weight views that the backend got from prepareWeight().
// Small index and scale arrays (tokens, positions, row indices, AttnRow, KvSlot, scales) are
// host arrays; a device backend copies them over itself.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"
#include "tensor.h"

namespace dg {

// One query row of attention: where its query is, which cache it reads, where it writes.
struct AttnRow {
  int32_t qRow;      // row in the query buffer
  int32_t outRow;    // row in the output buffer
  int32_t pos;       // absolute position of the token
  const float* k;    // this row's sequence cache for the layer, [capacity, nKv*headDim]
  const float* v;
};

// One row's K/V destination in its sequence cache.
struct KvSlot {
  float* k;  // row base of the cache at the token's position, for this layer
  float* v;
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual const char* name() const = 0;

  // Memory.
  virtual float* alloc(size_t floats) = 0;  // throws dg::Error(kErrMemory) when it cannot
  virtual void release(float* p) = 0;
  virtual void copy(float* dst, const float* src, size_t floats) = 0;  // backend to backend
  virtual void download(float* host, const float* src, size_t floats) = 0;
  virtual void upload(float* dst, const float* host, size_t floats) = 0;
  virtual Weight prepareWeight(const Weight& hostView) = 0;  // CPU: the mmap view itself

  // x[r] = table[tokens[r]]
  virtual void embed(float* x, const int32_t* tokens, int64_t rows, const Weight& table) = 0;
  virtual void rmsnorm(float* out, const float* x, int64_t rows, int64_t dim, const float* weight,
                       float eps) = 0;
  // out[r] = W x[r] + bias (bias may be null)
  virtual void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
                      const float* bias) = 0;
  virtual void rope(float* x, int64_t ldx, int64_t rows, const int32_t* positions, int nHeads, int headDim,
                    const float* invFreq) = 0;
  // Copies row r of k and v (width floats each) into slots[r]: every token writes its K/V.
  virtual void kvWrite(const KvSlot* slots, const float* k, const float* v, int64_t rows, int64_t width) = 0;
  virtual void attention(float* out, const float* q, const AttnRow* rows, int64_t nRows, int nHeads, int nKv,
                         int headDim, int window) = 0;
  virtual void siluMul(float* gate, const float* up, int64_t rows, int64_t n) = 0;
  virtual void tanhInPlace(float* x, int64_t n) = 0;
  // x[r] += y[r] over all rows
  virtual void addRows(float* x, const float* y, int64_t rows, int64_t dim) = 0;
  // dst[i] = src[idx[i]]  (compacting the active rows)
  virtual void gatherRows(float* dst, const float* src, const int32_t* idx, int64_t n, int64_t dim) = 0;
  // dst[idx[i]] += scale[i] * src[i]  (scale may be null = 1)
  virtual void scatterAddRows(float* dst, const float* src, const int32_t* idx, const float* scale, int64_t n,
                              int64_t dim) = 0;
  virtual int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p, uint64_t& rng) = 0;
};

// cpu/cpu_backend.cc
Ops* createCpuOps(int threads);
// Bytes currently allocated by all CPU backends (for leak tests).
size_t cpuBytesOutstanding();

}  // namespace dg
