// Matrix-vector products for up to 8 rows (decode): the bandwidth-bound case, where the cost is
// streaming the weights from memory once.
//
// A block is 8 warps. KS warps share one output feature, each taking a contiguous slice of K
// (split-K inside the block: the KS partial sums are added in a fixed order through shared
// memory, so results do not depend on scheduling), and a block covers 8 / KS outputs. KS is
// chosen so that short-and-wide shapes (K and V projections, N = 1024) still put enough warps
// on every multiprocessor. Each lane streams 16-byte weight vectors with loads that bypass L1,
// U of them issued back to back before any is used (several loads in flight per lane), widens
// them in registers and multiplies them against the R input rows.
//
// The inner loop has no branch: rows past the set's size (read from device memory) are
// redirected to a row that exists and their sums are dropped at the end, so R = 1 streams the
// weights with nothing between the loads.
#include "matmul.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kWarps = 8;

template <DType T, int R>
__device__ __forceinline__ void dotVec(float (&acc)[R], const uint4& w, const float* const (&xr)[R], int64_t col) {
  constexpr int E = Vec16<T>::n;
  float f[E];
  widen16<T>(w, f);
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float4* xp = reinterpret_cast<const float4*>(xr[r] + col);
#pragma unroll
    for (int q = 0; q < E / 4; q++) {
      const float4 xv = __ldg(xp + q);
      acc[r] = fmaf(f[4 * q], xv.x, acc[r]);
      acc[r] = fmaf(f[4 * q + 1], xv.y, acc[r]);
      acc[r] = fmaf(f[4 * q + 2], xv.z, acc[r]);
      acc[r] = fmaf(f[4 * q + 3], xv.w, acc[r]);
    }
  }
}

template <DType T, int R, int KS, bool GU>
__global__ void __launch_bounds__(kWarps * 32) gemvKernel(const MatArgs a) {
  constexpr int E = Vec16<T>::n;
  constexpr int OPB = kWarps / KS;  // outputs per block
  // 16-byte weight loads in flight per lane (fewer where each feeds more x rows, to stay in registers).
  constexpr int U = (R == 1 ? 8 : R == 2 ? (T == DType::F32 ? 4 : 8) : R <= 4 ? 4 : 2) / (GU ? 2 : 1);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = rowCount(a.count, a.maxRows);
  if (n <= 0) return;  // uniform over the block, before any barrier
  const int64_t total = GU ? a.N[0] : a.N[0] + a.N[1];
  const int64_t o = int64_t(blockIdx.x) * OPB + warp / KS;
  const bool live = o < total;
  const int mat = (!GU && o >= a.N[0]) ? 1 : 0;
  const int64_t orow = mat ? o - a.N[0] : o;
  const int64_t nv = a.K / E;
  const int slice = warp % KS;
  const int64_t v0 = nv * slice / KS, v1 = nv * (slice + 1) / KS;

  const float* xr[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int64_t rr = r < n ? r : n - 1;
    xr[r] = a.x + rowAt(a.idx, rr) * a.ldx;
  }
  float acc[R], acc2[R], accU[GU ? R : 1];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = acc2[r] = 0.f;
#pragma unroll
  for (int r = 0; r < (GU ? R : 1); r++) accU[r] = 0.f;

  if (live) {
    const uint4* w0 = static_cast<const uint4*>(a.W[mat]) + orow * nv;
    const uint4* w1 = GU ? static_cast<const uint4*>(a.W[1]) + o * nv : w0;
    int64_t c = v0 + lane;
    for (; c + 32 * (U - 1) < v1; c += 32 * U) {
      uint4 wv[U], wu[GU ? U : 1];
#pragma unroll
      for (int u = 0; u < U; u++) {
        wv[u] = ldgStream(w0 + c + 32 * u);
        if constexpr (GU) wu[u] = ldgStream(w1 + c + 32 * u);
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        if constexpr (GU) {
          dotVec<T, R>(acc, wv[u], xr, (c + 32 * u) * E);
          dotVec<T, R>(accU, wu[u], xr, (c + 32 * u) * E);
        } else {
          // For one or two rows, two accumulator chains (even and odd vectors) halve the FMA
          // dependency chain; more rows are independent chains already.
          dotVec<T, R>((R <= 2 && (u & 1)) ? acc2 : acc, wv[u], xr, (c + 32 * u) * E);
        }
      }
    }
    for (; c < v1; c += 32) {
      dotVec<T, R>(acc, ldgStream(w0 + c), xr, c * E);
      if constexpr (GU) dotVec<T, R>(accU, ldgStream(w1 + c), xr, c * E);
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = warpSum(acc[r] + acc2[r]);
  if constexpr (GU) {
#pragma unroll
    for (int r = 0; r < R; r++) accU[r] = warpSum(accU[r]);
  }

  if constexpr (KS == 1) {
    if (live && lane == 0) {
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (r < n) {
          if constexpr (GU)
            emitGateUp(a, r, o, acc[r], accU[r]);
          else
            emitPlain(a, mat, r, orow, acc[r]);
        }
      }
    }
  } else {
    __shared__ float part[kWarps][GU ? 2 * R : R];
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < R; r++) {
        part[warp][r] = acc[r];
        if constexpr (GU) part[warp][R + r] = accU[r];
      }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < OPB * R; t += kWarps * 32) {
      const int oo = t / R, r = t % R;
      const int64_t ot = int64_t(blockIdx.x) * OPB + oo;
      if (ot >= total || r >= n) continue;
      float s = 0.f, su = 0.f;
#pragma unroll
      for (int k = 0; k < KS; k++) {
        s += part[oo * KS + k][r];
        if constexpr (GU) su += part[oo * KS + k][R + r];
      }
      if constexpr (GU) {
        emitGateUp(a, r, ot, s, su);
      } else {
        const int m = ot >= a.N[0] ? 1 : 0;
        emitPlain(a, m, r, m ? ot - a.N[0] : ot, s);
      }
    }
  }
}

