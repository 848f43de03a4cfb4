// Quantization to and from llama.cpp's Q8_0 and Q4_0 block formats (layouts in tensor.h), with
// the rounding of llama.cpp's reference quantizers (quantize_row_q8_0_ref, quantize_row_q4_0_ref
// in ggml-quants.c), so a weight quantized here has the bytes llama.cpp would write for it:
//  * Q8_0: d = max|x| / 127, q = round(x / d);
//  * Q4_0: d = m / -8 where m is the value of largest magnitude (sign kept), q = min(15, (int)(x / d + 8.5)).
// The codes are computed with the f32 scale and the scale is then stored as f16, as there.
// Decoding (dequantizeRow) is in convert.cc with the other conversions to f32. The K-quants (Q4_K,
// Q6_K) are quantized and decoded in kquant.cc.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "kquant.h"
#include "tensor.h"

namespace dg {

namespace {

inline void putScale(unsigned char* blk, float d) {
  const uint16_t h = f32ToF16(d);
  std::memcpy(blk, &h, 2);
}

// A non-finite input would make the int conversion undefined; such values are coded as 0 here
// and quantizeWeight tells its caller that it met them.
inline float finiteOrZero(float v) { return std::isfinite(v) ? v : 0.f; }

void quantizeBlockQ8_0(const float* x, unsigned char* blk) {
  float amax = 0.f;
  for (int j = 0; j < kQuantBlock; j++) amax = std::max(amax, std::fabs(finiteOrZero(x[j])));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  putScale(blk, d);
  int8_t* q = reinterpret_cast<int8_t*>(blk + 2);
  for (int j = 0; j < kQuantBlock; j++) q[j] = int8_t(std::round(finiteOrZero(x[j]) * id));
}

void quantizeBlockQ4_0(const float* x, unsigned char* blk) {
  float amax = 0.f, max = 0.f;
  for (int j = 0; j < kQuantBlock; j++) {
    const float v = finiteOrZero(x[j]);
    if (amax < std::fabs(v)) amax = std::fabs(v), max = v;
  }
  const float d = max / -8.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  putScale(blk, d);
  unsigned char* q = blk + 2;
  for (int j = 0; j < kQuantBlock / 2; j++) {
    // x * id + 8.5 lies in [0.5, 16.5] since |x * id| <= 8; the cast truncates like llama.cpp's.
    const int lo = std::min(15, int(finiteOrZero(x[j]) * id + 8.5f));
    const int hi = std::min(15, int(finiteOrZero(x[j + 16]) * id + 8.5f));
    q[j] = uint8_t(lo | (hi << 4));
  }
}

}  // namespace

void quantizeRow(DType t, const float* x, unsigned char* blocks, int64_t k) {
  if (isKQuant(t)) {
    quantizeRowKQuant(t, x, blocks, k);
    return;
  }
  const size_t bb = blockBytes(t);
  for (int64_t b = 0; b < k / kQuantBlock; b++) {
    if (t == DType::Q8_0)
      quantizeBlockQ8_0(x + b * kQuantBlock, blocks + size_t(b) * bb);
    else
      quantizeBlockQ4_0(x + b * kQuantBlock, blocks + size_t(b) * bb);
  }
}

bool quantizeWeight(ThreadPool& pool, const Weight& W, DType t, unsigned char* out) {
  std::atomic<bool> finite{true};
  const size_t inRow = rowBytes(W.dtype, W.cols), outRow = rowBytes(t, W.cols);
  const unsigned char* src = static_cast<const unsigned char*>(W.data);
  pool.parallelFor(W.rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> row(size_t(W.cols));
    for (int64_t r = r0; r < r1; r++) {
      toF32(row.data(), src + size_t(r) * inRow, W.dtype, 0, size_t(W.cols));
      for (float v : row)
        if (!std::isfinite(v)) finite.store(false, std::memory_order_relaxed);
      quantizeRow(t, row.data(), out + size_t(r) * outRow, W.cols);
    }
  });
  return finite.load();
}

}  // namespace dg
