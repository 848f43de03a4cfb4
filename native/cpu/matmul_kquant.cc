// out[r, o] = sum_i x[r, i] * W[o, i] (+ bias[o]) for W in a K-quant (Q4_K, Q6_K; tensor.h).
//
// The activation rows are quantized once per call, as llama.cpp's Q8_K does: 256-wide blocks with
// an f32 scale d_x = max|x| / 127 and int8 codes rint(x * 127 / max|x|) (the rounding of the 32-wide
// kernels, matmul_quant.cc), plus the 16 int16 sums of each 16 codes. A super-block of W and one of
// x then meet in integer dot products, scaled in f32 once per super-block:
//   Q4_K: w = d sc_j q - dmin m_j, so W . x ~= d_x (d sum_j sc_j (q . a)_j - dmin sum_j m_j sum(a)_j),
//         the min term from the 16-wide sums (sub-block j of 32 is two of them);
//   Q6_K: w = d sc_k (q - 32), so W . x ~= d_x d (sum_k sc_k (q . a)_k - 32 sum_k sc_k sum(a)_k).
// The codes q are unsigned (Q4_K 0..15, Q6_K 0..63), so u8 x s8 products need no sign trick:
// AVX2 vpmaddubsw (pairs at most 2 * 63 * 127, no saturation) then vpmaddwd by the sub-block scales,
// or AVX-512 VNNI vpdpbusd then a multiply by the scales; the scalar variant does the same in int32.
// Every super-block's integer sum fits int32 (at most 256 * 63 * 127 * 128 for Q6_K).
//
// The work split is the 32-wide kernels': 4-row groups of W across the threads; with several
// activation rows (prefill) each group runs every row while its weight rows are hot.
#include <algorithm>
#include <cmath>
#include <vector>

#include "errors.h"
#include "kquant.h"
#include "matmul_common.h"

namespace dg {
namespace matmul_detail {
namespace {

// Row r of the quantized activations: codes q + r * k, scales d + r * nb, 16-wide sums s + r * nb * 16.
struct KRows {
  const int8_t* q;
  const float* d;
  const int16_t* sums;
  int64_t k;
};

// A block with a non-finite value gets scale NaN (codes 0), so the NaN reaches the output.
KRows quantizeActivationsK(const float* x, int64_t ldx, int64_t rows, int64_t k) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  thread_local std::vector<int16_t> sums;
  const int64_t nb = k / kSuperBlock;
  q.resize(size_t(rows * k));
  d.resize(size_t(rows * nb));
  sums.resize(size_t(rows * nb * 16));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t b = 0; b < nb; b++) {
      const float* xb = x + r * ldx + b * kSuperBlock;
      int8_t* qb = q.data() + r * k + b * kSuperBlock;
      int16_t* sb = sums.data() + (r * nb + b) * 16;
      float amax = 0.f;
      bool finite = true;
      for (int j = 0; j < kSuperBlock; j++) {
        finite = finite && std::isfinite(xb[j]);
        amax = std::max(amax, std::fabs(xb[j]));
      }
      float& scale = d[size_t(r * nb + b)];
      scale = finite ? amax / 127.f : NAN;
      const float inv = finite && amax != 0.f ? 127.f / amax : 0.f;
      for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 16 * g; j < 16 * g + 16; j++) {
          qb[j] = int8_t(finite ? std::lrint(xb[j] * inv) : 0);
          s += qb[j];
        }
        sb[g] = int16_t(s);
      }
    }
  return {q.data(), d.data(), sums.data(), k};
}

inline float halfAt(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16ToF32(h);
}

// The min term of a Q4_K super-block: sum_j m_j * (sum of the 32 codes of sub-block j).
inline int32_t q4kMinTerm(const unsigned char* scales, const int16_t* sums) {
  int32_t t = 0;
  for (int j = 0; j < 8; j++) {
    int sc, m;
    q4kScaleMin(scales, j, sc, m);
    t += m * (int32_t(sums[2 * j]) + sums[2 * j + 1]);
  }
  return t;
}

// ---- one weight row dotted with one quantized activation row -------------------------------

