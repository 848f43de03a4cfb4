// RMSNorm as HF LlamaRMSNorm computes it: variance in f32, x * rsqrt(var + eps), then * weight.
#include <cmath>

#include "kernels.h"

namespace dg {

static void rmsnormRow(float* out, const float* x, int64_t dim, const float* weight, float eps) {
  // Accumulating in double and rounding once gives the correctly rounded f32 mean, which is
  // what torch's (pairwise, f32) reduction approximates closely; a naive f32 running sum
  // over 8k elements would drift further from it.
  double sum0 = 0, sum1 = 0, sum2 = 0, sum3 = 0;
  int64_t i = 0;
  for (; i + 4 <= dim; i += 4) {
    sum0 += double(x[i]) * x[i];
    sum1 += double(x[i + 1]) * x[i + 1];
    sum2 += double(x[i + 2]) * x[i + 2];
    sum3 += double(x[i + 3]) * x[i + 3];
  }
  for (; i < dim; i++) sum0 += double(x[i]) * x[i];
  float meanSquare = float((sum0 + sum1 + sum2 + sum3) / double(dim));
  float inv = 1.0f / std::sqrt(meanSquare + eps);
  for (int64_t j = 0; j < dim; j++) out[j] = weight[j] * (x[j] * inv);
}

void rmsnorm(ThreadPool& pool, float* out, const float* x, int64_t rows, int64_t dim, const float* weight, float eps) {
  if (rows <= 0 || dim <= 0) return;
  auto work = [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; r++) rmsnormRow(out + r * dim, x + r * dim, dim, weight, eps);
  };
  if (rows * dim < (int64_t(1) << 15))
    work(0, rows, 0);  // a wake-up costs more than this
  else
    pool.parallelFor(rows, work);
}

}  // namespace dg
