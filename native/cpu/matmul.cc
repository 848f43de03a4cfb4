// out[r, o] = sum_i x[r, i] * W[o, i] (+ bias[o]) with W in its stored dtype.
//
// Two regimes:
//  * rows == 1 (decode): a matrix-vector product whose cost is streaming W from memory once.
//    Each thread takes a contiguous range of output rows and walks 4 weight rows at a time,
//    widening bf16/f16 in registers and keeping 8 independent accumulators so the loads,
//    not the FMA latency chain, set the pace.
//  * rows > 1 (prefill, and routed layers with a few active rows): register-tiled dot
//    products straight on W in its stored layout, 4 weight rows x 3 x rows per micro-kernel,
//    widening weights in registers. Nothing is packed per call, so the time is proportional to
//    rows from rows = 2 on, and each converted weight vector still feeds 3 FMAs.
//
// SIMD variants carry per-function target attributes so the build needs no -m flags; the
// variant is picked at run time from cpuKernelVariant().
// The prefill kernels are in matmul_tiles.cc, the K-quant (Q4_K, Q6_K) ones in matmul_kquant.cc,
// the other block-quantized (Q8_0, Q4_0) ones in matmul_quant.cc; what they share is in
// matmul_common.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "matmul_common.h"

namespace dg {
namespace {

using namespace matmul_detail;

// ---- matrix-vector kernels: NR weight rows (stored dtype) dotted with one f32 x row --------
// One body for every ISA (GEMV_KERNEL below, stamped per target like the dot kernels): two
// accumulators per row, so 4 rows x 2 = 8 FMAs in flight cover FMA latency x throughput, and a
// scalar tail for the columns past the last whole pair of vectors.

struct GemvAvx2 {
  using V = __m256;
  static constexpr int L = 8;
  template <DType T>
  DG_AVX2 static V load(const unsigned char* row, int64_t i) {
    if constexpr (T == DType::F32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i));
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i));
      if constexpr (T == DType::BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      else
        return _mm256_cvtph_ps(h);
    }
  }
  DG_AVX2 static V loadx(const float* p) { return _mm256_loadu_ps(p); }
  DG_AVX2 static V zero() { return _mm256_setzero_ps(); }
  DG_AVX2 static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  DG_AVX2 static float hsum(V a, V b) {
    const __m256 v = _mm256_add_ps(a, b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct GemvAvx512 {
  using V = __m512;
  static constexpr int L = 16;
  template <DType T>
  DG_AVX512 static V load(const unsigned char* row, int64_t i) {
    if constexpr (T == DType::F32) {
      return _mm512_loadu_ps(row + 4 * i);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
      if constexpr (T == DType::BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      else
        return _mm512_cvtph_ps(h);
    }
  }
  DG_AVX512 static V loadx(const float* p) { return _mm512_loadu_ps(p); }
  DG_AVX512 static V zero() { return _mm512_setzero_ps(); }
  DG_AVX512 static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  DG_AVX512 static float hsum(V a, V b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
};

#define GEMV_KERNEL(ATTR, NAME)                                                                          \
  template <class Ops, DType T, int NR>                                                                  \
  ATTR void NAME(float* out, const unsigned char* w, size_t rowBytes, const float* x, int64_t k) {       \
    using V = typename Ops::V;                                                                           \
    constexpr int64_t L = Ops::L;                                                                        \
    V acc0[NR], acc1[NR];                                                                                \
    for (int r = 0; r < NR; r++) acc0[r] = acc1[r] = Ops::zero();                                        \
    constexpr size_t es = T == DType::F32 ? 4 : 2;                                                       \
    const bool pf = NR == 4 && prefetchOn(); /* the next group's rows (prefetchSpan: why) */             \
    int64_t i = 0;                                                                                       \
    for (; i + 2 * L <= k; i += 2 * L) {                                                                 \
      const V x0 = Ops::loadx(x + i), x1 = Ops::loadx(x + i + L);                                        \
      if (pf)                                                                                            \
        for (int r = 0; r < NR; r++) prefetchSpan(w + (NR + r) * rowBytes + size_t(i) * es, 2 * L * es); \
      for (int r = 0; r < NR; r++) {                                                                     \
        acc0[r] = Ops::fmadd(Ops::template load<T>(w + r * rowBytes, i), x0, acc0[r]);                   \
        acc1[r] = Ops::fmadd(Ops::template load<T>(w + r * rowBytes, i + L), x1, acc1[r]);               \
      }                                                                                                  \
    }                                                                                                    \
    for (int r = 0; r < NR; r++) {                                                                       \
      float s = Ops::hsum(acc0[r], acc1[r]);                                                             \
      for (int64_t t = i; t < k; t++) s += loadScalar<T>(w + r * rowBytes, t) * x[t];                    \
      out[r] = s;                                                                                        \
    }                                                                                                    \
  }

GEMV_KERNEL(DG_AVX2, gemvAvx2)
GEMV_KERNEL(DG_AVX512, gemvAvx512)
#undef GEMV_KERNEL

using GemvFn = void (*)(float* out, const unsigned char* w, size_t rowBytes, const float* x, int64_t k);
struct GemvPair {
  GemvFn four, one;  // 4-row kernel for the bulk, 1-row kernel for the leftover rows
};

GemvPair gemvKernels(Isa isa, DType t) {
  if (isa == Isa::Avx512) {
    if (t == DType::BF16) return {gemvAvx512<GemvAvx512, DType::BF16, 4>, gemvAvx512<GemvAvx512, DType::BF16, 1>};
    if (t == DType::F16) return {gemvAvx512<GemvAvx512, DType::F16, 4>, gemvAvx512<GemvAvx512, DType::F16, 1>};
    return {gemvAvx512<GemvAvx512, DType::F32, 4>, gemvAvx512<GemvAvx512, DType::F32, 1>};
  }
  if (t == DType::BF16) return {gemvAvx2<GemvAvx2, DType::BF16, 4>, gemvAvx2<GemvAvx2, DType::BF16, 1>};
  if (t == DType::F16) return {gemvAvx2<GemvAvx2, DType::F16, 4>, gemvAvx2<GemvAvx2, DType::F16, 1>};
  return {gemvAvx2<GemvAvx2, DType::F32, 4>, gemvAvx2<GemvAvx2, DType::F32, 1>};
}

// out[o - outBase] (+)= W[o] . x + bias[o] for the outputs o of the 4-row groups [g0, g1).
void gemvGroups(const GemvPair& kern, float* out, int64_t outBase, const float* x, const Weight& W, const float* bias,
                bool accumulate, int64_t g0, int64_t g1) {
  const int64_t n = W.rows, k = W.cols;
  const size_t rowBytes = size_t(k) * dtypeSize(W.dtype);
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  float tmp[4];
  for (int64_t g = g0; g < g1; g++) {
    const int64_t o = g * 4;
    const int nr = int(std::min<int64_t>(4, n - o));
    if (nr == 4)
      kern.four(tmp, base + size_t(o) * rowBytes, rowBytes, x, k);
    else
      for (int r = 0; r < nr; r++) kern.one(tmp + r, base + size_t(o + r) * rowBytes, rowBytes, x, k);
    for (int r = 0; r < nr; r++) {
      const float y = tmp[r] + (bias ? bias[o + r] : 0.f);
      float& dst = out[o + r - outBase];
      dst = accumulate ? dst + y : y;
    }
  }
}

// Several matrix-vector products over one x in one parallel loop.
void gemvJobs(ThreadPool& pool, Isa isa, const float* x, const GemvJob* jobs, int nJobs) {
  runJobGroups(pool, jobs, nJobs, [&](const GemvJob& J, int64_t g0, int64_t g1) {
    gemvGroups(gemvKernels(isa, J.W->dtype), J.out, 0, x, *J.W, J.bias, J.accumulate, g0, g1);
  });
}

}  // namespace

void matmul(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
            const float* bias, bool accumulate) {
  if (rows <= 0 || W.rows <= 0) return;
  if (W.cols <= 0) {  // empty reduction: the result is just the bias
    for (int64_t r = 0; r < rows; r++)
      for (int64_t o = 0; o < W.rows; o++) {
        const float y = bias ? bias[o] : 0.f;
        out[r * ldo + o] = accumulate ? out[r * ldo + o] + y : y;
      }
    return;
  }
  if (isKQuant(W.dtype)) {
    matmulKQuant(pool, out, ldo, x, ldx, rows, W, bias, accumulate);
    return;
  }
  if (isRepacked(W.dtype)) {
    matmulRepacked(pool, out, ldo, x, ldx, rows, W, bias, accumulate);
    return;
  }
  if (isBlockQuantized(W.dtype)) {
    matmulQuant(pool, out, ldo, x, ldx, rows, W, bias, accumulate);
    return;
  }
  const Isa isa = chosenIsa();
  if (rows == 1 && isa != Isa::Scalar) {
    const GemvJob job{out, &W, bias, accumulate};
    gemvJobs(pool, isa, x, &job, 1);
    return;
  }
  gemm(pool, isa, out, ldo, x, ldx, rows, W, bias, accumulate);
}

void matmulMany(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs) {
  // One activation quantization for all jobs when they share a block family (a Q4_K_M model's
  // Q4_K and Q6_K projections do); mixed families run job by job below.
  bool all32 = nJobs > 0 && nJobs <= 8, allK = all32, allRepacked = all32;
  for (int j = 0; j < nJobs; j++) {
    const bool sameWidth = jobs[j].W->cols == jobs[0].W->cols;
    all32 = all32 && isBlock32(jobs[j].W->dtype) && sameWidth;
    allK = allK && isKQuant(jobs[j].W->dtype) && sameWidth;
    allRepacked = allRepacked && isRepacked(jobs[j].W->dtype) && sameWidth;
  }
  if (allRepacked) {
    matmulManyRepacked(pool, x, jobs, nJobs);
    return;
  }
  if (all32) {
    matmulManyQuant(pool, x, jobs, nJobs);
    return;
  }
  if (allK) {
    matmulManyKQuant(pool, x, jobs, nJobs);
    return;
  }
  bool ok = chosenIsa() != Isa::Scalar && nJobs <= 8;
  for (int j = 0; j < nJobs; j++) ok = ok && jobs[j].W->cols > 0 && !isBlockQuantized(jobs[j].W->dtype);
  if (ok) {
    gemvJobs(pool, chosenIsa(), x, jobs, nJobs);
    return;
  }
  for (int j = 0; j < nJobs; j++)
    matmul(pool, jobs[j].out, jobs[j].W->rows, x, jobs[j].W->cols, 1, *jobs[j].W, jobs[j].bias, jobs[j].accumulate);
}

void gateUpVector(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                  const float* bu) {
  if (isBlock32(Wg.dtype) && isBlock32(Wu.dtype)) {
    gateUpQuant(pool, out, x, Wg, bg, Wu, bu);
    return;
  }
  if (isKQuant(Wg.dtype) && isKQuant(Wu.dtype)) {
    gateUpKQuant(pool, out, x, Wg, bg, Wu, bu);
    return;
  }
  if (isRepacked(Wg.dtype) && isRepacked(Wu.dtype)) {
    gateUpRepacked(pool, out, x, Wg, bg, Wu, bu);
    return;
  }
  const Isa isa = chosenIsa();
  const int64_t n = Wg.rows;
  if (isa == Isa::Scalar || Wg.cols <= 0 || isBlockQuantized(Wg.dtype) || isBlockQuantized(Wu.dtype)) {
    thread_local std::vector<float> up;
    up.resize(size_t(n));
    matmul(pool, out, n, x, Wg.cols, 1, Wg, bg, false);
    matmul(pool, up.data(), n, x, Wu.cols, 1, Wu, bu, false);
    siluMul(pool, out, n, up.data(), n, 1, n);
    return;
  }
  const GemvPair kg = gemvKernels(isa, Wg.dtype), ku = gemvKernels(isa, Wu.dtype);
  gateUpGroups(pool, out, Wg, bg, Wu, bu,
               [&](float* dst, int64_t outBase, const Weight& W, const float* b, int64_t g0, int64_t g1) {
                 gemvGroups(&W == &Wg ? kg : ku, dst, outBase, x, W, b, false, g0, g1);
               });
}

}  // namespace dg
