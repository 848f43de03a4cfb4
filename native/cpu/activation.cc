// SwiGLU gating: gate = silu(gate) * up, with silu(g) = g / (1 + exp(-g)).
#include <cmath>

#include "kernels.h"

namespace dg {

void siluMul(ThreadPool& pool, float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t rows, int64_t n) {
  if (rows <= 0 || n <= 0) return;
  // Decode has one long row, so split rows into column chunks to give every thread work.
  constexpr int64_t kChunk = 2048;
  const int64_t chunksPerRow = (n + kChunk - 1) / kChunk;
  auto work = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      const int64_t r = t / chunksPerRow, c0 = (t % chunksPerRow) * kChunk;
      const int64_t c1 = c0 + kChunk < n ? c0 + kChunk : n;
      float* g = gate + r * ldg;
      const float* u = up + r * ldu;
      // For very negative g, exp(-g) overflows to inf and g/inf gives -0, the right limit.
      for (int64_t i = c0; i < c1; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  };
  const int64_t tasks = rows * chunksPerRow;
  if (tasks == 1)
    work(0, 1, 0);
  else
    pool.parallelFor(tasks, work);
}

}  // namespace dg
