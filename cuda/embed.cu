// Embedding lookup: x[r] = table[tokens[r]], widened to f32.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

template <DType T>
__global__ void embedKernel(float* __restrict__ x, const int32_t* __restrict__ tokens, const void* __restrict__ table,
                            int64_t cols) {
  const int64_t r = blockIdx.y;
  const int64_t base = int64_t(tokens[r]) * cols;
  float* out = x + r * cols;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x)
    out[c] = loadW<T>(table, base + c);
}

}  // namespace

void launchEmbed(cudaStream_t s, float* x, const int32_t* tokens, int64_t rows, const Weight& t) {
  if (rows <= 0 || t.cols <= 0) return;
  dim3 grid(unsigned(std::min<int64_t>(ceilDiv(t.cols, 256), 64)), unsigned(rows));
  switch (t.dtype) {
    case DType::F32: embedKernel<DType::F32><<<grid, 256, 0, s>>>(x, tokens, t.data, t.cols); break;
    case DType::F16: embedKernel<DType::F16><<<grid, 256, 0, s>>>(x, tokens, t.data, t.cols); break;
    case DType::BF16: embedKernel<DType::BF16><<<grid, 256, 0, s>>>(x, tokens, t.data, t.cols); break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
