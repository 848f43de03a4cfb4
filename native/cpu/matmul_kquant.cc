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
// or on AVX-512 VNNI the same over 64 codes with vpdpwssd (kdotVnni512*); the scalar variant does it
// in int32.
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
float kdotScalar(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb, size_t) {
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

// The SIMD kernels' halfAt, inline (F16C): f16ToF32 is in another file, and its call per scale
// was 6% of a Q4_K_M decode step in a profile.
DG_AVX2 inline float halfAtF16c(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 8 int32 partial sums of u . a over 32 (u8, s8) pairs, bytes 0..15 scaled by s0, 16..31 by s1.
struct KDotAvx2 {
  DG_AVX2 static __m256i dot(__m256i u, __m256i a, int s0, int s1) {
    const __m256i p = _mm256_maddubs_epi16(u, a);
    return _mm256_madd_epi16(p, _mm256_set_m128i(_mm_set1_epi16(int16_t(s1)), _mm_set1_epi16(int16_t(s0))));
  }
};

// One body per ISA and format. The integer sum of each super-block is reduced to a scalar so the
// Q6_K offset (32 sum sc_k sum(a)_k) is taken off exactly.
#define KDOT_KERNELS(ATTR, NAME, DOT)                                                                                 \
  ATTR float NAME##Q4K(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb,      \
                       size_t ahead) {                                                                                \
    const __m256i m4 = _mm256_set1_epi8(0x0f);                                                                        \
    float s = 0.f;                                                                                                    \
    for (int64_t b = 0; b < nb; b++) {                                                                                \
      const unsigned char* blk = w + size_t(b) * 144;                                                                 \
      if (ahead) prefetchSpan(blk + ahead, 144);                                                                      \
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
      s += ad[b] *                                                                                                    \
           (halfAtF16c(blk) * float(hsumEpi32(acc)) - halfAtF16c(blk + 2) * float(q4kMinTerm(blk + 4, as + b * 16))); \
    }                                                                                                                 \
    return s;                                                                                                         \
  }                                                                                                                   \
  ATTR float NAME##Q6K(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb,      \
                       size_t ahead) {                                                                                \
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);                                           \
    float s = 0.f;                                                                                                    \
    for (int64_t b = 0; b < nb; b++) {                                                                                \
      const unsigned char* blk = w + size_t(b) * 210;                                                                 \
      if (ahead) prefetchSpan(blk + ahead, 210);                                                                      \
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
      s += ad[b] * halfAtF16c(blk + 208) * float(hsumEpi32(acc) - 32 * offset);                                       \
    }                                                                                                                 \
    return s;                                                                                                         \
  }

KDOT_KERNELS(DG_AVX2, kdotAvx2, KDotAvx2)
#undef KDOT_KERNELS

// AVX-512 VNNI, 64 codes per instruction. The kernels above spend most of their instructions on
// each 32-wide piece's own scale (a scalar unpack, a multiply of int32 lanes) and on the scalar
// min / offset term; here the sub-block scales are unpacked once per super-block into int16 lanes
// (vpermw), each piece is vpmaddubsw (u8 code x s8 activation, pairs at most 2 * 63 * 127) then
// vpdpwssd by its scale into one int32 accumulator, and the min (Q4_K) or offset (Q6_K) term is
// one vpmaddwd of the 16 scales or mins with the activation's 16-wide sums. Both terms are carried
// in f32 vectors across the super-blocks and reduced once per row.
//   kScaleIdx[v]: int16 lane i of a 64-code piece -> the sub-block scale it takes, for
//   Q4_K (8 scales): v = 0..3: pieces (sub-blocks 4p, 4p+2) and (4p+1, 4p+3) of pair p = v / 2;
//   Q6_K (16 scales): v = 4..7: pieces (8h..8h+3) and (8h+4..8h+7) of half h = (v - 4) / 2.
struct ScaleIdx {
  int16_t lane[8][32];
  constexpr ScaleIdx() : lane() {
    for (int i = 0; i < 32; i++) {
      for (int p = 0; p < 2; p++) {
        lane[2 * p][i] = int16_t(4 * p + (i < 16 ? 0 : 2));
        lane[2 * p + 1][i] = int16_t(4 * p + 1 + (i < 16 ? 0 : 2));
      }
      for (int h = 0; h < 2; h++) {
        lane[4 + 2 * h][i] = int16_t(8 * h + i / 8);
        lane[4 + 2 * h + 1][i] = int16_t(8 * h + 4 + i / 8);
      }
    }
  }
};
constexpr ScaleIdx kScaleIdx;

DG_VNNI inline __m512i scaleLanes(int v, __m512i scales16) {
  return _mm512_permutexvar_epi16(_mm512_loadu_si512(kScaleIdx.lane[v]), scales16);
}

