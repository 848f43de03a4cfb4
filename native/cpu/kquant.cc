// Q4_K and Q6_K (layouts in tensor.h) to and from f32, with the arithmetic of llama.cpp's reference
// quantizers (quantize_row_q4_K_ref, quantize_row_q6_K_ref in ggml-quants.c) step for step in f32,
// so a row quantized here has the bytes llama.cpp writes for it without an importance matrix:
//  * Q4_K: each 32-wide sub-block gets a scale and a min from a weighted least-squares search over
//    21 candidate grids (make_qkx2_quants: weights av|x| + |x|, search -1 + 0.1 s, s = 0..20); the
//    8 scales and 8 mins are then coded in 6 bits against the super-block's largest (f16 d, dmin),
//    and every weight is coded again against its decoded scale and min.
//  * Q6_K: each 16-wide sub-block gets a symmetric scale from make_qx_quants (weights x^2, search
//    around 32 levels in steps of 0.1); the 16 scales are coded as int8 against the largest
//    (f16 d = max / -128), and every weight is coded again against its decoded scale.
// The rounding is llama.cpp's nearest_int: to nearest, ties to even.
#include "kquant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace dg {

namespace {

constexpr float kGroupEps = 1e-15f;  // llama.cpp's GROUP_MAX_EPS: a sub-block below it is all zero

// Round to nearest, ties to even (the current rounding mode), as llama.cpp's nearest_int does for
// the magnitudes it meets (< 2^22); larger ones are clamped first so the conversion is defined.
inline int roundToInt(float v) { return int(std::lrint(std::max(-4.0e6f, std::min(4.0e6f, v)))); }

inline float f16At(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16ToF32(h);
}
inline void putF16(unsigned char* p, float v) {
  const uint16_t h = f32ToF16(v);
  std::memcpy(p, &h, 2);
}

// make_qkx2_quants(32, 15, x, w, L, &min, Laux, -1, 0.1, 20, false): codes L in [0, 15] with
// x ~= scale * L - negMin, minimising sum w (scale * L + min - x)^2 over the candidate grids.
float fitScaleMin(const float* x, const float* w, uint8_t* L, float& negMin) {
  constexpr int n = 32, nmax = 15, nstep = 20;
  constexpr float rmin = -1.f, rdelta = 0.1f;
  float lo = x[0], hi = x[0], sumW = w[0], sumX = w[0] * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
    sumW += w[i];
    sumX += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    std::fill(L, L + n, uint8_t(0));
    negMin = -lo;
    return 0.f;
  }
  float iscale = float(nmax) / (hi - lo);
  float scale = 1 / iscale;
  float bestErr = 0;
  for (int i = 0; i < n; i++) {
    L[i] = uint8_t(std::max(0, std::min(nmax, roundToInt(iscale * (x[i] - lo)))));
    const float diff = scale * float(L[i]) + lo - x[i];
    bestErr += w[i] * (diff * diff);
  }
  uint8_t cand[n];
  for (int s = 0; s <= nstep; s++) {
    // The grid follows the best min found so far (lo changes inside the loop), as in llama.cpp.
    iscale = (rmin + rdelta * float(s) + float(nmax)) / (hi - lo);
    float sumL = 0, sumL2 = 0, sumXL = 0;
    for (int i = 0; i < n; i++) {
      const int l = std::max(0, std::min(nmax, roundToInt(iscale * (x[i] - lo))));
      cand[i] = uint8_t(l);
      const float wl = w[i] * float(l);
      sumL += wl;
      sumL2 += wl * float(l);
      sumXL += wl * x[i];
    }
    const float D = sumW * sumL2 - sumL * sumL;
    if (!(D > 0)) continue;
    float candScale = (sumW * sumXL - sumX * sumL) / D;
    float candMin = (sumL2 * sumX - sumL * sumXL) / D;
    if (candMin > 0) {
      candMin = 0;
      candScale = sumXL / sumL2;
    }
    float err = 0;
    for (int i = 0; i < n; i++) {
      const float diff = candScale * float(cand[i]) + candMin - x[i];
      err += w[i] * (diff * diff);
    }
    if (err < bestErr) {
      std::memcpy(L, cand, n);
      bestErr = err;
      scale = candScale;
      lo = candMin;
    }
  }
  negMin = -lo;
  return scale;
}

