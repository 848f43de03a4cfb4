// out[r, o] = sum_i x[r, i] * W[o, i] (+ bias[o]); x f32 [rows, K] (stride ldx), W [N, K] in its
// stored dtype (f32/f16/bf16), out f32 [rows, N] (stride ldo). Accumulation is f32 throughout.
//
// Three kernels, picked per call:
//  * gemv (rows <= 8; W 16-byte aligned, K a multiple of one 16-byte vector, x rows aligned):
//    the bandwidth-bound decode case. One warp per output feature streams its W row once with
//    128-bit read-only loads, widens in registers, and multiplies it against all <= 8 x rows
//    (templated on 1/2/4/8 so the accumulators stay in registers); warp-shuffle reduction.
//  * mma (rows > 8, bf16/f16 weights): 64x64 output tiles on the tensor cores with
//    mma.sync m16n8k8 TF32. bf16 and f16 weights are exact in TF32; x is split into
//    hi = tf32(x) and lo = tf32(x - hi) and both products are accumulated ("2xTF32"), so the
//    result carries about f32 precision rather than TF32's 10 mantissa bits.
//    DEPTHGATE_CUDA_MMA=0 in the environment turns it off (then the SIMT kernel runs).
//  * simt (everything else: f32 weights, odd shapes/alignment): 64x64 tiles in shared memory,
//    4x4 outputs per thread, scalar guarded loads, so it accepts any shape and alignment.
// Later: split-K for short-and-wide shapes (K/V projections), cp.async/TMA multistage pipelines,
// a wgmma path for sm_90a prefill, gather/scatter fused into prologue/epilogue (kernels.md 5.2).
#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// gemv

constexpr int kGemvWarps = 4;

