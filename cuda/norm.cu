// RMSNorm as HF LlamaRMSNorm (and native/cpu/norm.cc): out = weight * (x * 1/sqrt(mean(x^2) + eps)).
// One block per row; the sum of squares is accumulated in double like the CPU kernel, so the
// mean rounds to f32 once. out may alias x: each element is read and written by the same thread
// after the reduction, so in place is safe.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) rmsnormKernel(float* out, const float* x, int64_t dim,
                                                          const float* __restrict__ w, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * dim;
  float* orow = out + r * dim;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    double v = xr[i];
    sum += v * v;
  }
  __shared__ double partial[kThreads / 32];
  __shared__ float invShared;
  sum = warpSumD(sum);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    double s = lane < kThreads / 32 ? partial[lane] : 0.0;
    s = warpSumD(s);
    if (lane == 0) {
      float meanSquare = float(s / double(dim));
      invShared = 1.0f / sqrtf(meanSquare + eps);
    }
  }
  __syncthreads();
  const float inv = invShared;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) orow[i] = w[i] * (xr[i] * inv);
}

}  // namespace

void launchRmsnorm(cudaStream_t s, float* out, const float* x, int64_t rows, int64_t dim, const float* w, float eps) {
  if (rows <= 0 || dim <= 0) return;
  rmsnormKernel<<<unsigned(rows), kThreads, 0, s>>>(out, x, dim, w, eps);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