void quantizeBlockQ4K(const float* x, unsigned char* blk) {
  uint8_t L[256];
  float scales[8], mins[8], w[32];
  float maxScale = 0, maxMin = 0;
  for (int j = 0; j < 8; j++) {
    const float* xs = x + 32 * j;
    float sumX2 = 0;
    for (int l = 0; l < 32; l++) sumX2 += xs[l] * xs[l];
    const float avX = std::sqrt(sumX2 / 32);
    for (int l = 0; l < 32; l++) w[l] = avX + std::fabs(xs[l]);
    scales[j] = fitScaleMin(xs, w, L + 32 * j, mins[j]);
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }
  const float invScale = maxScale > 0 ? 63.f / maxScale : 0.f;
  const float invMin = maxMin > 0 ? 63.f / maxMin : 0.f;
  unsigned char* s = blk + 4;
  for (int j = 0; j < 8; j++) {
    // int to uint8_t wraps, as the C assignment does, before the clamp to 63.
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(roundToInt(invScale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(roundToInt(invMin * mins[j])));
    if (j < 4) {
      s[j] = ls;
      s[j + 4] = lm;
    } else {
      s[j + 4] = uint8_t((ls & 0x0f) | ((lm & 0x0f) << 4));
      s[j - 4] |= uint8_t((ls >> 4) << 6);
      s[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  putF16(blk, maxScale / 63.f);
  putF16(blk + 2, maxMin / 63.f);
  const float d = f16At(blk), dmin = f16At(blk + 2);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    q4kScaleMin(s, j, sc, m);
    const float dj = d * float(sc);
    if (dj == 0.f) continue;  // the fit's codes stay
    const float mj = dmin * float(m);
    for (int i = 0; i < 32; i++)
      L[32 * j + i] = uint8_t(std::max(0, std::min(15, roundToInt((x[32 * j + i] + mj) / dj))));
  }
  unsigned char* q = blk + 16;
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) q[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

// make_qx_quants(16, 32, x, L, 1, NULL): symmetric codes L in [0, 63] (value L - 32) with
// x ~= scale * (L - 32), weights x^2, the best of 19 grids around 32 levels.
float fitSymmetric(const float* x, int8_t* L) {
  constexpr int n = 16, nmax = 32;
  float max = 0, amax = 0;
  for (int i = 0; i < n; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) amax = ax, max = x[i];
  }
  if (amax < kGroupEps) {
    std::fill(L, L + n, int8_t(0));
    return 0.f;
  }
  auto codeOf = [&](float iscale, int i) { return std::max(-nmax, std::min(nmax - 1, roundToInt(iscale * x[i]))); };
  float iscale = float(-nmax) / max;
  float sumLX = 0, sumL2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = codeOf(iscale, i);
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    sumLX += w * x[i] * float(l);
    sumL2 += w * float(l) * float(l);
  }
  float scale = sumL2 != 0 ? sumLX / sumL2 : 0.f;
  float best = scale * sumLX;
  for (int s = -9; s <= 9; s++) {
    if (s == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(s)) / max;
    sumLX = sumL2 = 0;
    for (int i = 0; i < n; i++) {
      const int l = codeOf(iscale, i);
      const float w = x[i] * x[i];
      sumLX += w * x[i] * float(l);
      sumL2 += w * float(l) * float(l);
    }
    if (sumL2 > 0 && sumLX * sumLX > best * sumL2) {
      for (int i = 0; i < n; i++) L[i] = int8_t(codeOf(iscale, i) + nmax);
      scale = sumLX / sumL2;
      best = scale * sumLX;
    }
  }
  return scale;
}

void quantizeBlockQ6K(const float* x, unsigned char* blk) {
  int8_t L[256];
  float scales[16];
  float maxScale = 0, maxAbsScale = 0;
  for (int b = 0; b < 16; b++) {
    scales[b] = fitSymmetric(x + 16 * b, L + 16 * b);
    if (std::fabs(scales[b]) > maxAbsScale) maxAbsScale = std::fabs(scales[b]), maxScale = scales[b];
  }
  std::memset(blk, 0, 210);
  if (maxAbsScale < kGroupEps) return;  // all zero, d = 0
  const float iscale = -128.f / maxScale;
  putF16(blk + 208, 1 / iscale);
  int8_t* sc = reinterpret_cast<int8_t*>(blk + 192);
  for (int b = 0; b < 16; b++) sc[b] = int8_t(std::max(-128, std::min(127, roundToInt(iscale * scales[b]))));
  const float d = f16At(blk + 208);
  for (int b = 0; b < 16; b++) {
    const float db = d * float(sc[b]);
    if (db == 0.f) continue;  // the fit's codes stay
    for (int i = 0; i < 16; i++)
      L[16 * b + i] = int8_t(std::max(-32, std::min(31, roundToInt(x[16 * b + i] / db))) + 32);
  }
  unsigned char *ql = blk, *qh = blk + 128;
  for (int h = 0; h < 2; h++) {
    const int8_t* Lh = L + 128 * h;
    for (int l = 0; l < 32; l++) {
      ql[64 * h + l] = uint8_t((Lh[l] & 0x0f) | ((Lh[l + 64] & 0x0f) << 4));
      ql[64 * h + 32 + l] = uint8_t((Lh[l + 32] & 0x0f) | ((Lh[l + 96] & 0x0f) << 4));
      qh[32 * h + l] =
          uint8_t((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
    }
  }
}

void dequantizeBlockQ4K(const unsigned char* blk, float* y) {
  const float d = f16At(blk), dmin = f16At(blk + 2);
  const unsigned char *s = blk + 4, *q = blk + 16;
  for (int c = 0; c < 4; c++) {
    int sc0, m0, sc1, m1;
    q4kScaleMin(s, 2 * c, sc0, m0);
    q4kScaleMin(s, 2 * c + 1, sc1, m1);
    const float d0 = d * float(sc0), n0 = dmin * float(m0), d1 = d * float(sc1), n1 = dmin * float(m1);
    for (int l = 0; l < 32; l++) {
      y[64 * c + l] = d0 * float(q[32 * c + l] & 0x0f) - n0;
      y[64 * c + 32 + l] = d1 * float(q[32 * c + l] >> 4) - n1;
    }
  }
}

void dequantizeBlockQ6K(const unsigned char* blk, float* y) {
  const unsigned char *ql = blk, *qh = blk + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
  const float d = f16At(blk + 208);
  for (int h = 0; h < 2; h++)
    for (int l = 0; l < 32; l++) {
      const unsigned char lo0 = ql[64 * h + l], lo1 = ql[64 * h + 32 + l], hb = qh[32 * h + l];
      const int q[4] = {(lo0 & 0x0f) | ((hb & 3) << 4), (lo1 & 0x0f) | (((hb >> 2) & 3) << 4),
                        (lo0 >> 4) | (((hb >> 4) & 3) << 4), (lo1 >> 4) | (((hb >> 6) & 3) << 4)};
      for (int g = 0; g < 4; g++) {
        const int i = 128 * h + 32 * g + l;
        y[i] = d * float(sc[i / 16]) * float(q[g] - 32);
      }
    }
}

}  // namespace

void quantizeRowKQuant(DType t, const float* x, unsigned char* blocks, int64_t k) {
  float clean[256];
  for (int64_t b = 0; b < k / kSuperBlock; b++) {
    for (int i = 0; i < 256; i++) {
      const float v = x[b * kSuperBlock + i];
      clean[i] = std::isfinite(v) ? v : 0.f;  // quantizeWeight reports non-finite values
    }
    unsigned char* blk = blocks + size_t(b) * blockBytes(t);
    if (t == DType::Q4_K)
      quantizeBlockQ4K(clean, blk);
    else
      quantizeBlockQ6K(clean, blk);
  }
}

void dequantizeRowKQuant(DType t, const unsigned char* blocks, float* out, int64_t k) {
  for (int64_t b = 0; b < k / kSuperBlock; b++) {
    const unsigned char* blk = blocks + size_t(b) * blockBytes(t);
    if (t == DType::Q4_K)
      dequantizeBlockQ4K(blk, out + b * kSuperBlock);
    else
      dequantizeBlockQ6K(blk, out + b * kSuperBlock);
  }
}

}  // namespace dg