template <DType T, int R>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemvKernel(float* __restrict__ out, int64_t ldo, const float* __restrict__ x, int64_t ldx, int rows,
               const void* __restrict__ W, int64_t N, int64_t K, const float* __restrict__ bias) {
  constexpr int E = Vec16<T>::n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t o = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (o >= N) return;
  const int64_t nv = K / E;  // 16-byte vectors per W row
  const uint4* wr = static_cast<const uint4*>(W) + o * nv;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
#pragma unroll 4
  for (int64_t c = lane; c < nv; c += 32) {
    const uint4 wv = __ldg(wr + c);
    float wf[E];
    widen16<T>(wv, wf);
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (r < rows) {
        const float4* xr = reinterpret_cast<const float4*>(x + r * ldx + c * E);
#pragma unroll
        for (int q = 0; q < E / 4; q++) {
          const float4 xv = xr[q];
          acc[r] = fmaf(wf[4 * q], xv.x, acc[r]);
          acc[r] = fmaf(wf[4 * q + 1], xv.y, acc[r]);
          acc[r] = fmaf(wf[4 * q + 2], xv.z, acc[r]);
          acc[r] = fmaf(wf[4 * q + 3], xv.w, acc[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = warpSum(acc[r]);
  if (lane == 0) {
    const float b = bias ? bias[o] : 0.f;
#pragma unroll
    for (int r = 0; r < R; r++)
      if (r < rows) out[r * ldo + o] = acc[r] + b;
  }
}

template <DType T>
void gemv(cudaStream_t s, float* out, int64_t ldo, const float* x, int64_t ldx, int rows, const Weight& W,
          const float* bias) {
  const unsigned grid = unsigned(ceilDiv(W.rows, kGemvWarps));
  const int threads = kGemvWarps * 32;
  if (rows == 1) gemvKernel<T, 1><<<grid, threads, 0, s>>>(out, ldo, x, ldx, rows, W.data, W.rows, W.cols, bias);
  else if (rows == 2) gemvKernel<T, 2><<<grid, threads, 0, s>>>(out, ldo, x, ldx, rows, W.data, W.rows, W.cols, bias);
  else if (rows <= 4) gemvKernel<T, 4><<<grid, threads, 0, s>>>(out, ldo, x, ldx, rows, W.data, W.rows, W.cols, bias);
  else gemvKernel<T, 8><<<grid, threads, 0, s>>>(out, ldo, x, ldx, rows, W.data, W.rows, W.cols, bias);
}

// ---------------------------------------------------------------------------------------------
// simt tiles

constexpr int kTile = 64;

template <DType T>
__global__ void __launch_bounds__(256)
    simtKernel(float* __restrict__ out, int64_t ldo, const float* __restrict__ x, int64_t ldx, int64_t M,
               const void* __restrict__ W, int64_t N, int64_t K, const float* __restrict__ bias) {
  constexpr int BK = 16;
  __shared__ __align__(16) float As[BK][kTile + 4];  // [k][m]
  __shared__ __align__(16) float Bs[BK][kTile + 4];  // [k][n]
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int e = t + i * 256, rr = e / BK, kk = e % BK;
      const int64_t gk = k0 + kk, gm = m0 + rr, gn = n0 + rr;
      As[kk][rr] = (gm < M && gk < K) ? x[gm * ldx + gk] : 0.f;
      Bs[kk][rr] = (gn < N && gk < K) ? loadW<T>(W, gn * K + gk) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
      const float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int64_t n = n0 + tx * 4 + j;
      if (n < N) out[m * ldo + n] = acc[i][j] + (bias ? bias[n] : 0.f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// mma.sync TF32 tiles (sm_80+). 4 warps, each a 32x32 piece of the 64x64 tile: 2 (m16) x 4 (n8)
// fragments. Fragment layouts of m16n8k8 .tf32 (PTX ISA, "Matrix Fragments for mma.m16n8k8"),
// with g = lane / 4 and c = lane % 4:
//   A (16x8, row): a0 (g, c), a1 (g+8, c), a2 (g, c+4), a3 (g+8, c+4)
//   B (8x8, col):  b0 (k=c, n=g), b1 (k=c+4, n=g)
//   D (16x8):      d0 (g, 2c), d1 (g, 2c+1), d2 (g+8, 2c), d3 (g+8, 2c+1)

__device__ __forceinline__ uint32_t toTf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
  return r;
}

__device__ __forceinline__ void mmaTf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <DType T>
__global__ void __launch_bounds__(128)
    mmaKernel(float* __restrict__ out, int64_t ldo, const float* __restrict__ x, int64_t ldx, int64_t M,
              const void* __restrict__ W, int64_t N, int64_t K, const float* __restrict__ bias) {
  constexpr int BK = 32, LD = BK + 4;  // +4 floats: fragment reads hit 32 distinct banks
  __shared__ float Ahi[kTile][LD], Alo[kTile][LD];  // [m][k], TF32 bit patterns
  __shared__ float Bs[kTile][LD];                   // [n][k], exact in TF32
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  const int g = lane / 4, c = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    // 64 x 32 elements of each operand, 16 per thread; a warp reads 32 consecutive k of a row.
#pragma unroll 4
    for (int i = 0; i < 16; i++) {
      const int e = t + i * 128, rr = e / BK, kk = e % BK;
      const int64_t gk = k0 + kk, gm = m0 + rr, gn = n0 + rr;
      const float xv = (gm < M && gk < K) ? x[gm * ldx + gk] : 0.f;
      const uint32_t hi = toTf32(xv);
      Ahi[rr][kk] = __uint_as_float(hi);
      Alo[rr][kk] = __uint_as_float(toTf32(xv - __uint_as_float(hi)));
      Bs[rr][kk] = (gn < N && gk < K) ? loadW<T>(W, gn * K + gk) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k8 = 0; k8 < BK; k8 += 8) {
      uint32_t ah[2][4], al[2][4];
#pragma unroll
      for (int i = 0; i < 2; i++) {
        const int r = wm + i * 16 + g;
        ah[i][0] = __float_as_uint(Ahi[r][k8 + c]);
        ah[i][1] = __float_as_uint(Ahi[r + 8][k8 + c]);
        ah[i][2] = __float_as_uint(Ahi[r][k8 + c + 4]);
        ah[i][3] = __float_as_uint(Ahi[r + 8][k8 + c + 4]);
        al[i][0] = __float_as_uint(Alo[r][k8 + c]);
        al[i][1] = __float_as_uint(Alo[r + 8][k8 + c]);
        al[i][2] = __float_as_uint(Alo[r][k8 + c + 4]);
        al[i][3] = __float_as_uint(Alo[r + 8][k8 + c + 4]);
      }
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int n = wn + j * 8 + g;
        const uint32_t b0 = __float_as_uint(Bs[n][k8 + c]), b1 = __float_as_uint(Bs[n][k8 + c + 4]);
#pragma unroll
        for (int i = 0; i < 2; i++) {
          mmaTf32(acc[i][j], al[i], b0, b1);  // small terms first
          mmaTf32(acc[i][j], ah[i], b0, b1);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int q = 0; q < 4; q++) {
        const int64_t m = m0 + wm + i * 16 + g + (q >= 2 ? 8 : 0);
        const int64_t n = n0 + wn + j * 8 + 2 * c + (q & 1);
        if (m < M && n < N) out[m * ldo + n] = acc[i][j][q] + (bias ? bias[n] : 0.f);
      }
}

bool mmaEnabled() {
  static const bool on = [] {
    const char* e = std::getenv("DEPTHGATE_CUDA_MMA");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

template <DType T>
void tiled(cudaStream_t s, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
           const float* bias) {
  dim3 grid(unsigned(ceilDiv(W.rows, kTile)), unsigned(ceilDiv(rows, kTile)));
  if constexpr (T != DType::F32) {
    if (mmaEnabled()) {
      mmaKernel<T><<<grid, 128, 0, s>>>(out, ldo, x, ldx, rows, W.data, W.rows, W.cols, bias);
      return;
    }
  }
  simtKernel<T><<<grid, 256, 0, s>>>(out, ldo, x, ldx, rows, W.data, W.rows, W.cols, bias);
}

template <DType T>
void dispatch(cudaStream_t s, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
              const float* bias) {
  constexpr int E = Vec16<T>::n;
  const bool vec = W.cols % E == 0 && aligned16(W.data) && aligned16(x) && (rows == 1 || ldx % 4 == 0);
  if (rows <= 8 && vec) gemv<T>(s, out, ldo, x, ldx, int(rows), W, bias);
  else tiled<T>(s, out, ldo, x, ldx, rows, W, bias);
}

}  // namespace

void launchMatmul(cudaStream_t s, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
                  const Weight& W, const float* bias) {
  if (rows <= 0 || W.rows <= 0) return;
  if (W.cols <= 0) {  // empty dot products: out = bias (or 0)
    throw Error(kErrArg, "matmul with a weight of zero input features");
  }
  if (rows > int64_t(65535) * kTile || ceilDiv(W.rows, kGemvWarps) > int64_t(0x7fffffff))
    throw Error(kErrUnsupported, "matmul shape too large for the CUDA kernels");
  switch (W.dtype) {
    case DType::F32: dispatch<DType::F32>(s, out, ldo, x, ldx, rows, W, bias); break;
    case DType::F16: dispatch<DType::F16>(s, out, ldo, x, ldx, rows, W, bias); break;
    case DType::BF16: dispatch<DType::BF16>(s, out, ldo, x, ldx, rows, W, bias); break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
