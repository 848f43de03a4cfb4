// Causal attention over per-sequence KV caches in the cache dtype (f32, f16 or bf16).
//
// One task per (query row, KV head): the query heads that share a KV head (GQA) are done
// together, so each key and value vector is read and widened to f32 once for the whole group.
// Per task: scores s[h][j] = q_h . k_j * scale for the keys in the window, a softmax per head
// (max subtracted, sum in double), then out_h = sum_j p[h][j] v_j / sum. NaN passes through
// (a NaN score makes that head's output NaN), as in torch.
//
// SIMD variants carry per-function target attributes; the variant is picked at run time from
// cpuKernelVariant(). Head dimensions are 24..256: 8-lane vectors with a scalar tail cover them.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

#define DG_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace dg {
namespace {

// Widens n cache elements at p (dtype t) into f32 at out.
template <DType T>
inline void widenScalar(float* out, const void* p, int n) {
  for (int i = 0; i < n; i++) out[i] = loadElement(p, T, size_t(i));
}

template <DType T>
DG_AVX2 inline __m256 load8(const void* base, int i) {
  const unsigned char* p = static_cast<const unsigned char*>(base);
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * size_t(i)));
    if constexpr (T == DType::BF16)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else
      return _mm256_cvtph_ps(h);
  }
}

DG_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Task {
  const float* q;  // the group's first query head
  const void* k;   // key of the first position read, this KV head
  const void* v;
  float* out;     // the group's first output head
  int64_t count;  // keys read
};

// Scores for `group` heads over `count` keys, then softmax and the weighted sum of values.
// kStride: elements between consecutive positions of the cache (nKv * headDim).
template <DType T>
void taskScalar(const Task& t, int group, int headDim, int64_t kStride, float scale, float* scores, float* kbuf) {
  const size_t es = dtypeSize(T);
  const unsigned char* k = static_cast<const unsigned char*>(t.k);
  const unsigned char* v = static_cast<const unsigned char*>(t.v);
  for (int64_t j = 0; j < t.count; j++) {
    widenScalar<T>(kbuf, k + size_t(j) * size_t(kStride) * es, headDim);
    for (int h = 0; h < group; h++) {
      const float* q = t.q + int64_t(h) * headDim;
      float s = 0;
      for (int i = 0; i < headDim; i++) s += q[i] * kbuf[i];
      scores[size_t(h) * size_t(t.count) + size_t(j)] = s * scale;
    }
  }
  for (int h = 0; h < group; h++) std::fill(t.out + int64_t(h) * headDim, t.out + int64_t(h + 1) * headDim, 0.f);
  std::vector<double> totals(static_cast<size_t>(group));
  for (int h = 0; h < group; h++) {
    float* s = scores + size_t(h) * size_t(t.count);
    float m = -INFINITY;
    bool nan = false;
    for (int64_t j = 0; j < t.count; j++) nan |= std::isnan(s[j]), m = std::max(m, s[j]);
    double total = 0;
    for (int64_t j = 0; j < t.count; j++) total += (s[j] = nan ? NAN : std::exp(s[j] - m));
    totals[size_t(h)] = total;
  }
  for (int64_t j = 0; j < t.count; j++) {
    widenScalar<T>(kbuf, v + size_t(j) * size_t(kStride) * es, headDim);
    for (int h = 0; h < group; h++) {
      const float p = scores[size_t(h) * size_t(t.count) + size_t(j)];
      float* o = t.out + int64_t(h) * headDim;
      for (int i = 0; i < headDim; i++) o[i] += p * kbuf[i];
    }
  }
  for (int h = 0; h < group; h++) {
    const float inv = float(1.0 / totals[size_t(h)]);
    float* o = t.out + int64_t(h) * headDim;
    for (int i = 0; i < headDim; i++) o[i] *= inv;
  }
}

