// Shared pieces of the CUDA backend: error checking, dtype loads, reductions, launch helpers.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "backend.h"
#include "errors.h"
#include "tensor.h"

namespace dg {
namespace cuda {

// Code for CUDA runtime failures other than out-of-memory (a launch error, a lost device).
constexpr const char* kErrCuda = "ERR_DEPTHGATE_CUDA";

[[noreturn]] void throwCuda(cudaError_t e, const char* expr, const char* file, int line);

#define CUDA_CHECK(expr)                                                             \
  do {                                                                               \
    cudaError_t dg_err_ = (expr);                                                    \
    if (dg_err_ != cudaSuccess) ::dg::cuda::throwCuda(dg_err_, #expr, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: reports bad launch configurations at once (asynchronous faults surface
// at the next synchronizing call).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Scalar loads of one stored-dtype element, as f32 (same conversions as tensor.h).
__device__ __forceinline__ float bf16Bits(uint32_t h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16Bits(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

template <DType T>
__device__ __forceinline__ float loadW(const void* base, int64_t i) {
  if constexpr (T == DType::F32) {
    return __ldg(static_cast<const float*>(base) + i);
  } else {
    uint32_t h = __ldg(static_cast<const unsigned short*>(base) + i);
    return T == DType::BF16 ? bf16Bits(h) : f16Bits(h);
  }
}

// Elements of dtype T in one 16-byte vector.
template <DType T>
struct Vec16 {
  static constexpr int n = T == DType::F32 ? 4 : 8;
};

// Widens one 16-byte vector of T into f32.
template <DType T>
__device__ __forceinline__ void widen16(const uint4& v, float* f) {
  if constexpr (T == DType::F32) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  } else {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      if constexpr (T == DType::BF16) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      } else {
        f[2 * i] = f16Bits(w[i] & 0xffffu);
        f[2 * i + 1] = f16Bits(w[i] >> 16);
      }
    }
  }
}

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warpSumD(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Launchers, one per file (stream-ordered, asynchronous; they throw on launch errors).
void launchEmbed(cudaStream_t s, float* x, const int32_t* tokensDev, int64_t rows, const Weight& table);
void launchRmsnorm(cudaStream_t s, float* out, const float* x, int64_t rows, int64_t dim, const float* w, float eps);
void launchMatmul(cudaStream_t s, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
                  const Weight& W, const float* bias);
void launchRope(cudaStream_t s, float* x, int64_t ldx, int64_t rows, const int32_t* positionsDev, int nHeads,
                int headDim, const float* invFreq);
void launchAttention(cudaStream_t s, float* out, const float* q, const AttnRow* rowsDev, int64_t nRows, int nHeads,
                     int nKv, int headDim, int window);
void launchSiluMul(cudaStream_t s, float* gate, const float* up, int64_t rows, int64_t n);
void launchTanh(cudaStream_t s, float* x, int64_t n);
void launchAddRows(cudaStream_t s, float* x, const float* y, int64_t n);
void launchGatherRows(cudaStream_t s, float* dst, const float* src, const int32_t* idxDev, int64_t n, int64_t dim);
void launchScatterAddRows(cudaStream_t s, float* dst, const float* src, const int32_t* idxDev,
                          const float* scaleDev, int64_t n, int64_t dim);
void launchKvWrite(cudaStream_t s, const KvSlot* slotsDev, const float* k, const float* v, int64_t rows,
                   int64_t width);

}  // namespace cuda
}  // namespace dg
