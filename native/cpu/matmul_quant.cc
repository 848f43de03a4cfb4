// out[r, o] = sum_i x[r, i] * W[o, i] (+ bias[o]) for W in a 32-wide block format (Q8_0, Q4_0;
// tensor.h). The K-quants (Q4_K, Q6_K) have their own kernels in matmul_kquant.cc.
//
// The activation rows are quantized once per call into int8 blocks of 32 with an f32 scale each
// (quantizeActivationBlock in matmul_common.h), so
// each block of a weight row and of x meet in an integer dot product:
//   W[o] . x ~= sum_b d_w[o, b] * d_x[b] * sum_j q_w[o, b, j] * q_x[b, j]
// accumulated in f32. The 32-wide integer dot is u8 x s8 after moving the weight's sign onto the
// activation (|q_w| * sign(q_w) q_x): AVX-512 VNNI vpdpbusd, or AVX2 vpmaddubsw + vpmaddwd (pairs
// stay below 2 * 128 * 127, so nothing saturates); the scalar variant does the same in int32.
// Q4_0 nibbles are widened to int8 (q - 8) in registers, so both formats share the kernel.
//
// Decode (rows == 1) splits 4-row groups of W across the threads like the float kernels
// (matmul.cc). Prefill (rows > 1) uses the same kernel: each thread takes 4-row groups of W and
// runs every activation row through a group while those weight rows are in L1, so W is still read
// once per call; it is correct and bandwidth-friendly but not register-tiled across rows.
//
// Where the avx512vnni variant runs, the loader repacks Q8_0 matrices into the CPU's own layout
// (matmul_repacked.cc), so Q8_0 reaches this file there only with DEPTHGATE_CPU_REPACK=0 or as a
// weight handed to matmul directly (tests, microbenchmarks); Q4_0 always comes here.
#include <algorithm>
#include <cmath>
#include <vector>

#include "errors.h"
#include "matmul_common.h"

namespace dg {
namespace matmul_detail {
namespace {

// Activation rows in int8 blocks: row r's codes at q + r * k, its block scales at d + r * k / 32,
// and for the VNNI kernel only (empty otherwise), -128 x the sum of each 4 consecutive codes at
// lanes + r * k / 4 (8 per block: the accumulator vpdpbusd starts from, see qgemvVnni512).
struct QuantizedRows {
  const int8_t* q;
  const float* d;
  const int32_t* lanes;
  int64_t k;
};

// Rounds each block of 32 (quantizeActivationBlock).
QuantizedRows quantizeActivations(const float* x, int64_t ldx, int64_t rows, int64_t k) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  thread_local std::vector<int32_t> lanes;
  const int64_t nb = k / kQuantBlock;
  q.resize(size_t(rows * k));
  d.resize(size_t(rows * nb));
  // Only the VNNI kernel reads the lane sums; the others would pay for them on every call.
  const bool withLanes = quantIsa(chosenIsa()) == QIsa::Vnni;
  lanes.resize(withLanes ? size_t(rows * k / 4) : 0);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t b = 0; b < nb; b++)
      d[size_t(r * nb + b)] =
          quantizeActivationBlock(x + r * ldx + b * kQuantBlock, q.data() + r * k + b * kQuantBlock);
  for (size_t i = 0; i < lanes.size(); i++)
    lanes[i] = -128 * (int32_t(q[4 * i]) + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
  return {q.data(), d.data(), withLanes ? lanes.data() : nullptr, k};
}

template <DType T>
constexpr size_t kBlockBytes = T == DType::Q8_0 ? 34 : 18;

// ---- NR weight rows dotted with one quantized activation row --------------------------------

template <DType T, int NR>
void qgemvScalar(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad, const int32_t*,
                 int64_t nb) {
  for (int r = 0; r < NR; r++) {
    float s = 0.f;
    for (int64_t b = 0; b < nb; b++) {
      const unsigned char* blk = w + r * rb + size_t(b) * kBlockBytes<T>;
      const int8_t* a = aq + b * kQuantBlock;
      uint16_t h;
      std::memcpy(&h, blk, 2);
      int32_t acc = 0;
      if constexpr (T == DType::Q8_0) {
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        for (int j = 0; j < kQuantBlock; j++) acc += int32_t(q[j]) * a[j];
      } else {
        for (int j = 0; j < kQuantBlock / 2; j++)
          acc += (int32_t(blk[2 + j] & 0x0f) - 8) * a[j] + (int32_t(blk[2 + j] >> 4) - 8) * a[j + 16];
      }
      s += float(acc) * (f16ToF32(h) * ad[b]);
    }
    out[r] = s;
  }
}

// The block's 32 weight codes as int8 (Q4_0: q - 8, in [-8, 7]).
template <DType T>
DG_AVX2 inline __m256i loadCodes(const unsigned char* blk) {
  if constexpr (T == DType::Q8_0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  } else {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
  }
}

// 8 int32 partial sums of w . a over 32 int8 pairs.
struct DotAvx2 {
  DG_AVX2 static __m256i dot(__m256i w, __m256i a) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
  }
};
struct DotVnni {
  DG_VNNI static __m256i dot(__m256i w, __m256i a) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  }
};