template <DType T>
DG_AVX2 void taskAvx2(const Task& t, int group, int headDim, int64_t kStride, float scale, float* scores, float* kbuf) {
  const size_t es = dtypeSize(T);
  const unsigned char* k = static_cast<const unsigned char*>(t.k);
  const unsigned char* v = static_cast<const unsigned char*>(t.v);
  const int vec = headDim / 8 * 8;
  for (int64_t j = 0; j < t.count; j++) {
    const void* kj = k + size_t(j) * size_t(kStride) * es;
    // Widen the key once for the group (the tail in scalar).
    for (int i = 0; i < vec; i += 8) _mm256_storeu_ps(kbuf + i, load8<T>(kj, i));
    for (int i = vec; i < headDim; i++) kbuf[i] = loadElement(kj, T, size_t(i));
    for (int h = 0; h < group; h++) {
      const float* q = t.q + int64_t(h) * headDim;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      int i = 0;
      for (; i + 16 <= vec; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kbuf + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(kbuf + i + 8), acc1);
      }
      for (; i < vec; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kbuf + i), acc0);
      float s = hsum(_mm256_add_ps(acc0, acc1));
      for (; i < headDim; i++) s += q[i] * kbuf[i];
      scores[size_t(h) * size_t(t.count) + size_t(j)] = s * scale;
    }
  }
  double totals[64];
  std::vector<double> many;
  double* total = group <= 64 ? totals : (many.resize(size_t(group)), many.data());
  for (int h = 0; h < group; h++) {
    float* s = scores + size_t(h) * size_t(t.count);
    float m = -INFINITY;
    bool nan = false;
    for (int64_t j = 0; j < t.count; j++) nan |= std::isnan(s[j]), m = std::max(m, s[j]);
    double sum = 0;
    for (int64_t j = 0; j < t.count; j++) sum += (s[j] = nan ? NAN : std::exp(s[j] - m));
    total[h] = sum;
    std::fill(t.out + int64_t(h) * headDim, t.out + int64_t(h + 1) * headDim, 0.f);
  }
  for (int64_t j = 0; j < t.count; j++) {
    const void* vj = v + size_t(j) * size_t(kStride) * es;
    for (int i = 0; i < vec; i += 8) _mm256_storeu_ps(kbuf + i, load8<T>(vj, i));
    for (int i = vec; i < headDim; i++) kbuf[i] = loadElement(vj, T, size_t(i));
    for (int h = 0; h < group; h++) {
      const __m256 p = _mm256_set1_ps(scores[size_t(h) * size_t(t.count) + size_t(j)]);
      float* o = t.out + int64_t(h) * headDim;
      int i = 0;
      for (; i < vec; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(p, _mm256_loadu_ps(kbuf + i), _mm256_loadu_ps(o + i)));
      const float ps = scores[size_t(h) * size_t(t.count) + size_t(j)];
      for (; i < headDim; i++) o[i] += ps * kbuf[i];
    }
  }
  for (int h = 0; h < group; h++) {
    const float inv = float(1.0 / total[h]);
    float* o = t.out + int64_t(h) * headDim;
    for (int i = 0; i < headDim; i++) o[i] *= inv;
  }
}

using TaskFn = void (*)(const Task&, int, int, int64_t, float, float*, float*);

TaskFn taskFn(DType kv) {
  const bool simd = std::strcmp(cpuKernelVariant(), "scalar") != 0;
  switch (kv) {
    case DType::F16:
      return simd ? taskAvx2<DType::F16> : taskScalar<DType::F16>;
    case DType::BF16:
      return simd ? taskAvx2<DType::BF16> : taskScalar<DType::BF16>;
    default:
      return simd ? taskAvx2<DType::F32> : taskScalar<DType::F32>;
  }
}

}  // namespace

void attention(ThreadPool& pool, const AttentionRow* rows, int64_t nRows, int nHeads, int nKv, int headDim, int window,
               float scale, DType kv) {
  if (nRows <= 0 || nHeads <= 0 || nKv <= 0 || headDim <= 0) return;
  const int group = nHeads / nKv > 0 ? nHeads / nKv : 1;
  const int64_t kStride = int64_t(nKv) * headDim;
  const size_t es = dtypeSize(kv);
  const TaskFn fn = taskFn(kv);
  auto work = [&](int64_t t0, int64_t t1, int) {
    thread_local std::vector<float> scores, kbuf;
    for (int64_t t = t0; t < t1; t++) {
      const AttentionRow& row = rows[t / nKv];
      const int g = int(t % nKv);
      float* out = row.out + int64_t(g) * group * headDim;
      if (row.pos < 0) {
        std::fill(out, out + int64_t(group) * headDim, 0.f);
        continue;
      }
      const int64_t first = window > 0 ? std::max<int64_t>(0, int64_t(row.pos) - window + 1) : 0;
      Task task;
      task.q = row.q + int64_t(g) * group * headDim;
      task.k = static_cast<const unsigned char*>(row.k) +
               (size_t(first) * size_t(kStride) + size_t(g) * size_t(headDim)) * es;
      task.v = static_cast<const unsigned char*>(row.v) +
               (size_t(first) * size_t(kStride) + size_t(g) * size_t(headDim)) * es;
      task.out = out;
      task.count = int64_t(row.pos) - first + 1;
      scores.resize(size_t(group) * size_t(task.count));
      kbuf.resize(size_t(headDim));
      fn(task, group, headDim, kStride, scale, scores.data(), kbuf.data());
    }
  };
  const int64_t tasks = nRows * nKv;
  // A decode step over a short cache is a few microseconds of work: not worth waking the pool.
  if (tasks == 1 || (nRows == 1 && int64_t(rows[0].pos) * nHeads * headDim < (int64_t(1) << 14)))
    work(0, tasks, 0);
  else
    pool.parallelFor(tasks, work);
}

}  // namespace dg
