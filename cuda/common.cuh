// Shared pieces of the CUDA backend: error mapping, dtype conversions that match native/tensor.h
// bit for bit, warp reductions, row-set helpers, and the launchers of every kernel family (one
// .cu file per family; cuda/README.md lists them).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "backend.h"
#include "errors.h"
#include "tensor.h"

namespace dg {
namespace cuda {

// Code for CUDA failures other than out-of-memory: a bad launch, a kernel fault (after which the
// context is unusable and every later call fails with the same sticky error), a lost device.
constexpr const char* kErrCuda = "ERR_DEPTHGATE_CUDA";

// Only cudaErrorMemoryAllocation becomes kErrMemory; everything else is kErrCuda, so a kernel
// fault is never reported as out-of-memory.
[[noreturn]] void throwCuda(cudaError_t e, const char* what, const char* file, int line);

#define CUDA_CHECK(expr)                                                                   \
  do {                                                                                     \
    cudaError_t dg_err_ = (expr);                                                          \
    if (dg_err_ != cudaSuccess) ::dg::cuda::throwCuda(dg_err_, #expr, __FILE__, __LINE__); \
  } while (0)
// After a launch: reports bad configurations at once (faults surface at the next sync).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

__host__ __device__ __forceinline__ int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// What a launcher needs to know about the device it launches on.
struct Dev {
  cudaStream_t stream = nullptr;
  int sms = 1;  // multiprocessors
};

// ---- device helpers ------------------------------------------------------------------------

// The number of rows of a RowSet, read where it lives (device memory), clamped like the CPU does.
__device__ __forceinline__ int64_t rowCount(const int32_t* count, int64_t max) {
  if (!count) return max;
  const int64_t c = *count;
  return c < 0 ? 0 : (c > max ? max : c);
}
__device__ __forceinline__ int64_t rowAt(const int32_t* idx, int64_t i) { return idx ? int64_t(idx[i]) : i; }

__device__ __forceinline__ float bf16Bits(uint32_t h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16Bits(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

// f32 -> bf16 / f16, the same integer recipes as tensor.h / cpu/convert.cc (round to nearest
// even, NaN kept quiet with its sign and top payload bits), so both backends write identical
// cache bytes.
__device__ __forceinline__ uint16_t toBf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
__device__ __forceinline__ uint16_t toF16(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {
    const uint32_t e = a >> 23;
    const uint32_t shift = 126 - e;
    if (e == 0 || shift > 24) return sign;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) r++;
    return uint16_t(sign | r);
  }
  uint32_t h = ((a >> 23) - 112) << 10 | ((a >> 13) & 0x3ffu);
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return uint16_t(sign | h);
}

// One element of dtype T at base[i], as f32 (read-only path).
template <DType T>
__device__ __forceinline__ float loadElem(const void* base, int64_t i) {
  if constexpr (T == DType::F32) {
    return __ldg(static_cast<const float*>(base) + i);
  } else {
    const uint32_t h = __ldg(static_cast<const unsigned short*>(base) + i);
    return T == DType::BF16 ? bf16Bits(h) : f16Bits(h);
  }
}
template <DType T>
__device__ __forceinline__ void storeElem(void* base, int64_t i, float v) {
  if constexpr (T == DType::F32)
    static_cast<float*>(base)[i] = v;
  else if constexpr (T == DType::BF16)
    static_cast<uint16_t*>(base)[i] = toBf16(v);
  else
    static_cast<uint16_t*>(base)[i] = toF16(v);
}

// Elements of dtype T in one 16-byte vector.
template <DType T>
struct Vec16 {
  static constexpr int n = T == DType::F32 ? 4 : 8;
};

// Widens one 16-byte vector of T into f32.
template <DType T>
__device__ __forceinline__ void widen16(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    if constexpr (T == DType::F32) {
      f[i] = __uint_as_float(w[i]);
    } else if constexpr (T == DType::BF16) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      f[2 * i] = f16Bits(w[i] & 0xffffu);
      f[2 * i + 1] = f16Bits(w[i] >> 16);
    }
  }
}

// A 16-byte load that bypasses L1 (weights are read once per step).
__device__ __forceinline__ uint4 ldgStream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
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
// Max over the warp. Callers pass no NaN (they track NaN separately: fmaxf would drop it).
__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// SiLU(g) * u as the CPU writes it (g / (1 + exp(-g)) * u: -0 for very negative g).
__device__ __forceinline__ float siluMul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// ---- launchers (stream-ordered, asynchronous; they throw dg::Error on bad shapes and launch
// errors). Pointers are device memory. See backend.h for each op's meaning.

// matmul.cu (dispatch to gemv.cu for <= 8 rows, gemm.cu otherwise)
void launchMatmul(const Dev& d, float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W,
                  const float* bias, const Epilogue& ep);
void launchMatmul2(const Dev& d, float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx,
                   RowSet rows, const Weight& W0, const float* b0, const Weight& W1, const float* b1);
// upScratch: [rows.max, Wu.rows] floats, used only when gateUpNeedsScratch().
void launchGateUp(const Dev& d, float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                  const float* bg, const Weight& Wu, const float* bu, float* upScratch);
bool gateUpNeedsScratch(const Weight& Wg, const Weight& Wu);

// attention.cu
size_t attentionScratchBytes(const Dev& d, RowSet rows, const AttnShape& a);
void launchAttention(const Dev& d, float* out, const float* q, RowSet rows, const StepRows& step, int layer,
                     const AttnShape& a, void* scratch);

// rope_kv.cu
void launchKvWriteRope(const Dev& d, float* k, const float* v, const StepRows& step, int layer, const AttnShape& a,
                       const float* invFreq);
void launchRopeRows(const Dev& d, float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                    const float* invFreq);

// rows.cu. rmsnorm in place with an index list goes through `tmp` ([rows.max, dim] floats).
void launchEmbed(const Dev& d, float* x, const int32_t* tokens, int64_t rows, const Weight& table);
void launchRmsnorm(const Dev& d, float* out, const float* x, RowSet rows, int64_t dim, const float* w, float eps,
                   float* tmp);
bool rmsnormNeedsScratch(const float* out, const float* x, RowSet rows);
void launchTanhRows(const Dev& d, float* x, RowSet rows, int64_t dim);
void launchSiluMulRows(const Dev& d, float* gate, int64_t ldg, const float* up, int64_t ldu, RowSet rows, int64_t n);

// routing.cu
void launchRouteThreshold(const Dev& d, uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits,
                          int64_t rows, float threshold);
void launchRouteArgmax(const Dev& d, uint8_t* run, const float* logits, int64_t rows);
void launchCompact(const Dev& d, const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount,
                   int32_t* skipIdx, int32_t* skipCount);

// sampling.cu
size_t sampleScratchBytes(int64_t rows, int64_t vocab);
void launchSample(const Dev& d, int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
                  const PenaltyToken* penalties, void* scratch);

}  // namespace cuda
}  // namespace dg