// One body per ISA: NR independent f32 accumulators, one block of x shared by the NR rows.
#define QGEMV_KERNEL(ATTR, NAME, DOT)                                                                              \
  template <DType T, int NR>                                                                                       \
  ATTR void NAME(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad, const int32_t*, \
                 int64_t nb) {                                                                                     \
    __m256 acc[NR];                                                                                                \
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps();                                                     \
    const bool pf = NR == 4 && prefetchOn(); /* the next group's rows (prefetchSpan: why) */                       \
    for (int64_t b = 0; b < nb; b++) {                                                                             \
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + b * kQuantBlock));                \
      const float da = ad[b];                                                                                      \
      for (int r = 0; r < NR; r++) {                                                                               \
        const unsigned char* blk = w + r * rb + size_t(b) * kBlockBytes<T>;                                        \
        if (pf) prefetchSpan(blk + NR * rb, 1); /* the line of the next group's block */                           \
        uint16_t h;                                                                                                \
        std::memcpy(&h, blk, 2);                                                                                   \
        const __m256i p = DOT::dot(loadCodes<T>(blk), a);                                                          \
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(_cvtsh_ss(h) * da), acc[r]);                \
      }                                                                                                            \
    }                                                                                                              \
    for (int r = 0; r < NR; r++) out[r] = hsum256(acc[r]);                                                         \
  }

QGEMV_KERNEL(DG_AVX2, qgemvAvx2, DotAvx2)
QGEMV_KERNEL(DG_VNNI, qgemvVnni, DotVnni)
#undef QGEMV_KERNEL

// The block's and the next block's codes in one register.
template <DType T>
DG_VNNI inline __m512i loadCodes2(const unsigned char* blk) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(loadCodes<T>(blk)), loadCodes<T>(blk + kBlockBytes<T>), 1);
}

// AVX-512 VNNI, two blocks per instruction, where the 256-bit kernel above spends most of its
// instructions on each block's sign moves and scale (measured 1.3x the read floor on Q8_0 where
// llama.cpp reads at it). Here the weight codes become unsigned by flipping their top bit
// (w ^ 0x80 = w + 128) and vpdpbusd starts from -128 x the lane's four activation codes
// (QuantizedRows::lanes, once per call), so each lane is exactly sum w * a; the f16 scales of 8
// blocks of a row come in one gather and one conversion, and each pair of blocks takes its two
// scales with one permute. Blocks past the last 8 go through qgemvVnni's body.
template <DType T, int NR>
DG_VNNI void qgemvVnni512(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad,
                          const int32_t* lanes, int64_t nb) {
  constexpr int64_t B = int64_t(kBlockBytes<T>);
  __m512 acc[NR];
  for (int r = 0; r < NR; r++) acc[r] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(B)));
  const bool pf = NR == 4 && prefetchOn();  // the next group's rows (prefetchSpan: why)
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const __m256 da = _mm256_loadu_ps(ad + b);
    __m512 scale[NR];  // lanes 0..7: the 8 blocks' d_w * d_x
    for (int r = 0; r < NR; r++) {
      if (pf) prefetchSpan(w + (NR + r) * rb + size_t(b * B), size_t(8 * B));
      const __m256i h = _mm256_i32gather_epi32(reinterpret_cast<const int*>(w + r * rb + size_t(b * B)), at, 1);
      scale[r] = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_cvtepi32_epi16(h)), da));
    }
    for (int k = 0; k < 4; k++) {
      const int64_t bb = b + 2 * k;
      const __m512i a = _mm512_loadu_si512(aq + bb * kQuantBlock);
      const __m512i start = _mm512_loadu_si512(lanes + bb * (kQuantBlock / 4));
      const __m512i pick = _mm512_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1,
                                            2 * k + 1, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k);
      for (int r = 0; r < NR; r++) {
        const __m512i c = _mm512_xor_si512(loadCodes2<T>(w + r * rb + size_t(bb * B)), flip);
        const __m512i p = _mm512_dpbusd_epi32(start, c, a);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(pick, scale[r]), acc[r]);
      }
    }
  }
  float rest[NR] = {};
  if (b < nb) qgemvVnni<T, NR>(rest, w + size_t(b * B), rb, aq + b * kQuantBlock, ad + b, nullptr, nb - b);
  for (int r = 0; r < NR; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + rest[r];
}

