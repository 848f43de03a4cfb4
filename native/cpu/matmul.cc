// out[r, o] = sum_i x[r, i] * W[o, i] (+ bias[o]) with W in its stored dtype.
//
// Two regimes:
//  * rows == 1 (decode): a matrix-vector product whose cost is streaming W from memory once.
//    Each thread takes a contiguous range of output rows and walks 4 weight rows at a time,
//    widening bf16/f16 in registers and keeping 8 independent accumulators so the loads,
//    not the FMA latency chain, set the pace.
//  * rows > 1 (prefill): each thread owns blocks of up to 4 "panels" of output features. For
//    each 256-wide slice of K it widens the panel's weights once into an f32 buffer laid out
//    k-major (16 or 32 features per k), then a register-tiled micro-kernel multiplies 6 x
//    rows at a time against it by broadcasting x. Every converted weight is reused by all
//    rows, so prefill is bound by FMA throughput, not by re-streaming W per row.
//
// SIMD variants carry per-function target attributes so the build needs no -m flags; the
// variant is picked at run time from cpuKernelVariant().
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "tensor.h"

// GCC 12's avx512 headers use self-initialised "undefined" vectors that -Wall flags.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define DG_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DG_AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))

namespace dg {
namespace {

enum class Isa { Scalar, Avx2, Avx512 };

Isa chosenIsa() {
  static const Isa isa = [] {
    const char* v = cpuKernelVariant();
    if (std::strcmp(v, "avx512") == 0) return Isa::Avx512;
    if (std::strcmp(v, "avx2") == 0) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return isa;
}

// Below this many multiply-adds, waking the pool costs more than it saves.
constexpr int64_t kParallelMinWork = int64_t(1) << 15;
// Prefill: K is walked in slices of kSliceK so a packed weight panel (kSliceK x panel width
// floats, 16 KiB for avx2) stays in L1 while every group of x rows passes over it.
constexpr int64_t kSliceK = 256;

template <DType T>
inline float loadScalar(const unsigned char* row, int64_t i) {
  if constexpr (T == DType::F32) {
    float f;
    std::memcpy(&f, row + 4 * i, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return T == DType::BF16 ? bf16ToF32(h) : f16ToF32(h);
  }
}

// ---- prefill micro-kernels ------------------------------------------------------------------
// A packed panel holds PW consecutive output features interleaved by k: panel[i * PW + j] is
// W[o0 + j, k0 + i] as f32. Each step broadcasts one x value per row and multiplies it into
// whole vectors of output features, so results land in vector form with no horizontal sums.
// NX x rows x PW features accumulate in registers (6 x 2 vectors = 12 accumulators, enough
// independent FMAs to cover latency on two FMA ports) and are added into out at the end.

using PanelFn = void (*)(float* out, int64_t ldo, int nw, const float* x, int64_t ldx,
                         const float* panel, int64_t kb);

constexpr int kScalarPW = 8, kScalarNX = 4;
constexpr int kAvx2PW = 16, kAvx2NX = 6;
constexpr int kAvx512PW = 32, kAvx512NX = 6;

template <int NX>
void panelScalar(float* out, int64_t ldo, int nw, const float* x, int64_t ldx, const float* panel,
                 int64_t kb) {
  float acc[NX][kScalarPW] = {};
  for (int64_t i = 0; i < kb; i++) {
    const float* w = panel + i * kScalarPW;
    for (int r = 0; r < NX; r++) {
      const float xv = x[r * ldx + i];
      for (int j = 0; j < kScalarPW; j++) acc[r][j] += xv * w[j];
    }
  }
  for (int r = 0; r < NX; r++)
    for (int j = 0; j < nw; j++) out[r * ldo + j] += acc[r][j];
}

template <int NX>
DG_AVX2 void panelAvx2(float* out, int64_t ldo, int nw, const float* x, int64_t ldx,
                       const float* panel, int64_t kb) {
  __m256 acc0[NX], acc1[NX];
#pragma GCC unroll 8
  for (int r = 0; r < NX; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < kb; i++) {
    const __m256 w0 = _mm256_loadu_ps(panel + i * kAvx2PW);
    const __m256 w1 = _mm256_loadu_ps(panel + i * kAvx2PW + 8);
#pragma GCC unroll 8
    for (int r = 0; r < NX; r++) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + i);
      acc0[r] = _mm256_fmadd_ps(xv, w0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(xv, w1, acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NX; r++) {
    float* o = out + r * ldo;
    if (nw == kAvx2PW) {
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc0[r]));
      _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), acc1[r]));
    } else {  // last panel of a ragged block: only nw features exist in out
      float tmp[kAvx2PW];
      _mm256_storeu_ps(tmp, acc0[r]);
      _mm256_storeu_ps(tmp + 8, acc1[r]);
      for (int j = 0; j < nw; j++) o[j] += tmp[j];
    }
  }
}

