// Rotary position embedding (HF rotate-half: element e pairs with e + headDim/2) and the K/V
// cache write (native/cpu/rope.cc and CpuOps::kvWriteRope semantics).
//
// One block per row: the row's cos/sin table is formed once in shared memory with the angle in
// double (as the CPU does: at position 100k an f32 product loses the bits cos/sin need), then
// every (head, e) pair is rotated. The rotation is rounded like the CPU's (separate multiply
// and subtract, no fused multiply-add), so both backends rotate to the same f32 values as far
// as cos/sin agree. kvWriteRope rotates K in place, then writes the rotated K row and the V row
// into the row's sequence cache at (layer, pos), rounded once to the cache dtype; positions
// outside [0, capacity) are not written (the engine never asks for them; a bad one must not
// corrupt memory).
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__device__ void buildTable(float* cosT, float* sinT, int half, int32_t pos, const float* __restrict__ invFreq) {
  for (int e = threadIdx.x; e < half; e += kThreads) {
    double s, c;
    sincos(double(pos) * double(invFreq[e]), &s, &c);
    cosT[e] = float(c);
    sinT[e] = float(s);
  }
}

__device__ void rotateRow(float* row, int nHeads, int headDim, const float* cosT, const float* sinT) {
  const int half = headDim / 2;
  for (int t = threadIdx.x; t < nHeads * half; t += kThreads) {
    const int h = t / half, e = t % half;
    float* lo = row + int64_t(h) * headDim + e;
    const float x = lo[0], y = lo[half], c = cosT[e], s = sinT[e];
    lo[0] = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
    lo[half] = __fadd_rn(__fmul_rn(y, c), __fmul_rn(x, s));
  }
}

template <DType T>
__global__ void __launch_bounds__(kThreads)
    kvWriteRopeKernel(float* k, const float* __restrict__ v, const int32_t* __restrict__ pos,
                      const int32_t* __restrict__ seq, const KvCacheRef* __restrict__ seqs, int64_t layer, int nKv,
                      int headDim, const float* __restrict__ invFreq) {
  extern __shared__ float table[];  // [half] cos, then [half] sin
  const int64_t r = blockIdx.x;
  const int half = headDim / 2;
  const int32_t p = pos[r];
  const int64_t kvd = int64_t(nKv) * headDim;
  float* kr = k + r * kvd;
  if (half > 0) {
    buildTable(table, table + half, half, p, invFreq);
    __syncthreads();
    rotateRow(kr, nKv, headDim, table, table + half);
    __syncthreads();  // the rotated row, written by other threads, is read back below
  }
  const KvCacheRef c = seqs[seq[r]];
  if (p < 0 || p >= c.capacity) return;
  const int64_t at = (layer * c.capacity + p) * kvd;
  const float* vr = v + r * kvd;
  for (int64_t e = threadIdx.x; e < kvd; e += kThreads) {
    storeElem<T>(c.k, at + e, kr[e]);
    storeElem<T>(c.v, at + e, vr[e]);
  }
}

__global__ void __launch_bounds__(kThreads)
    ropeRowsKernel(float* q, int64_t ldq, int64_t maxRows, const int32_t* __restrict__ count,
                   const int32_t* __restrict__ idx, const int32_t* __restrict__ pos, int nHeads, int headDim,
                   const float* __restrict__ invFreq) {
  extern __shared__ float table[];
  const int64_t i = blockIdx.x;
  if (i >= rowCount(count, maxRows)) return;
  const int half = headDim / 2;
  buildTable(table, table + half, half, pos[rowAt(idx, i)], invFreq);
  __syncthreads();
  rotateRow(q + i * ldq, nHeads, headDim, table, table + half);
}

}  // namespace

void launchKvWriteRope(const Dev& d, float* k, const float* v, const StepRows& step, int layer, const AttnShape& a,
                       const float* invFreq) {
  if (step.rows <= 0 || a.nKv <= 0 || a.headDim <= 0) return;
  if (step.rows > int64_t(0x7fffffff)) throw Error(kErrUnsupported, "kvWriteRope: too many rows");
  const size_t smem = size_t(a.headDim / 2) * 2 * sizeof(float);
  const unsigned grid = unsigned(step.rows);
  switch (a.kv) {
    case DType::F32:
      kvWriteRopeKernel<DType::F32>
          <<<grid, kThreads, smem, d.stream>>>(k, v, step.pos, step.seq, step.seqs, layer, a.nKv, a.headDim, invFreq);
      break;
    case DType::F16:
      kvWriteRopeKernel<DType::F16>
          <<<grid, kThreads, smem, d.stream>>>(k, v, step.pos, step.seq, step.seqs, layer, a.nKv, a.headDim, invFreq);
      break;
    case DType::BF16:
      kvWriteRopeKernel<DType::BF16>
          <<<grid, kThreads, smem, d.stream>>>(k, v, step.pos, step.seq, step.seqs, layer, a.nKv, a.headDim, invFreq);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

void launchRopeRows(const Dev& d, float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                    const float* invFreq) {
  if (rows.max <= 0 || nHeads <= 0 || headDim < 2) return;
  if (rows.max > int64_t(0x7fffffff)) throw Error(kErrUnsupported, "ropeRows: too many rows");
  const size_t smem = size_t(headDim / 2) * 2 * sizeof(float);
  ropeRowsKernel<<<unsigned(rows.max), kThreads, smem, d.stream>>>(q, ldq, rows.max, rows.count, rows.idx, step.pos,
                                                                   nHeads, headDim, invFreq);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
