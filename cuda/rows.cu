// Row movement: residual add, gather (compaction of active rows), scatter-add with a per-row
// scale (un-compaction into the residual), and the K/V cache write. Rows are walked with
// float4 when every row start is 16-byte aligned, else with scalars.
// Later: fold gather into the next GEMM's prologue and scatter into the previous one's epilogue
// (kernels.md 5.1), with the index list produced on the device so no host copy is needed.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void addKernel(float* __restrict__ x, const float* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}
__global__ void addKernel4(float4* __restrict__ x, const float4* __restrict__ y, int64_t n4) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    float4 a = x[i];
    const float4 b = y[i];
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    x[i] = a;
  }
}

// grid: (column blocks, rows). V = 4 uses float4 (dim % 4 == 0 and aligned bases).
template <int V>
__global__ void gatherKernel(float* __restrict__ dst, const float* __restrict__ src, const int32_t* __restrict__ idx,
                             int64_t dim) {
  const int64_t i = blockIdx.y;
  const float* s = src + int64_t(idx[i]) * dim;
  float* d = dst + i * dim;
  if constexpr (V == 4) {
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim / 4; c += int64_t(gridDim.x) * blockDim.x)
      reinterpret_cast<float4*>(d)[c] = reinterpret_cast<const float4*>(s)[c];
  } else {
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim; c += int64_t(gridDim.x) * blockDim.x)
      d[c] = s[c];
  }
}

// dst[idx[i]] += scale[i] * src[i]. The indices are distinct (the engine's compact lists), so
// no two blocks write one destination row and plain read-modify-write is safe.
template <int V>
__global__ void scatterAddKernel(float* __restrict__ dst, const float* __restrict__ src,
                                 const int32_t* __restrict__ idx, const float* __restrict__ scale, int64_t dim) {
  const int64_t i = blockIdx.y;
  float* d = dst + int64_t(idx[i]) * dim;
  const float* s = src + i * dim;
  const float a = scale ? scale[i] : 1.0f;
  if constexpr (V == 4) {
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim / 4; c += int64_t(gridDim.x) * blockDim.x) {
      float4 o = reinterpret_cast<float4*>(d)[c];
      const float4 v = reinterpret_cast<const float4*>(s)[c];
      o.x += a * v.x;
      o.y += a * v.y;
      o.z += a * v.z;
      o.w += a * v.w;
      reinterpret_cast<float4*>(d)[c] = o;
    }
  } else {
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim; c += int64_t(gridDim.x) * blockDim.x)
      d[c] += a * s[c];
  }
}

__global__ void kvWriteKernel(const KvSlot* __restrict__ slots, const float* __restrict__ k,
                              const float* __restrict__ v, int64_t width) {
  const int64_t r = blockIdx.y;
  const KvSlot slot = slots[r];
  const float* kr = k + r * width;
  const float* vr = v + r * width;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < width; c += int64_t(gridDim.x) * blockDim.x) {
    slot.k[c] = kr[c];
    slot.v[c] = vr[c];
  }
}

unsigned colBlocks(int64_t work) { return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceilDiv(work, kThreads), 32))); }

}  // namespace

void launchAddRows(cudaStream_t s, float* x, const float* y, int64_t n) {
  if (n <= 0) return;
  if (n % 4 == 0 && aligned16(x) && aligned16(y)) {
    const int64_t n4 = n / 4;
    addKernel4<<<unsigned(std::min<int64_t>(ceilDiv(n4, kThreads), 65535)), kThreads, 0, s>>>(
        reinterpret_cast<float4*>(x), reinterpret_cast<const float4*>(y), n4);
  } else {
    addKernel<<<unsigned(std::min<int64_t>(ceilDiv(n, kThreads), 65535)), kThreads, 0, s>>>(x, y, n);
  }
  CUDA_CHECK_LAUNCH();
}

void launchGatherRows(cudaStream_t s, float* dst, const float* src, const int32_t* idx, int64_t n, int64_t dim) {
  if (n <= 0 || dim <= 0) return;
  const bool v4 = dim % 4 == 0 && aligned16(dst) && aligned16(src);
  dim3 grid(colBlocks(v4 ? dim / 4 : dim), unsigned(n));
  if (v4) gatherKernel<4><<<grid, kThreads, 0, s>>>(dst, src, idx, dim);
  else gatherKernel<1><<<grid, kThreads, 0, s>>>(dst, src, idx, dim);
  CUDA_CHECK_LAUNCH();
}

void launchScatterAddRows(cudaStream_t s, float* dst, const float* src, const int32_t* idx, const float* scale,
                          int64_t n, int64_t dim) {
  if (n <= 0 || dim <= 0) return;
  const bool v4 = dim % 4 == 0 && aligned16(dst) && aligned16(src);
  dim3 grid(colBlocks(v4 ? dim / 4 : dim), unsigned(n));
  if (v4) scatterAddKernel<4><<<grid, kThreads, 0, s>>>(dst, src, idx, scale, dim);
  else scatterAddKernel<1><<<grid, kThreads, 0, s>>>(dst, src, idx, scale, dim);
  CUDA_CHECK_LAUNCH();
}

void launchKvWrite(cudaStream_t s, const KvSlot* slots, const float* k, const float* v, int64_t rows, int64_t width) {
  if (rows <= 0 || width <= 0) return;
  dim3 grid(colBlocks(width), unsigned(rows));
  kvWriteKernel<<<grid, kThreads, 0, s>>>(slots, k, v, width);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
