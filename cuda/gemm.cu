// Tiled matrix products for more than 8 rows (prefill, wide routed sets) and for shapes gemv
// does not take (K not a multiple of one 16-byte vector, unaligned rows). Both kernels gather
// their input rows through the row set's index list in the prologue and apply the epilogue
// (store, add, scatter-add with w / 1 - w) when writing, so no gather or scatter pass exists.
// Tiles past the set's size (read from device memory) exit at once.
//
//  * mma (bf16/f16 weights): 64x64 output tiles on the tensor cores with mma.sync m16n8k8 TF32.
//    bf16 and f16 weights are exact in TF32; x is split into hi = tf32(x) and lo = tf32(x - hi)
//    and both products are accumulated ("2xTF32"), so the result carries about f32 precision.
//    DEPTHGATE_CUDA_MMA=0 turns it off (the SIMT kernel runs instead).
//  * simt (f32 weights, or MMA off): 64x64 tiles in shared memory, 4x4 outputs per thread.
// Gate-up tiles interleave the two matrices row by row in the weight tile (even tile rows: gate,
// odd: up), so a thread's adjacent accumulator pair is (gate, up) of one output feature and the
// SiLU product is formed in registers. A tile then covers 32 output features.
// Later: cp.async multistage pipelines, ldmatrix, wgmma on sm_90a for prefill.
#include <cstdlib>
#include <cstring>

#include "matmul.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kTile = 64;

// Which weight row a tile row n (0..63) reads, for the block's first output `n0` (plain) or
// first feature `f0 = n0 / 2` (gate-up). Returns null when the row is past the matrix.
template <DType T>
__device__ __forceinline__ const void* weightRow(const MatArgs& a, int mat, int64_t n0, int n) {
  constexpr int64_t es = T == DType::F32 ? 4 : 2;
  if (a.gateUp) {
    const int64_t f = n0 / 2 + (n >> 1);
    if (f >= a.N[0]) return nullptr;
    return static_cast<const char*>(a.W[n & 1]) + f * a.K * es;
  }
  const int64_t r = n0 + n;
  if (r >= a.N[mat]) return nullptr;
  return static_cast<const char*>(a.W[mat]) + r * a.K * es;
}

// Block -> (matrix, first output) for plain and dual launches; gate-up uses matrix 0.
__device__ __forceinline__ void tileOf(const MatArgs& a, int& mat, int64_t& n0) {
  const int64_t tiles0 = a.gateUp ? ceilDiv(2 * a.N[0], kTile) : ceilDiv(a.N[0], kTile);
  const int64_t b = blockIdx.x;
  mat = (!a.gateUp && b >= tiles0) ? 1 : 0;
  n0 = (mat ? b - tiles0 : b) * kTile;
}

// One finished accumulator pair (columns n, n + 1 of the tile, n even) of set row m.
__device__ __forceinline__ void emitPair(const MatArgs& a, int mat, int64_t m, int64_t n0, int n, float v0, float v1) {
  if (a.gateUp) {
    const int64_t f = n0 / 2 + n / 2;
    if (f < a.N[0]) emitGateUp(a, m, f, v0, v1);
    return;
  }
  if (n0 + n < a.N[mat]) emitPlain(a, mat, m, n0 + n, v0);
  if (n0 + n + 1 < a.N[mat]) emitPlain(a, mat, m, n0 + n + 1, v1);
}

// ---- simt ----------------------------------------------------------------------------------

