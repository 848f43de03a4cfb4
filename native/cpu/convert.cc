// Half-precision conversions: exact scalar reference versions plus bulk widening to f32
// with F16C / integer shifts where the processor has them.
#include <immintrin.h>

#include <cstring>

#include "errors.h"
#include "kernels.h"
#include "kquant.h"
#include "tensor.h"

// GCC 12's avx512 headers use self-initialised "undefined" vectors that -Wall flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace dg {

float f16ToF32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in f32 (power-of-two scale, 10-bit value).
    float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN keeping its payload
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
  // 65520 is halfway between 65504 (largest half, odd mantissa) and 2^16: ties go to inf.
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {  // below 2^-14: half subnormal or zero
    uint32_t e = a >> 23;
    uint32_t shift = 126 - e;               // value = m * 2^(e-150), half units are 2^-24
    if (e == 0 || shift > 24) return sign;  // below a quarter of the smallest subnormal
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) r++;  // may carry into the first normal
    return uint16_t(sign | r);
  }
  uint32_t h = ((a >> 23) - 112) << 10 | ((a >> 13) & 0x3ffu);
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // carry may bump the exponent
  return uint16_t(sign | h);
}

// ---- bulk widening ----------------------------------------------------------------------

static void toF32Scalar(float* out, const unsigned char* src, DType t, size_t n) {
  if (t == DType::F32) {
    std::memcpy(out, src, n * 4);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    out[i] = t == DType::BF16 ? bf16ToF32(h) : f16ToF32(h);
  }
}

__attribute__((target("avx2,fma,f16c"))) static void toF32Avx2(float* out, const unsigned char* src, DType t,
                                                               size_t n) {
  if (t == DType::F32) {
    std::memcpy(out, src, n * 4);
    return;
  }
  size_t i = 0;
  if (t == DType::BF16) {
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
      __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      _mm256_storeu_ps(out + i, _mm256_castsi256_ps(w));
    }
  } else {
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
    }
  }
  if (i < n) toF32Scalar(out + i, src + 2 * i, t, n - i);
}

__attribute__((target("avx512f,avx512bw,avx2,fma,f16c"))) static void toF32Avx512(float* out, const unsigned char* src,
                                                                                  DType t, size_t n) {
  if (t == DType::F32) {
    std::memcpy(out, src, n * 4);
    return;
  }
  size_t i = 0;
  if (t == DType::BF16) {
    for (; i + 16 <= n; i += 16) {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
      __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
      _mm512_storeu_ps(out + i, _mm512_castsi512_ps(w));
    }
  } else {
    for (; i + 16 <= n; i += 16) {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i));
      _mm512_storeu_ps(out + i, _mm512_cvtph_ps(h));
    }
  }
  if (i < n) toF32Scalar(out + i, src + 2 * i, t, n - i);
}

// ---- block formats (tensor.h): whole blocks of 32, scale times code (K-quants: kquant.cc) -------------------------

void dequantizeRow(DType t, const unsigned char* blocks, float* out, int64_t k) {
  if (isKQuant(t)) {
    dequantizeRowKQuant(t, blocks, out, k);
    return;
  }
  if (isRepacked(t)) {  // Q8_0x16: codes + 128 in chunks, then the scales (tensor.h)
    const int64_t nb = k / kQuantBlock;
    for (int64_t b = 0; b < nb; b++) {
      uint16_t h;
      std::memcpy(&h, blocks + 32 * nb + 2 * b, 2);
      const float d = f16ToF32(h);
      for (int j = 0; j < kQuantBlock; j++)
        out[b * kQuantBlock + j] = d * float(int(blocks[repackedCodeOffset(nb, b, j)]) - 128);
    }
    return;
  }
  const size_t bb = blockBytes(t);
  for (int64_t b = 0; b < k / kQuantBlock; b++) {
    const unsigned char* blk = blocks + size_t(b) * bb;
    uint16_t h;
    std::memcpy(&h, blk, 2);
    const float d = f16ToF32(h);
    float* o = out + b * kQuantBlock;
    if (t == DType::Q8_0) {
      const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
      for (int j = 0; j < kQuantBlock; j++) o[j] = d * float(q[j]);
    } else {
      for (int j = 0; j < kQuantBlock / 2; j++) {
        o[j] = d * float(int(blk[2 + j] & 0x0f) - 8);
        o[j + 16] = d * float(int(blk[2 + j] >> 4) - 8);
      }
    }
  }
}

using ToF32Fn = void (*)(float*, const unsigned char*, DType, size_t);

static ToF32Fn chooseToF32() {
  const char* v = cpuKernelVariant();
  if (std::strcmp(v, "avx512") == 0) return toF32Avx512;
  if (std::strcmp(v, "avx2") == 0) return toF32Avx2;
  return toF32Scalar;
}

void toF32(float* out, const void* data, DType t, size_t offset, size_t n) {
  // A Q8_0x16 offset says nothing about the row it falls in; the loader never repacks a table that
  // is read this way (the embedding), so this is a bug in the caller, not in the file.
  if (isRepacked(t)) throw Error(kErrArg, "toF32: Q8_0x16 rows are decoded with dequantizeRow");
  if (isBlockQuantized(t)) {  // whole blocks only (see tensor.h)
    const unsigned char* p =
        static_cast<const unsigned char*>(data) + offset / size_t(blockElements(t)) * blockBytes(t);
    dequantizeRow(t, p, out, int64_t(n));
    return;
  }
  static const ToF32Fn impl = chooseToF32();
  impl(out, static_cast<const unsigned char*>(data) + offset * dtypeSize(t), t, n);
}

}  // namespace dg