template <int NX>
DG_AVX512 void panelAvx512(float* out, int64_t ldo, int nw, const float* x, int64_t ldx,
                           const float* panel, int64_t kb) {
  __m512 acc0[NX], acc1[NX];
#pragma GCC unroll 8
  for (int r = 0; r < NX; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < kb; i++) {
    const __m512 w0 = _mm512_loadu_ps(panel + i * kAvx512PW);
    const __m512 w1 = _mm512_loadu_ps(panel + i * kAvx512PW + 16);
#pragma GCC unroll 8
    for (int r = 0; r < NX; r++) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + i]);
      acc0[r] = _mm512_fmadd_ps(xv, w0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(xv, w1, acc1[r]);
    }
  }
  // Masked read-modify-write covers ragged panels without a scalar loop.
  const __mmask16 m0 = nw >= 16 ? __mmask16(0xffff) : __mmask16((1u << nw) - 1);
  const __mmask16 m1 = nw >= 32 ? __mmask16(0xffff) : nw <= 16 ? __mmask16(0) : __mmask16((1u << (nw - 16)) - 1);
#pragma GCC unroll 8
  for (int r = 0; r < NX; r++) {
    float* o = out + r * ldo;
    _mm512_mask_storeu_ps(o, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), acc0[r]));
    _mm512_mask_storeu_ps(o + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), acc1[r]));
  }
}

struct PanelKernels {
  int width;  // PW: output features per panel
  int maxRows;
  PanelFn byRows[6];  // byRows[nx - 1]
};
const PanelKernels kPanelScalar = {
    kScalarPW, kScalarNX, {panelScalar<1>, panelScalar<2>, panelScalar<3>, panelScalar<4>}};
const PanelKernels kPanelAvx2 = {kAvx2PW, kAvx2NX,
                                 {panelAvx2<1>, panelAvx2<2>, panelAvx2<3>, panelAvx2<4>,
                                  panelAvx2<5>, panelAvx2<6>}};
const PanelKernels kPanelAvx512 = {kAvx512PW, kAvx512NX,
                                   {panelAvx512<1>, panelAvx512<2>, panelAvx512<3>,
                                    panelAvx512<4>, panelAvx512<5>, panelAvx512<6>}};

// ---- matrix-vector kernels: NR weight rows (stored dtype) dotted with one f32 x row --------

DG_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

DG_AVX512 inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

template <DType T>
DG_AVX2 inline __m256 load8(const unsigned char* row, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * i));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i));
    if constexpr (T == DType::BF16)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else
      return _mm256_cvtph_ps(h);
  }
}

template <DType T, int NR>
DG_AVX2 void gemvAvx2(float* out, const unsigned char* w, size_t rowBytes, const float* x,
                      int64_t k) {
  // Two accumulators per row: 4 rows x 2 = 8 FMAs in flight covers FMA latency x throughput.
  __m256 acc0[NR], acc1[NR];
  for (int r = 0; r < NR; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    for (int r = 0; r < NR; r++) {
      acc0[r] = _mm256_fmadd_ps(load8<T>(w + r * rowBytes, i), x0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(load8<T>(w + r * rowBytes, i + 8), x1, acc1[r]);
    }
  }
  if (i + 8 <= k) {
    __m256 x0 = _mm256_loadu_ps(x + i);
    for (int r = 0; r < NR; r++) acc0[r] = _mm256_fmadd_ps(load8<T>(w + r * rowBytes, i), x0, acc0[r]);
    i += 8;
  }
  for (int r = 0; r < NR; r++) {
    float s = hsum256(_mm256_add_ps(acc0[r], acc1[r]));
    for (int64_t t = i; t < k; t++) s += loadScalar<T>(w + r * rowBytes, t) * x[t];
    out[r] = s;
  }
}

template <DType T>
DG_AVX512 inline __m512 load16(const unsigned char* row, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(row + 4 * i);
  } else {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
    if constexpr (T == DType::BF16)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else
      return _mm512_cvtph_ps(h);
  }
}