template <DType T>
__global__ void __launch_bounds__(256) simtKernel(const MatArgs a) {
  constexpr int BK = 16;
  __shared__ __align__(16) float As[BK][kTile + 4];  // [k][m]
  __shared__ __align__(16) float Bs[BK][kTile + 4];  // [k][n]
  const int64_t M = rowCount(a.count, a.maxRows);
  const int64_t m0 = int64_t(blockIdx.y) * kTile;
  if (m0 >= M) return;
  int mat;
  int64_t n0;
  tileOf(a, mat, n0);
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  // Each thread loads 4 (row, k) elements of each operand per K step: rows e / BK, k e % BK.
  const float* xrow[4];
  const void* wrow[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int rr = (t + i * 256) / BK;
    xrow[i] = m0 + rr < M ? a.x + rowAt(a.idx, m0 + rr) * a.ldx : nullptr;
    wrow[i] = weightRow<T>(a, mat, n0, rr);
  }
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
  for (int64_t k0 = 0; k0 < a.K; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int e = t + i * 256, rr = e / BK, kk = e % BK;
      const int64_t gk = k0 + kk;
      As[kk][rr] = (xrow[i] && gk < a.K) ? xrow[i][gk] : 0.f;
      Bs[kk][rr] = (wrow[i] && gk < a.K) ? loadElem<T>(wrow[i], gk) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
      const float4 av = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
      const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
      const float x4[4] = {av.x, av.y, av.z, av.w}, w4[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(x4[i], w4[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
    emitPair(a, mat, m, n0, tx * 4, acc[i][0], acc[i][1]);
    emitPair(a, mat, m, n0, tx * 4 + 2, acc[i][2], acc[i][3]);
  }
}

// ---- mma.sync TF32 ------------------------------------------------------------------------
// 4 warps, each a 32x32 piece of the 64x64 tile: 2 (m16) x 4 (n8) fragments. Fragment layouts
// of m16n8k8 .tf32 (PTX ISA, "Matrix Fragments for mma.m16n8k8"), g = lane / 4, c = lane % 4:
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
__global__ void __launch_bounds__(128) mmaKernel(const MatArgs a) {
  constexpr int BK = 32, LD = BK + 4;               // +4 floats: fragment reads hit 32 distinct banks
  __shared__ float Ahi[kTile][LD], Alo[kTile][LD];  // [m][k], TF32 bit patterns
  __shared__ float Bs[kTile][LD];                   // [n][k], exact in TF32
  const int64_t M = rowCount(a.count, a.maxRows);
  const int64_t m0 = int64_t(blockIdx.y) * kTile;
  if (m0 >= M) return;
  int mat;
  int64_t n0;
  tileOf(a, mat, n0);
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  const int g = lane / 4, c = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  // A thread loads tile rows rr = (t + i * 128) / BK = t / 32 + 4 i, at k = t % 32.
  const int kk = t % BK;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

  for (int64_t k0 = 0; k0 < a.K; k0 += BK) {
    const int64_t gk = k0 + kk;
#pragma unroll 4
    for (int i = 0; i < 16; i++) {
      const int rr = t / BK + 4 * i;
      const int64_t gm = m0 + rr;
      const float xv = (gm < M && gk < a.K) ? a.x[rowAt(a.idx, gm) * a.ldx + gk] : 0.f;
      const uint32_t hi = toTf32(xv);
      Ahi[rr][kk] = __uint_as_float(hi);
      Alo[rr][kk] = __uint_as_float(toTf32(xv - __uint_as_float(hi)));
      const void* wr = weightRow<T>(a, mat, n0, rr);
      Bs[rr][kk] = (wr && gk < a.K) ? loadElem<T>(wr, gk) : 0.f;
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
    for (int j = 0; j < 4; j++) {
      const int n = wn + j * 8 + 2 * c;  // even: (d0, d1) and (d2, d3) are column pairs
      const int64_t m = m0 + wm + i * 16 + g;
      if (m < M) emitPair(a, mat, m, n0, n, acc[i][j][0], acc[i][j][1]);
      if (m + 8 < M) emitPair(a, mat, m + 8, n0, n, acc[i][j][2], acc[i][j][3]);
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
void launchT(const Dev& d, const MatArgs& a) {
  const int64_t tiles = a.gateUp ? ceilDiv(2 * a.N[0], kTile) : ceilDiv(a.N[0], kTile) + ceilDiv(a.N[1], kTile);
  const int64_t rowTiles = ceilDiv(a.maxRows, kTile);
  if (tiles > int64_t(0x7fffffff) || rowTiles > 65535)
    throw Error(kErrUnsupported, "matmul: shape too large for the CUDA tiled kernels");
  const dim3 grid{unsigned(tiles), unsigned(rowTiles)};
  if constexpr (T != DType::F32) {
    if (mmaEnabled()) {
      mmaKernel<T><<<grid, 128, 0, d.stream>>>(a);
      return;
    }
  }
  simtKernel<T><<<grid, 256, 0, d.stream>>>(a);
}

}  // namespace

void launchGemm(const Dev& d, const MatArgs& a, DType t) {
  switch (t) {
    case DType::F32:
      launchT<DType::F32>(d, a);
      break;
    case DType::F16:
      launchT<DType::F16>(d, a);
      break;
    case DType::BF16:
      launchT<DType::BF16>(d, a);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
