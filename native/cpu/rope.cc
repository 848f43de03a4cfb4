// Rotary position embedding, HF "rotate_half" layout: element i pairs with i + headDim/2.
#include <cmath>
#include <vector>

#include "kernels.h"

namespace dg {

void ropeRow(float* row, int nHeads, int headDim, const float* invFreq, int32_t pos) {
  if (nHeads <= 0 || headDim < 2) return;
  const int half = headDim / 2;
  thread_local std::vector<float> cosTable, sinTable;
  cosTable.resize(size_t(half));
  sinTable.resize(size_t(half));
  // The angle is formed in double: at position 100k an f32 product already loses the low bits
  // that cos/sin are most sensitive to. One table serves every head of the row.
  for (int i = 0; i < half; i++) {
    const double angle = double(pos) * double(invFreq[i]);
    cosTable[size_t(i)] = float(std::cos(angle));
    sinTable[size_t(i)] = float(std::sin(angle));
  }
  for (int h = 0; h < nHeads; h++) {
    float* lo = row + int64_t(h) * headDim;
    float* hi = lo + half;
    for (int i = 0; i < half; i++) {
      const float a = lo[i], b = hi[i], c = cosTable[size_t(i)], s = sinTable[size_t(i)];
      lo[i] = a * c - b * s;
      hi[i] = b * c + a * s;
    }
  }
}

void rope(ThreadPool& pool, float* x, int64_t ldx, int64_t rows, const int32_t* positions, int nHeads, int headDim,
          const float* invFreq) {
  if (rows <= 0 || nHeads <= 0 || headDim < 2) return;
  auto work = [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; r++) ropeRow(x + r * ldx, nHeads, headDim, invFreq, positions[r]);
  };
  if (rows < 4)
    work(0, rows, 0);  // per-row cost is small; decode never needs the pool
  else
    pool.parallelFor(rows, work);
}

}  // namespace dg