// Warps per output: enough warps in all for about half the resident-warp capacity of the GPU,
// while each warp's slice keeps at least two vectors per lane.
int chooseKs(int64_t outputs, int64_t nv, int sms) {
  const int64_t target = int64_t(sms) * 32;
  int ks = 1;
  while (ks < 4 && outputs * ks < target && nv / (2 * ks) >= 64) ks *= 2;
  return ks;
}

template <DType T, int R, bool GU>
void launchR(const Dev& d, const MatArgs& a, int ks) {
  const int64_t total = GU ? a.N[0] : a.N[0] + a.N[1];
  const int opb = kWarps / ks;
  const int64_t blocks = ceilDiv(total, opb);
  if (blocks > int64_t(0x7fffffff)) throw Error(kErrUnsupported, "matmul: too many outputs for the CUDA gemv kernel");
  const dim3 grid{unsigned(blocks)}, block{unsigned(kWarps * 32)};
  switch (ks) {
    case 1:
      gemvKernel<T, R, 1, GU><<<grid, block, 0, d.stream>>>(a);
      break;
    case 2:
      gemvKernel<T, R, 2, GU><<<grid, block, 0, d.stream>>>(a);
      break;
    default:
      gemvKernel<T, R, 4, GU><<<grid, block, 0, d.stream>>>(a);
      break;
  }
}

template <DType T, bool GU>
void launchT(const Dev& d, const MatArgs& a) {
  const int64_t total = GU ? a.N[0] : a.N[0] + a.N[1];
  const int ks = chooseKs(total, a.K / Vec16<T>::n, d.sms);
  if (a.maxRows == 1)
    launchR<T, 1, GU>(d, a, ks);
  else if (a.maxRows == 2)
    launchR<T, 2, GU>(d, a, ks);
  else if (a.maxRows <= 4)
    launchR<T, 4, GU>(d, a, ks);
  else
    launchR<T, 8, GU>(d, a, ks);
}

template <DType T>
void launchDtype(const Dev& d, const MatArgs& a) {
  if (a.gateUp)
    launchT<T, true>(d, a);
  else
    launchT<T, false>(d, a);
}

}  // namespace

bool gemvFits(const MatArgs& a, DType t) {
  const int64_t e = t == DType::F32 ? 4 : 8;
  if (a.maxRows < 1 || a.maxRows > 8 || a.K % e != 0) return false;
  if (!aligned16(a.x) || a.ldx % 4 != 0) return false;
  for (int m = 0; m < 2; m++)
    if (a.N[m] > 0 && !aligned16(a.W[m])) return false;
  return true;
}

void launchGemv(const Dev& d, const MatArgs& a, DType t) {
  switch (t) {
    case DType::F32:
      launchDtype<DType::F32>(d, a);
      break;
    case DType::F16:
      launchDtype<DType::F16>(d, a);
      break;
    case DType::BF16:
      launchDtype<DType::BF16>(d, a);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