template <DType T>
IntGemvPair kernelsFor(QIsa q) {
  if (q == QIsa::Vnni) return {qgemvVnni512<T, 4>, qgemvVnni512<T, 1>};
  if (q == QIsa::Avx2) return {qgemvAvx2<T, 4>, qgemvAvx2<T, 1>};
  return {qgemvScalar<T, 4>, qgemvScalar<T, 1>};
}

IntGemvPair quantKernels(Isa isa, DType t) {
  const QIsa q = quantIsa(isa);
  return t == DType::Q8_0 ? kernelsFor<DType::Q8_0>(q) : kernelsFor<DType::Q4_0>(q);
}

void requireBlocks(const Weight& W) {
  if (!isBlock32(W.dtype) || W.cols % kQuantBlock != 0)
    throw Error(kErrUnsupported, std::string("a ") + dtypeName(W.dtype) +
                                     " matmul needs a block-quantized weight whose " +
                                     "width is a multiple of 32, got " + std::to_string(W.cols) + " columns");
}

// intGroups over the activation rows of x.
void quantGroups(const IntGemvPair& kern, float* out, int64_t ldo, int64_t outBase, const QuantizedRows& x,
                 int64_t rows, const Weight& W, const float* bias, bool accumulate, int64_t g0, int64_t g1) {
  const int64_t nb = W.cols / kQuantBlock;
  intGroups(kern, out, ldo, outBase, rows, W, bias, accumulate, g0, g1, [&](int64_t r) {
    return IntRow{x.q + r * x.k, x.d + r * nb, x.lanes ? x.lanes + r * x.k / 4 : nullptr};
  });
}

}  // namespace

void matmulQuant(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
                 const float* bias, bool accumulate) {
  requireBlocks(W);
  const QuantizedRows xq = quantizeActivations(x, ldx, rows, W.cols);
  const IntGemvPair kern = quantKernels(chosenIsa(), W.dtype);
  runBlocks(pool, (W.rows + 3) / 4, rows * W.rows * W.cols, [&](int64_t g0, int64_t g1, int) {
    quantGroups(kern, out, ldo, 0, xq, rows, W, bias, accumulate, g0, g1);
  });
}

void matmulManyQuant(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs) {
  for (int j = 0; j < nJobs; j++) {
    requireBlocks(*jobs[j].W);
    if (jobs[j].W->cols != jobs[0].W->cols)
      throw Error(kErrArg, "matmulMany: every job must read the same x (equal widths)");
  }
  const QuantizedRows xq = quantizeActivations(x, jobs[0].W->cols, 1, jobs[0].W->cols);
  runJobGroups(pool, jobs, nJobs, [&](const GemvJob& J, int64_t g0, int64_t g1) {
    quantGroups(quantKernels(chosenIsa(), J.W->dtype), J.out, 0, 0, xq, 1, *J.W, J.bias, J.accumulate, g0, g1);
  });
}

void gateUpQuant(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                 const float* bu) {
  requireBlocks(Wg);
  requireBlocks(Wu);
  const QuantizedRows xq = quantizeActivations(x, Wg.cols, 1, Wg.cols);
  const IntGemvPair kg = quantKernels(chosenIsa(), Wg.dtype), ku = quantKernels(chosenIsa(), Wu.dtype);
  gateUpGroups(pool, out, Wg, bg, Wu, bu,
               [&](float* dst, int64_t outBase, const Weight& W, const float* b, int64_t g0, int64_t g1) {
                 quantGroups(&W == &Wg ? kg : ku, dst, 0, outBase, xq, 1, W, b, false, g0, g1);
               });
}

}  // namespace matmul_detail

const char* quantKernelVariant() {
  using namespace matmul_detail;
  const QIsa q = quantIsa(chosenIsa());
  return q == QIsa::Vnni ? "avx512vnni" : q == QIsa::Avx2 ? "avx2" : "scalar";
}

}  // namespace dg
