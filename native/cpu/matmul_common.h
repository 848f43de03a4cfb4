// Shared by the CPU matmul kernels (matmul.cc: matrix-vector and the public entry points;
// matmul_tiles.cc: the register-tiled prefill kernels): the ISA chosen at run time, the target
// attributes each SIMD variant is compiled with, scalar weight loads and the pool dispatch rule.
// Internal to native/cpu/.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels.h"
#include "tensor.h"
#include "threadpool.h"

// GCC 12's avx512 headers use self-initialised "undefined" vectors that -Wall flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

// SIMD variants carry per-function target attributes so the build needs no -m flags.
#define DG_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DG_AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))
// 256-bit VNNI (vpdpbusd on ymm) comes with AVX512_VNNI + AVX512VL.
#define DG_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace dg {
namespace matmul_detail {

enum class Isa { Scalar, Avx2, Avx512 };

// The variant cpuKernelVariant() picked (DEPTHGATE_CPU_KERNELS or the processor), read once.
inline Isa chosenIsa() {
  static const Isa isa = [] {
    const char* v = cpuKernelVariant();
    if (std::strcmp(v, "avx512") == 0) return Isa::Avx512;
    if (std::strcmp(v, "avx2") == 0) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return isa;
}

// The integer (block-quantized) kernels' variant: the float kernels' one, narrowed by what they
// need: VNNI on top of AVX-512 (quantKernelVariant() names it).
enum class QIsa { Scalar, Avx2, Vnni };
inline QIsa quantIsa(Isa isa) {
  if (isa == Isa::Scalar) return QIsa::Scalar;
  const CpuFeatures& f = cpuFeatures();
  if (isa == Isa::Avx512 && f.avx512vnni && f.avx512vl) return QIsa::Vnni;
  return QIsa::Avx2;
}

// Software prefetch of the next row group (the decode kernels). A matrix-vector product reads its
// weight rows once, a few rows at a time, and one thread's reads are held back by how many lines
// its hardware prefetchers keep in flight, worst for short rows (a 1024-wide Q8_0 row is 17
// lines). On this project's 2-vCPU Intel Xeon VM a streaming read of 4-row groups of 17-line rows
// went from 20 to 25.5 GB/s with the next group asked for line by line (a burst per group was
// worse), and batch-1 decode of the bench model from 30 to 19-20 ms/token in bf16, 14.8 to 11.5 in
// Q8_0 and 13 to 10 in Q4_K_M, with the lines asked into L1 (prefetcht0).
// Where the lines go matters as much, and differs by vendor. On a 2-vCPU AMD EPYC (Zen 4) VM,
// asking into L2 (prefetcht1; t2 measured the same) instead of L1 took the bench model from 18.9
// to 15 ms/token in bf16, 11.3 to 8.8 in Q8_0 and 7.4 to 4.8 in Q4_K_M (alternating runs, medians
// of 3), likely because an L1 prefetch there holds one of L1's few miss buffers until its line
// arrives, so the kernels' own loads wait behind the hints (a reading, not measured). So the
// default is L2 on AMD and L1 elsewhere, the level each was measured at (an L2 prefetch on Intel
// is unmeasured: DEPTHGATE_CPU_PREFETCH=l2 tries it). DEPTHGATE_CPU_PREFETCH=0 (or off) turns the
// prefetch off, l1 / l2 choose the level; any other value keeps the default. prefetchSpan asks for
// the lines of [p, p + bytes); it is a hint (it never faults, so past the end of a matrix is
// harmless, and never changes a result).
enum class PrefetchLevel { Off, L1, L2 };
inline PrefetchLevel readPrefetchLevel() {
  const char* v = std::getenv("DEPTHGATE_CPU_PREFETCH");
  if (v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0)) return PrefetchLevel::Off;
  if (v && std::strcmp(v, "l1") == 0) return PrefetchLevel::L1;
  if (v && std::strcmp(v, "l2") == 0) return PrefetchLevel::L2;
  return cpuFeatures().amd ? PrefetchLevel::L2 : PrefetchLevel::L1;
}
// Read once, when the addon loads: a namespace-scope constant rather than a function-local static,
// so prefetchSpan, called per row inside the kernels' loops, reads it with no guard check.
inline const PrefetchLevel kPrefetchLevel = readPrefetchLevel();
inline bool prefetchOn() { return kPrefetchLevel != PrefetchLevel::Off; }
inline void prefetchSpan(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  if (kPrefetchLevel == PrefetchLevel::L2)
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T1);
  else
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

// The sum of the 8 lanes.
DG_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Below this many multiply-adds, waking the pool costs more than it saves.
constexpr int64_t kParallelMinWork = int64_t(1) << 15;

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

// Runs fn over [0, n) on the pool, or inline when the job is too small to be worth a wake-up.
template <class Fn>
void runBlocks(ThreadPool& pool, int64_t n, int64_t work, const Fn& fn) {
  if (pool.size() == 1 || work < kParallelMinWork) {
    fn(0, n, 0);
    return;
  }
  pool.parallelFor(n, fn);
}

// Several matrix-vector products over one x in one parallel loop (matmulMany, at most 8 jobs):
// the 4-row groups of every job are numbered one after another and split across the threads
// together; groups(job, g0, g1) runs groups [g0, g1) of one job.
template <class Fn>
void runJobGroups(ThreadPool& pool, const GemvJob* jobs, int nJobs, const Fn& groups) {
  int64_t count[8], total = 0, work = 0;
  for (int j = 0; j < nJobs; j++) {
    count[j] = (jobs[j].W->rows + 3) / 4;
    total += count[j];
    work += jobs[j].W->rows * jobs[j].W->cols;
  }
  runBlocks(pool, total, work, [&](int64_t b, int64_t e, int) {
    int64_t first = 0;
    for (int j = 0; j < nJobs && b < e; j++) {
      const int64_t lo = std::max(b, first), hi = std::min(e, first + count[j]);
      if (lo < hi) groups(jobs[j], lo - first, hi - first);
      first += count[j];
    }
  });
}

// SwiGLU for one row over the 4-row groups of Wg and Wu (n rows each) in one parallel loop: the gate
// and up rows of up to 64 groups, then silu(g) * u while both are hot. groups(dst, outBase, W,
// bias, g0, g1) writes W's rows o of groups [g0, g1) (+ bias) to dst[o - outBase].
template <class Groups>
void gateUpGroups(ThreadPool& pool, float* out, const Weight& Wg, const float* bg, const Weight& Wu, const float* bu,
                  const Groups& groups) {
  const int64_t n = Wg.rows;
  runBlocks(pool, (n + 3) / 4, 2 * n * Wg.cols, [&](int64_t g0, int64_t g1, int) {
    float up[4 * 64];
    for (int64_t g = g0; g < g1; g += 64) {
      const int64_t ge = std::min(g1, g + 64);
      groups(out, 0, Wg, bg, g, ge);
      groups(up, g * 4, Wu, bu, g, ge);
      for (int64_t o = g * 4; o < std::min(n, ge * 4); o++) {
        const float v = out[o];
        out[o] = v / (1.0f + std::exp(-v)) * up[o - g * 4];
      }
    }
  });
}

// The 32-wide integer kernels (matmul_quant.cc, matmul_repacked.cc): `four` dots 4 weight rows (rb
// bytes apart) with one activation row, `one` a single row; an activation row is its int8 codes,
// block scales and an int32 array the kernel may want (the VNNI kernels' start values), and nb is
// W.cols / 32.
using IntGemvFn = void (*)(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad,
                           const int32_t* extra, int64_t nb);
struct IntGemvPair {
  IntGemvFn four, one;
};
struct IntRow {
  const int8_t* q;
  const float* d;
  const int32_t* extra;
};

// out[r * ldo + o - outBase] (+)= W[o] . x[r] + bias[o] for every activation row r < rows (rowOf(r)
// gives it) and the outputs o of the 4-row groups [g0, g1): each group's weight rows meet every
// activation row while they are in L1, so W is read once per call.
template <class RowOf>
void intGroups(const IntGemvPair& kern, float* out, int64_t ldo, int64_t outBase, int64_t rows, const Weight& W,
               const float* bias, bool accumulate, int64_t g0, int64_t g1, const RowOf& rowOf) {
  const int64_t n = W.rows, nb = W.cols / kQuantBlock;
  const size_t rb = rowBytes(W.dtype, W.cols);
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  float tmp[4];
  for (int64_t g = g0; g < g1; g++) {
    const int64_t o = g * 4;
    const int nr = int(std::min<int64_t>(4, n - o));
    const unsigned char* wg = base + size_t(o) * rb;
    for (int64_t r = 0; r < rows; r++) {
      const IntRow a = rowOf(r);
      if (nr == 4)
        kern.four(tmp, wg, rb, a.q, a.d, a.extra, nb);
      else
        for (int i = 0; i < nr; i++) kern.one(tmp + i, wg + size_t(i) * rb, rb, a.q, a.d, a.extra, nb);
      float* dst = out + r * ldo + o - outBase;
      for (int i = 0; i < nr; i++) {
        const float y = tmp[i] + (bias ? bias[o + i] : 0.f);
        dst[i] = accumulate ? dst[i] + y : y;
      }
    }
  }
}

// The activation rounding of the 32-wide integer kernels (matmul_quant.cc, matmul_repacked.cc), one
// block of 32: d = max|x| / 127, q = round(x / d); returns d. A block with a non-finite value gets
// d = NaN and codes 0, so the NaN reaches the output as it would in f32. (llama.cpp rounds
// activations to Q8_0, with an f16 scale; f32 loses less and costs nothing here.)
inline float quantizeActivationBlock(const float* xb, int8_t* q) {
  float amax = 0.f;
  bool finite = true;
  for (int j = 0; j < 32; j++) {
    finite = finite && std::isfinite(xb[j]);
    amax = std::max(amax, std::fabs(xb[j]));
  }
  if (!finite) {
    std::memset(q, 0, 32);
    return NAN;
  }
  const float inv = amax != 0.f ? 127.f / amax : 0.f;
  for (int j = 0; j < 32; j++) q[j] = int8_t(std::lrint(xb[j] * inv));
  return amax / 127.f;
}

// Prefill (rows > 1, or any rows on the scalar variant): out[r, o] (+)= x[r] . W[o] + bias[o]
// with register-tiled dot products on W in its stored layout (matmul_tiles.cc).
void gemm(ThreadPool& pool, Isa isa, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
          const Weight& W, const float* bias, bool accumulate);

// Weights in a 32-wide block format (Q8_0, Q4_0; matmul_quant.cc): the activation rows are quantized to
// int8 blocks once per call and meet the weight blocks in integer dot products. These throw
// dg::Error (kErrUnsupported) for a weight that is not block-quantized or not 32k columns wide.
void matmulQuant(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
                 const float* bias, bool accumulate);
// matmulMany's jobs, all block-quantized and of equal width (x is quantized once for all).
void matmulManyQuant(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs);
void gateUpQuant(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                 const float* bu);

// The same three for the K-quants (Q4_K, Q6_K; matmul_kquant.cc), whose activation rows are
// quantized to 256-wide int8 blocks with 16-wide sums. A job list may mix Q4_K and Q6_K. They throw
// dg::Error (kErrUnsupported) for a weight that is not a K-quant or not 256k columns wide.
void matmulKQuant(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
                  const float* bias, bool accumulate);
void matmulManyKQuant(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs);
void gateUpKQuant(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                  const float* bu);

// The same three for the CPU's repacked Q8_0 (Q8_0x16; matmul_repacked.cc). They throw dg::Error
// (kErrUnsupported) for a weight in another layout.
void matmulRepacked(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
                    const Weight& W, const float* bias, bool accumulate);
void matmulManyRepacked(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs);
void gateUpRepacked(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                    const float* bu);

}  // namespace matmul_detail
}  // namespace dg
