// Causal attention over per-sequence KV caches, one (query row, head) pair per task.
// The pairs are ordered row-major, so the query heads that share a KV head (GQA) land on the
// same thread back to back and reuse its keys/values from cache.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

#define DG_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace dg {
namespace {

float dotScalar(const float* a, const float* b, int n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; i++) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

void axpyScalar(float* y, float a, const float* x, int n) {
  for (int i = 0; i < n; i++) y[i] += a * x[i];
}

// Head dimensions are 64..256, so 256-bit vectors already cover them in a few steps; the
// avx512 variant uses these too.
DG_AVX2 float dotAvx2(const float* a, const float* b, int n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  if (i + 8 <= n) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    i += 8;
  }
  __m256 v = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float sum = _mm_cvtss_f32(s);
  for (; i < n; i++) sum += a[i] * b[i];
  return sum;
}

DG_AVX2 void axpyAvx2(float* y, float a, const float* x, int n) {
  __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

struct VecOps {
  float (*dot)(const float*, const float*, int);
  void (*axpy)(float*, float, const float*, int);
};

const VecOps& vecOps() {
  static const VecOps ops = std::strcmp(cpuKernelVariant(), "scalar") == 0
                                ? VecOps{dotScalar, axpyScalar}
                                : VecOps{dotAvx2, axpyAvx2};
  return ops;
}

}  // namespace

void attention(ThreadPool& pool, const AttentionRow* rows, int64_t nRows, int nHeads, int nKv,
               int headDim, int window, float scale) {
  if (nRows <= 0 || nHeads <= 0 || nKv <= 0 || headDim <= 0) return;
  const int group = nHeads / nKv > 0 ? nHeads / nKv : 1;
  const int64_t kvStride = int64_t(nKv) * headDim;
  const VecOps ops = vecOps();
  auto work = [&](int64_t t0, int64_t t1, int) {
    thread_local std::vector<float> scores;
    for (int64_t t = t0; t < t1; t++) {
      const AttentionRow& row = rows[t / nHeads];
      const int h = int(t % nHeads);
      const int kvHead = std::min(h / group, nKv - 1);
      const float* q = row.q + int64_t(h) * headDim;
      float* out = row.out + int64_t(h) * headDim;
      std::fill(out, out + headDim, 0.f);
      if (row.pos < 0) continue;
      const int64_t first = window > 0 ? std::max<int64_t>(0, int64_t(row.pos) - window + 1) : 0;
      const int64_t count = int64_t(row.pos) - first + 1;
      const float* k = row.k + first * kvStride + int64_t(kvHead) * headDim;
      const float* v = row.v + first * kvStride + int64_t(kvHead) * headDim;

      scores.resize(size_t(count));
      float maxScore = -INFINITY;
      for (int64_t j = 0; j < count; j++) {
        float s = ops.dot(q, k + j * kvStride, headDim) * scale;
        scores[size_t(j)] = s;
        maxScore = std::max(maxScore, s);
      }
      // Subtracting the max keeps every exp in (0, 1]; the sum goes in double so long contexts
      // of many small terms do not lose mass.
      double total = 0;
      for (int64_t j = 0; j < count; j++) {
        float p = std::exp(scores[size_t(j)] - maxScore);
        scores[size_t(j)] = p;
        total += p;
      }
      for (int64_t j = 0; j < count; j++) ops.axpy(out, scores[size_t(j)], v + j * kvStride, headDim);
      const float inv = float(1.0 / total);
      for (int i = 0; i < headDim; i++) out[i] *= inv;
    }
  };
  pool.parallelFor(nRows * nHeads, work);
}

}  // namespace dg