// Q4_K's 8 scales and 8 mins of a super-block as bytes, from the 12 packed ones (q4kScaleMin for
// all eight at once: 4 words of shifts and masks).
struct Q4kScalesMins {
  uint64_t scales, mins;
};
inline Q4kScalesMins q4kScalesMins(const unsigned char* s) {
  uint64_t u01;
  uint32_t u2;
  std::memcpy(&u01, s, 8);
  std::memcpy(&u2, s + 8, 4);
  const uint32_t u0 = uint32_t(u01), u1 = uint32_t(u01 >> 32);
  const uint32_t lo6 = 0x3f3f3f3f, lo4 = 0x0f0f0f0f, lo2 = 0x03030303;
  const uint32_t sc03 = u0 & lo6, sc47 = (u2 & lo4) | (((u0 >> 6) & lo2) << 4);
  const uint32_t m03 = u1 & lo6, m47 = ((u2 >> 4) & lo4) | (((u1 >> 6) & lo2) << 4);
  return {uint64_t(sc03) | (uint64_t(sc47) << 32), uint64_t(m03) | (uint64_t(m47) << 32)};
}

// NR rows (rb bytes apart) at once: the activation's loads and the f32 scale products are shared,
// and the rows' integer chains are independent, which the one-row form lacked (a 1024-wide Q4_K row
// is 4 super-blocks, so its reductions and the dpwssd latency were most of a row's time).
template <int NR>
DG_VNNI void kdotVnni512Q4K(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad,
                            const int16_t* as, int64_t nb, size_t ahead) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  __m512 main[NR];
  __m256 minTerm[NR];
  for (int r = 0; r < NR; r++) main[r] = _mm512_setzero_ps(), minTerm[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const int8_t* a = aq + b * kSuperBlock;
    // Pair p: chunk 2p's codes then chunk 2p+1's; low nibbles are weights 128p + 0..31 and + 64..95.
    __m512i aLo[2], aHi[2];
    for (int p = 0; p < 2; p++) {
      aLo[p] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(a + 128 * p))),
                                  _mm256_loadu_si256((const __m256i*)(a + 128 * p + 64)), 1);
      aHi[p] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(a + 128 * p + 32))),
                                  _mm256_loadu_si256((const __m256i*)(a + 128 * p + 96)), 1);
    }
    const __m256i sums = _mm256_loadu_si256((const __m256i*)(as + b * 16));
    const __m128 dx = _mm_set1_ps(ad[b]);
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) {
      const unsigned char* blk = w + r * rb + size_t(b) * 144;
      if (ahead) prefetchSpan(blk + ahead, 144);  // the next group (prefetchSpan: why)
      const Q4kScalesMins sm = q4kScalesMins(blk + 4);
      const __m512i sc16 = _mm512_zextsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(sm.scales))));
      __m512i acc = _mm512_setzero_si512();
      for (int p = 0; p < 2; p++) {
        const __m512i q = _mm512_loadu_si512(blk + 16 + 64 * p);
        const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(lo, aLo[p]), scaleLanes(2 * p, sc16));
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(hi, aHi[p]), scaleLanes(2 * p + 1, sc16));
      }
      // d and dmin in one conversion, both times d_x.
      int32_t ddm;
      std::memcpy(&ddm, blk, 4);
      const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(ddm)), dx);
      main[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_broadcastss_ps(dd), main[r]);
      // sum_j m_j (sum of sub-block j's 32 codes): each min against its two 16-wide sums.
      const __m128i mb = _mm_cvtsi64_si128(int64_t(sm.mins));
      const __m256i mt = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mb, mb)), sums);
      minTerm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mt), _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), minTerm[r]);
    }
  }
  for (int r = 0; r < NR; r++) out[r] = _mm512_reduce_add_ps(main[r]) - hsum256(minTerm[r]);
}

template <int NR>
DG_VNNI void kdotVnni512Q6K(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad,
                            const int16_t* as, int64_t nb, size_t ahead) {
  const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x30);
  // The high bits' shifts: left 4 then 2 for codes 0..63 of a half, right 0 then 2 for 64..127.
  const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  __m512 main[NR];
  __m256 offset[NR];
  for (int r = 0; r < NR; r++) main[r] = _mm512_setzero_ps(), offset[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const int8_t* a = aq + b * kSuperBlock;
    __m512i av[4];
    for (int i = 0; i < 4; i++) av[i] = _mm512_loadu_si512(a + 64 * i);
    const __m256i sums = _mm256_loadu_si256((const __m256i*)(as + b * 16));
    for (int r = 0; r < NR; r++) {
      const unsigned char* blk = w + r * rb + size_t(b) * 210;
      if (ahead) prefetchSpan(blk + ahead, 210);  // the next group (prefetchSpan: why)
      const __m256i sc16y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(blk + 192)));
      const __m512i sc16 = _mm512_zextsi256_si512(sc16y);
      __m512i acc = _mm512_setzero_si512();
      for (int h = 0; h < 2; h++) {
        const __m512i l = _mm512_loadu_si512(blk + 64 * h);
        const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h)));
        const __m512i q01 = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(hb, shl), m2));
        const __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                            _mm512_and_si512(_mm512_srlv_epi16(hb, shr), m2));
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q01, av[2 * h]), scaleLanes(4 + 2 * h, sc16));
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q23, av[2 * h + 1]), scaleLanes(5 + 2 * h, sc16));
      }
      const float d = halfAtF16c(blk + 208) * ad[b];
      main[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(d), main[r]);
      const __m256i off = _mm256_madd_epi16(sc16y, sums);
      offset[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(32.f * d), offset[r]);
    }
  }
  for (int r = 0; r < NR; r++) out[r] = _mm512_reduce_add_ps(main[r]) - hsum256(offset[r]);
}

