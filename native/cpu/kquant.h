// The K-quant super-block formats Q4_K and Q6_K (layouts in tensor.h): llama.cpp's reference
// quantizers and the decoders, per row (cpu/kquant.cc). Internal to native/cpu/: callers go through
// quantizeRow / dequantizeRow (kernels.h), which route K-quants here.
#pragma once
#include <cstdint>

#include "tensor.h"

namespace dg {

// k a multiple of 256; `blocks` holds k / 256 super-blocks. Non-finite inputs are coded as 0.
void quantizeRowKQuant(DType t, const float* x, unsigned char* blocks, int64_t k);
void dequantizeRowKQuant(DType t, const unsigned char* blocks, float* out, int64_t k);

// Q4_K's 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
inline void q4kScaleMin(const unsigned char* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace dg