template <DType T>
float kdotScalar(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; b++) {
    const unsigned char* blk = w + size_t(b) * blockBytes(T);
    const int8_t* a = aq + b * kSuperBlock;
    const int16_t* sums = as + b * 16;
    if constexpr (T == DType::Q4_K) {
      const unsigned char* q = blk + 16;
      int32_t dot = 0;
      for (int c = 0; c < 4; c++) {
        int sc0, m0, sc1, m1;
        q4kScaleMin(blk + 4, 2 * c, sc0, m0);
        q4kScaleMin(blk + 4, 2 * c + 1, sc1, m1);
        int32_t lo = 0, hi = 0;
        for (int l = 0; l < 32; l++) {
          lo += int32_t(q[32 * c + l] & 0x0f) * a[64 * c + l];
          hi += int32_t(q[32 * c + l] >> 4) * a[64 * c + 32 + l];
        }
        dot += sc0 * lo + sc1 * hi;
      }
      s += ad[b] * (halfAt(blk) * float(dot) - halfAt(blk + 2) * float(q4kMinTerm(blk + 4, sums)));
    } else {
      const unsigned char *ql = blk, *qh = blk + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      int32_t dot = 0;
      for (int h = 0; h < 2; h++)
        for (int g = 0; g < 4; g++)
          for (int half = 0; half < 2; half++) {
            int32_t part = 0;
            for (int l = 16 * half; l < 16 * half + 16; l++) {
              const unsigned char lo = ql[64 * h + 32 * (g & 1) + l];
              const int q = ((g < 2 ? lo : lo >> 4) & 0x0f) | (((qh[32 * h + l] >> (2 * g)) & 3) << 4);
              part += q * a[128 * h + 32 * g + l];
            }
            dot += sc[8 * h + 2 * g + half] * part;
          }
      int32_t offset = 0;
      for (int k = 0; k < 16; k++) offset += sc[k] * int32_t(sums[k]);
      s += ad[b] * halfAt(blk + 208) * float(dot - 32 * offset);
    }
  }
  return s;
}

DG_AVX2 inline int32_t hsumEpi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// 8 int32 partial sums of u . a over 32 (u8, s8) pairs, bytes 0..15 scaled by s0, 16..31 by s1.
struct KDotAvx2 {
  DG_AVX2 static __m256i dot(__m256i u, __m256i a, int s0, int s1) {
    const __m256i p = _mm256_maddubs_epi16(u, a);
    return _mm256_madd_epi16(p, _mm256_set_m128i(_mm_set1_epi16(int16_t(s1)), _mm_set1_epi16(int16_t(s0))));
  }
};
struct KDotVnni {
  DG_VNNI static __m256i dot(__m256i u, __m256i a, int s0, int s1) {
    const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a);
    return _mm256_mullo_epi32(p, _mm256_set_m128i(_mm_set1_epi32(s1), _mm_set1_epi32(s0)));
  }
};

// One body per ISA and format. The integer sum of each super-block is reduced to a scalar so the
// Q6_K offset (32 sum sc_k sum(a)_k) is taken off exactly.
#define KDOT_KERNELS(ATTR, NAME, DOT)                                                                                 \
  ATTR float NAME##Q4K(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb) {    \
    const __m256i m4 = _mm256_set1_epi8(0x0f);                                                                        \
    float s = 0.f;                                                                                                    \
    for (int64_t b = 0; b < nb; b++) {                                                                                \
      const unsigned char* blk = w + size_t(b) * 144;                                                                 \
      const int8_t* a = aq + b * kSuperBlock;                                                                         \
      __m256i acc = _mm256_setzero_si256();                                                                           \
      for (int c = 0; c < 4; c++) {                                                                                   \
        int sc0, m0, sc1, m1;                                                                                         \
        q4kScaleMin(blk + 4, 2 * c, sc0, m0);                                                                         \
        q4kScaleMin(blk + 4, 2 * c + 1, sc1, m1);                                                                     \
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * c));                    \
        const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 64 * c));                          \
        const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 64 * c + 32));                     \
        acc = _mm256_add_epi32(acc, DOT::dot(_mm256_and_si256(q, m4), a0, sc0, sc0));                                 \
        acc = _mm256_add_epi32(acc, DOT::dot(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), a1, sc1, sc1));           \
      }                                                                                                               \
      s += ad[b] * (halfAt(blk) * float(hsumEpi32(acc)) - halfAt(blk + 2) * float(q4kMinTerm(blk + 4, as + b * 16))); \
    }                                                                                                                 \
    return s;                                                                                                         \
  }                                                                                                                   \
  ATTR float NAME##Q6K(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb) {    \
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);                                           \
    float s = 0.f;                                                                                                    \
    for (int64_t b = 0; b < nb; b++) {                                                                                \
      const unsigned char* blk = w + size_t(b) * 210;                                                                 \
      const int8_t* a = aq + b * kSuperBlock;                                                                         \
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);                                                  \
      __m256i acc = _mm256_setzero_si256();                                                                           \
      for (int h = 0; h < 2; h++) {                                                                                   \
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));                        \
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));                   \
        const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));                  \
        /* code = low 4 bits | 2 high bits << 4; the masks drop what the 16-bit shifts carry over */                  \
        const __m256i q[4] = {                                                                                        \
            _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2)),                \
            _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2)),                \
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m2)),                \
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),                                           \
                            _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2))};                                         \
        for (int g = 0; g < 4; g++) {                                                                                 \
          const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 128 * h + 32 * g));              \
          acc = _mm256_add_epi32(acc, DOT::dot(q[g], av, sc[8 * h + 2 * g], sc[8 * h + 2 * g + 1]));                  \
        }                                                                                                             \
      }                                                                                                               \
      int32_t offset = 0;                                                                                             \
      for (int k = 0; k < 16; k++) offset += sc[k] * int32_t(as[b * 16 + k]);                                         \
      s += ad[b] * halfAt(blk + 208) * float(hsumEpi32(acc) - 32 * offset);                                           \
    }                                                                                                                 \
    return s;                                                                                                         \
  }

