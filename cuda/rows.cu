// Row-wise ops: embedding lookup, RMSNorm over a row set, tanh over a row set, and the SwiGLU
// product for the unfused gate-up fallback. Row counts and indices are read on the device; the
// grid is sized for the set's bound and blocks past the count exit at once.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// x[r] = table[tokens[r]] widened to f32. A token outside the table gives a row of NaN instead
// of reading out of bounds (the engine validates ids; this only keeps a bug from faulting).
template <DType T>
__global__ void embedKernel(float* __restrict__ x, const int32_t* __restrict__ tokens, const void* __restrict__ table,
                            int64_t vocab, int64_t cols) {
  const int64_t r = blockIdx.y;
  const int64_t t = tokens[r];
  float* out = x + r * cols;
  const bool ok = t >= 0 && t < vocab;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x)
    out[c] = ok ? loadElem<T>(table, t * cols + c) : NAN;
}

// HF LlamaRMSNorm as native/cpu/norm.cc computes it: the sum of squares in double, the mean
// rounded once to f32, inv = 1 / sqrtf(mean + eps), out = w * (x * inv). Only the order of the
// double additions differs from the CPU, which almost never changes the rounded mean.
// out row i <- x row idx[i]; out may equal x when there is no index list.
__global__ void __launch_bounds__(kThreads)
    rmsnormKernel(float* out, const float* x, int64_t maxRows, const int32_t* __restrict__ count,
                  const int32_t* __restrict__ idx, int64_t dim, const float* __restrict__ w, float eps) {
  const int64_t i = blockIdx.x;
  if (i >= rowCount(count, maxRows)) return;
  const float* xr = x + rowAt(idx, i) * dim;
  float* orow = out + i * dim;
  double sum = 0;
  for (int64_t e = threadIdx.x; e < dim; e += kThreads) {
    const double v = xr[e];
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
    if (lane == 0) invShared = 1.0f / sqrtf(float(s / double(dim)) + eps);
  }
  __syncthreads();
  const float inv = invShared;
  for (int64_t e = threadIdx.x; e < dim; e += kThreads) orow[e] = __fmul_rn(w[e], __fmul_rn(xr[e], inv));
}

// dst row i <- src row i for the rows of the set (the second half of an in-place gathered norm).
__global__ void copyRowsKernel(float* __restrict__ dst, const float* __restrict__ src, int64_t maxRows,
                               const int32_t* __restrict__ count, int64_t dim) {
  const int64_t i = blockIdx.y;
  if (i >= rowCount(count, maxRows)) return;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < dim; e += int64_t(gridDim.x) * blockDim.x)
    dst[i * dim + e] = src[i * dim + e];
}

// x[idx[i]] = tanh(x[idx[i]]): in place on the set's rows, as CpuOps::tanhRows.
__global__ void tanhRowsKernel(float* x, int64_t maxRows, const int32_t* __restrict__ count,
                               const int32_t* __restrict__ idx, int64_t dim) {
  const int64_t i = blockIdx.y;
  if (i >= rowCount(count, maxRows)) return;
  float* row = x + rowAt(idx, i) * dim;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < dim; e += int64_t(gridDim.x) * blockDim.x)
    row[e] = tanhf(row[e]);
}

__global__ void siluMulRowsKernel(float* gate, int64_t ldg, const float* __restrict__ up, int64_t ldu, int64_t maxRows,
                                  const int32_t* __restrict__ count, int64_t n) {
  const int64_t i = blockIdx.y;
  if (i >= rowCount(count, maxRows)) return;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    gate[i * ldg + e] = siluMul(gate[i * ldg + e], up[i * ldu + e]);
}

unsigned colBlocks(int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceilDiv(n, kThreads), 32))); }

void checkRows(int64_t rows, const char* op) {
  if (rows > 65535) throw Error(kErrUnsupported, std::string(op) + ": more than 65535 rows in one call");
}

}  // namespace

void launchEmbed(const Dev& d, float* x, const int32_t* tokens, int64_t rows, const Weight& t) {
  if (rows <= 0 || t.cols <= 0) return;
  checkRows(rows, "embed");
  if (!t.data) throw Error(kErrArg, "embed: the table has no device data");
  const dim3 grid(colBlocks(t.cols), unsigned(rows));
  switch (t.dtype) {
    case DType::F32:
      embedKernel<DType::F32><<<grid, kThreads, 0, d.stream>>>(x, tokens, t.data, t.rows, t.cols);
      break;
    case DType::F16:
      embedKernel<DType::F16><<<grid, kThreads, 0, d.stream>>>(x, tokens, t.data, t.rows, t.cols);
      break;
    case DType::BF16:
      embedKernel<DType::BF16><<<grid, kThreads, 0, d.stream>>>(x, tokens, t.data, t.rows, t.cols);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

bool rmsnormNeedsScratch(const float* out, const float* x, RowSet rows) { return rows.idx && out == x; }

void launchRmsnorm(const Dev& d, float* out, const float* x, RowSet rows, int64_t dim, const float* w, float eps,
                   float* tmp) {
  if (rows.max <= 0 || dim <= 0) return;
  if (rows.max > int64_t(0x7fffffff)) throw Error(kErrUnsupported, "rmsnorm: too many rows");
  if (rmsnormNeedsScratch(out, x, rows)) {
    // In place with an index list: blocks would overwrite rows others still read. Normalise
    // into scratch, then copy the set's rows back.
    if (!tmp) throw Error(kErrArg, "rmsnorm: no scratch for the in-place gather");
    checkRows(rows.max, "rmsnorm");
    rmsnormKernel<<<unsigned(rows.max), kThreads, 0, d.stream>>>(tmp, x, rows.max, rows.count, rows.idx, dim, w, eps);
    CUDA_CHECK_LAUNCH();
    copyRowsKernel<<<dim3(colBlocks(dim), unsigned(rows.max)), kThreads, 0, d.stream>>>(out, tmp, rows.max, rows.count,
                                                                                        dim);
    CUDA_CHECK_LAUNCH();
    return;
  }
  rmsnormKernel<<<unsigned(rows.max), kThreads, 0, d.stream>>>(out, x, rows.max, rows.count, rows.idx, dim, w, eps);
  CUDA_CHECK_LAUNCH();
}

void launchTanhRows(const Dev& d, float* x, RowSet rows, int64_t dim) {
  if (rows.max <= 0 || dim <= 0) return;
  checkRows(rows.max, "tanhRows");
  tanhRowsKernel<<<dim3(colBlocks(dim), unsigned(rows.max)), kThreads, 0, d.stream>>>(x, rows.max, rows.count, rows.idx,
                                                                                      dim);
  CUDA_CHECK_LAUNCH();
}

void launchSiluMulRows(const Dev& d, float* gate, int64_t ldg, const float* up, int64_t ldu, RowSet rows, int64_t n) {
  if (rows.max <= 0 || n <= 0) return;
  checkRows(rows.max, "matmulGateUp");
  siluMulRowsKernel<<<dim3(colBlocks(n), unsigned(rows.max)), kThreads, 0, d.stream>>>(gate, ldg, up, ldu, rows.max,
                                                                                       rows.count, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