// Masked variant for the last partial vector: lanes past n read nothing and yield 0.
template <DType T>
DG_AVX512 inline __m512 load16Masked(const unsigned char* row, int64_t i, __mmask16 m) {
  if constexpr (T == DType::F32) {
    return _mm512_maskz_loadu_ps(m, row + 4 * i);
  } else {
    // 512-bit form so only avx512bw is needed (the 256-bit masked load also wants avx512vl).
    __m256i h = _mm512_castsi512_si256(_mm512_maskz_loadu_epi16(__mmask32(m), row + 2 * i));
    if constexpr (T == DType::BF16)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else
      return _mm512_cvtph_ps(h);
  }
}

template <DType T, int NR>
DG_AVX512 void gemvAvx512(float* out, const unsigned char* w, size_t rowBytes, const float* x,
                          int64_t k) {
  __m512 acc0[NR], acc1[NR];
  for (int r = 0; r < NR; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
    for (int r = 0; r < NR; r++) {
      acc0[r] = _mm512_fmadd_ps(load16<T>(w + r * rowBytes, i), x0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(load16<T>(w + r * rowBytes, i + 16), x1, acc1[r]);
    }
  }
  for (; i < k; i += 16) {
    int64_t left = k - i;
    __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    __m512 x0 = _mm512_maskz_loadu_ps(m, x + i);
    for (int r = 0; r < NR; r++)
      acc0[r] = _mm512_fmadd_ps(load16Masked<T>(w + r * rowBytes, i, m), x0, acc0[r]);
  }
  for (int r = 0; r < NR; r++) out[r] = hsum512(_mm512_add_ps(acc0[r], acc1[r]));
}

using GemvFn = void (*)(float* out, const unsigned char* w, size_t rowBytes, const float* x,
                        int64_t k);
struct GemvPair {
  GemvFn four, one;  // 4-row kernel for the bulk, 1-row kernel for the leftover rows
};

GemvPair gemvKernels(Isa isa, DType t) {
  if (isa == Isa::Avx512) {
    if (t == DType::BF16) return {gemvAvx512<DType::BF16, 4>, gemvAvx512<DType::BF16, 1>};
    if (t == DType::F16) return {gemvAvx512<DType::F16, 4>, gemvAvx512<DType::F16, 1>};
    return {gemvAvx512<DType::F32, 4>, gemvAvx512<DType::F32, 1>};
  }
  if (t == DType::BF16) return {gemvAvx2<DType::BF16, 4>, gemvAvx2<DType::BF16, 1>};
  if (t == DType::F16) return {gemvAvx2<DType::F16, 4>, gemvAvx2<DType::F16, 1>};
  return {gemvAvx2<DType::F32, 4>, gemvAvx2<DType::F32, 1>};
}

// Runs fn over [0, n) on the pool, or inline when the job is too small to be worth a wake-up.
template <class Fn>
void runBlocks(ThreadPool& pool, int64_t n, int64_t work, const Fn& fn) {
  if (pool.size() == 1 || work < kParallelMinWork) {
    fn(0, n, 0);
    return;
  }
  pool.parallelFor(n, fn);
}

void gemv(ThreadPool& pool, Isa isa, float* out, const float* x, const Weight& W,
          const float* bias) {
  const int64_t n = W.rows, k = W.cols;
  const size_t rowBytes = size_t(k) * dtypeSize(W.dtype);
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  const GemvPair kern = gemvKernels(isa, W.dtype);
  const int64_t groups = (n + 3) / 4;
  runBlocks(pool, groups, n * k, [&](int64_t g0, int64_t g1, int) {
    for (int64_t g = g0; g < g1; g++) {
      int64_t o = g * 4;
      if (o + 4 <= n) {
        kern.four(out + o, base + size_t(o) * rowBytes, rowBytes, x, k);
      } else {
        for (; o < n; o++) kern.one(out + o, base + size_t(o) * rowBytes, rowBytes, x, k);
      }
    }
    if (bias) {
      int64_t hi = std::min(n, g1 * 4);
      for (int64_t o = g0 * 4; o < hi; o++) out[o] += bias[o];
    }
  });
}

void gemmPacked(ThreadPool& pool, const PanelKernels& kern, float* out, int64_t ldo,
                const float* x, int64_t ldx, int64_t rows, const Weight& W, const float* bias) {
  const int64_t n = W.rows, k = W.cols;
  const int pw = kern.width;
  // Up to 4 panels per block, fewer when that would leave a thread idle.
  const int64_t panelsTotal = (n + pw - 1) / pw;
  const int64_t panelsPerBlock = std::max<int64_t>(1, std::min<int64_t>(4, panelsTotal / pool.size()));
  const int64_t blockWidth = panelsPerBlock * pw;
  const int64_t blocks = (n + blockWidth - 1) / blockWidth;
  runBlocks(pool, blocks, rows * n * k, [&](int64_t b0, int64_t b1, int) {
    // Per-thread scratch that persists across calls, so steady state never allocates.
    thread_local std::vector<float> packed, rowBuf;
    packed.resize(size_t(blockWidth * kSliceK));
    rowBuf.resize(size_t(kSliceK));
    for (int64_t b = b0; b < b1; b++) {
      const int64_t o0 = b * blockWidth;
      const int64_t nw = std::min(blockWidth, n - o0);
      const int64_t panels = (nw + pw - 1) / pw;
      for (int64_t r = 0; r < rows; r++) {
        float* orow = out + r * ldo + o0;
        for (int64_t j = 0; j < nw; j++) orow[j] = bias ? bias[o0 + j] : 0.f;
      }
      for (int64_t k0 = 0; k0 < k; k0 += kSliceK) {
        const int64_t kb = std::min(kSliceK, k - k0);
        // Pack: widen each weight row slice, then interleave it into its panel; features past
        // n in the last panel are zero so the kernels can always run full width.
        for (int64_t j = 0; j < panels * pw; j++) {
          float* dst = packed.data() + (j / pw) * pw * kb + (j % pw);
          if (j < nw) {
            toF32(rowBuf.data(), W.data, W.dtype, size_t((o0 + j) * k + k0), size_t(kb));
            for (int64_t i = 0; i < kb; i++) dst[i * pw] = rowBuf[size_t(i)];
          } else {
            for (int64_t i = 0; i < kb; i++) dst[i * pw] = 0.f;
          }
        }
        for (int64_t p = 0; p < panels; p++) {
          const float* panel = packed.data() + p * pw * kb;
          const int width = int(std::min<int64_t>(pw, nw - p * pw));
          for (int64_t r0 = 0; r0 < rows; r0 += kern.maxRows) {
            const int nx = int(std::min<int64_t>(kern.maxRows, rows - r0));
            kern.byRows[nx - 1](out + r0 * ldo + o0 + p * pw, ldo, width, x + r0 * ldx + k0, ldx,
                                panel, kb);
          }
        }
      }
    }
  });
}

}  // namespace

void matmul(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
            const Weight& W, const float* bias) {
  if (rows <= 0 || W.rows <= 0) return;
  if (W.cols <= 0) {  // empty reduction: the result is just the bias
    for (int64_t r = 0; r < rows; r++)
      for (int64_t o = 0; o < W.rows; o++) out[r * ldo + o] = bias ? bias[o] : 0.f;
    return;
  }
  const Isa isa = chosenIsa();
  if (rows == 1 && isa != Isa::Scalar) {
    gemv(pool, isa, out, x, W, bias);
    return;
  }
  const PanelKernels& kern =
      isa == Isa::Avx512 ? kPanelAvx512 : isa == Isa::Avx2 ? kPanelAvx2 : kPanelScalar;
  gemmPacked(pool, kern, out, ldo, x, ldx, rows, W, bias);
}

}  // namespace dg