// NR rows, rb bytes apart, dotted with one activation row into out[0..NR).
using KDotFn = void (*)(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad,
                        const int16_t* as, int64_t nb, size_t ahead);
using KDotRowFn = float (*)(const unsigned char* w, const int8_t* aq, const float* ad, const int16_t* as, int64_t nb,
                            size_t ahead);
struct KDotPair {
  KDotFn four, one;
};

// The one-row kernels (scalar, AVX2) as an NR-row one.
template <KDotRowFn F, int NR>
void rowsOf(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad, const int16_t* as,
            int64_t nb, size_t ahead) {
  for (int r = 0; r < NR; r++) out[r] = F(w + r * rb, aq, ad, as, nb, ahead);
}

KDotPair kdotKernels(DType t) {
  const QIsa q = quantIsa(chosenIsa());
  const bool q4 = t == DType::Q4_K;
  if (q == QIsa::Vnni)
    return q4 ? KDotPair{kdotVnni512Q4K<4>, kdotVnni512Q4K<1>} : KDotPair{kdotVnni512Q6K<4>, kdotVnni512Q6K<1>};
  if (q == QIsa::Avx2)
    return q4 ? KDotPair{rowsOf<kdotAvx2Q4K, 4>, rowsOf<kdotAvx2Q4K, 1>}
              : KDotPair{rowsOf<kdotAvx2Q6K, 4>, rowsOf<kdotAvx2Q6K, 1>};
  return q4 ? KDotPair{rowsOf<kdotScalar<DType::Q4_K>, 4>, rowsOf<kdotScalar<DType::Q4_K>, 1>}
            : KDotPair{rowsOf<kdotScalar<DType::Q6_K>, 4>, rowsOf<kdotScalar<DType::Q6_K>, 1>};
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
  const KDotPair kern = kdotKernels(W.dtype);
  const int64_t n = W.rows, nb = W.cols / kSuperBlock;
  const size_t rb = rowBytes(W.dtype, W.cols);
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  // The kernels ask for rows a few groups on while dotting these (the first activation row only:
  // the rest find the weight rows in the cache), whole groups at least 8 KB ahead: a 1024-wide
  // Q4_K group is only 2.3 KB, and in a microbenchmark (2816 x 1024, 2 threads, out of cache) one
  // group ahead read 17 GB/s, three 18-20 GB/s, none 11-13 GB/s. Longer rows keep one group. On the
  // AMD VM (prefetch into L2), Q4_K_M decode of the bench model took 4.6-4.8 ms/token with 8 KB,
  // 4.6-5.0 with 16 KB, 5.3-5.4 with 32 KB and 5.6-5.9 with one group ahead.
  const size_t ahead = prefetchOn() ? 4 * rb * std::max<size_t>(1, 8192 / (4 * rb)) : 0;
  float tmp[4];
  for (int64_t g = g0; g < g1; g++) {
    const int64_t o0 = g * 4;
    const int nr = int(std::min<int64_t>(4, n - o0));
    const unsigned char* wg = base + size_t(o0) * rb;
    for (int64_t r = 0; r < rows; r++) {
      const int8_t* aq = x.q + r * x.k;
      const float* ad = x.d + r * nb;
      const int16_t* as = x.sums + r * nb * 16;
      if (nr == 4)
        kern.four(tmp, wg, rb, aq, ad, as, nb, r == 0 ? ahead : 0);
      else
        for (int i = 0; i < nr; i++) kern.one(tmp + i, wg + size_t(i) * rb, rb, aq, ad, as, nb, 0);
      float* dst = out + r * ldo + o0 - outBase;
      for (int i = 0; i < nr; i++) {
        const float y = tmp[i] + (bias ? bias[o0 + i] : 0.f);
        dst[i] = accumulate ? dst[i] + y : y;
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
  const KRows xq = quantizeActivationsK(x, Wg.cols, 1, Wg.cols);
  gateUpGroups(pool, out, Wg, bg, Wu, bu,
               [&](float* dst, int64_t outBase, const Weight& W, const float* b, int64_t g0, int64_t g1) {
                 kquantGroups(dst, 0, outBase, xq, 1, W, b, false, g0, g1);
               });
}

}  // namespace matmul_detail
}  // namespace dg