KDOT_KERNELS(DG_AVX2, kdotAvx2, KDotAvx2)
KDOT_KERNELS(DG_VNNI, kdotVnni, KDotVnni)
#undef KDOT_KERNELS

using KDotFn = float (*)(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb);

KDotFn kdotKernel(DType t) {
  const QIsa q = quantIsa(chosenIsa());
  const bool q4 = t == DType::Q4_K;
  if (q == QIsa::Vnni) return q4 ? kdotVnniQ4K : kdotVnniQ6K;
  if (q == QIsa::Avx2) return q4 ? kdotAvx2Q4K : kdotAvx2Q6K;
  return q4 ? kdotScalar<DType::Q4_K> : kdotScalar<DType::Q6_K>;
}

void requireSuperBlocks(const Weight& W) {
  if (!isKQuant(W.dtype) || W.cols % kSuperBlock != 0)
    throw Error(kErrUnsupported, std::string("a ") + dtypeName(W.dtype) + " matmul needs a K-quant weight whose " +
                                     "width is a multiple of 256, got " + std::to_string(W.cols) + " columns");
}

// out[r * ldo + o - outBase] (+)= W[o] . x[r] + bias[o] for every activation row r < rows and the
// outputs o of the 4-row groups [g0, g1).
void kquantGroups(float* out, int64_t ldo, int64_t outBase, const KRows& x, int64_t rows, const Weight& W,
                  const float* bias, bool accumulate, int64_t g0, int64_t g1) {
  const KDotFn dot = kdotKernel(W.dtype);
  const int64_t n = W.rows, nb = W.cols / kSuperBlock;
  const size_t rb = rowBytes(W.dtype, W.cols);
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  for (int64_t g = g0; g < g1; g++) {
    const int64_t o0 = g * 4, o1 = std::min(n, o0 + 4);
    for (int64_t r = 0; r < rows; r++) {
      for (int64_t o = o0; o < o1; o++) {
        const float y =
            dot(base + size_t(o) * rb, x.q + r * x.k, x.d + r * nb, x.sums + r * nb * 16, nb) + (bias ? bias[o] : 0.f);
        float& dst = out[r * ldo + o - outBase];
        dst = accumulate ? dst + y : y;
      }
    }
  }
}

}  // namespace

void matmulKQuant(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
                  const float* bias, bool accumulate) {
  requireSuperBlocks(W);
  const KRows xq = quantizeActivationsK(x, ldx, rows, W.cols);
  runBlocks(pool, (W.rows + 3) / 4, rows * W.rows * W.cols,
            [&](int64_t g0, int64_t g1, int) { kquantGroups(out, ldo, 0, xq, rows, W, bias, accumulate, g0, g1); });
}

void matmulManyKQuant(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs) {
  for (int j = 0; j < nJobs; j++) {
    requireSuperBlocks(*jobs[j].W);
    if (jobs[j].W->cols != jobs[0].W->cols)
      throw Error(kErrArg, "matmulMany: every job must read the same x (equal widths)");
  }
  const KRows xq = quantizeActivationsK(x, jobs[0].W->cols, 1, jobs[0].W->cols);
  runJobGroups(pool, jobs, nJobs, [&](const GemvJob& J, int64_t g0, int64_t g1) {
    kquantGroups(J.out, 0, 0, xq, 1, *J.W, J.bias, J.accumulate, g0, g1);
  });
}

void gateUpKQuant(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                  const float* bu) {
  requireSuperBlocks(Wg);
  requireSuperBlocks(Wu);
  if (Wg.cols != Wu.cols || Wg.rows != Wu.rows)
    throw Error(kErrArg, "gateUpVector: the gate and up weights must have the same shape");
  const int64_t n = Wg.rows;
  const KRows xq = quantizeActivationsK(x, Wg.cols, 1, Wg.cols);
  runBlocks(pool, (n + 3) / 4, 2 * n * Wg.cols, [&](int64_t g0, int64_t g1, int) {
    float up[4 * 64];
    for (int64_t g = g0; g < g1; g += 64) {
      const int64_t ge = std::min(g1, g + 64);
      kquantGroups(out, 0, 0, xq, 1, Wg, bg, false, g, ge);
      kquantGroups(up, 0, g * 4, xq, 1, Wu, bu, false, g, ge);
      for (int64_t o = g * 4; o < std::min(n, ge * 4); o++) {
        const float v = out[o];
        out[o] = v / (1.0f + std::exp(-v)) * up[o - g * 4];
      }
    }
  });
}

}  // namespace matmul_detail
}  // namespace dg
