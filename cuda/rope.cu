// Rotary position embedding, HF "rotate_half" layout (element i pairs with i + headDim/2), in
// place. One block per row: the row's cos/sin table is formed once in shared memory (angle in
// double, as native/cpu/rope.cc does), then every (head, i) pair of the row is rotated.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) ropeKernel(float* x, int64_t ldx, const int32_t* __restrict__ positions,
                                                       int nHeads, int headDim, const float* __restrict__ invFreq) {
  extern __shared__ float table[];  // [half] cos, then [half] sin
  const int half = headDim / 2;
  const int64_t r = blockIdx.x;
  const double pos = double(positions[r]);
  for (int i = threadIdx.x; i < half; i += kThreads) {
    double s, c;
    sincos(pos * double(invFreq[i]), &s, &c);
    table[i] = float(c);
    table[half + i] = float(s);
  }
  __syncthreads();
  float* row = x + r * ldx;
  const int pairs = nHeads * half;
  for (int t = threadIdx.x; t < pairs; t += kThreads) {
    const int h = t / half, i = t % half;
    float* lo = row + int64_t(h) * headDim;
    const float a = lo[i], b = lo[i + half], c = table[i], s = table[half + i];
    lo[i] = a * c - b * s;
    lo[i + half] = b * c + a * s;
  }
}

}  // namespace

void launchRope(cudaStream_t s, float* x, int64_t ldx, int64_t rows, const int32_t* positions, int nHeads,
                int headDim, const float* invFreq) {
  if (rows <= 0 || nHeads <= 0 || headDim < 2) return;
  const size_t smem = size_t(headDim / 2) * 2 * sizeof(float);
  ropeKernel<<<unsigned(rows), kThreads, smem, s>>>(x, ldx, positions, nHeads, headDim, invFreq);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
