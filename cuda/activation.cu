// Elementwise activations: SwiGLU gating gate = silu(gate) * up, and tanh in place.
// Accurate expf/tanhf (no fast-math), matching native/cpu/activation.cc's formula exactly:
// g / (1 + exp(-g)) * u, which gives -0 for very negative g as the CPU does.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

__global__ void siluMulKernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void tanhKernel(float* x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = tanhf(x[i]);
}

unsigned gridFor(int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceilDiv(n, 256), 65535))); }

}  // namespace

// gate and up are dense [rows, n] (row stride n), so the pair is one flat array.
void launchSiluMul(cudaStream_t s, float* gate, const float* up, int64_t rows, int64_t n) {
  if (rows <= 0 || n <= 0) return;
  siluMulKernel<<<gridFor(rows * n), 256, 0, s>>>(gate, up, rows * n);
  CUDA_CHECK_LAUNCH();
}

void launchTanh(cudaStream_t s, float* x, int64_t n) {
  if (n <= 0) return;
  tanhKernel<<<gridFor(n), 256, 0, s>>>(x, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
