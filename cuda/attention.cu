// Causal attention for a batch of query rows over per-sequence KV caches (native/cpu/attention.cc
// semantics): row r, query head h reads KV head min(h / (nHeads/nKv), nKv-1) at positions
// max(0, pos-window+1) .. pos (window <= 0: from 0); pos < 0 gives zeros.
//
// One block of 4 warps per (row, head). Warp w takes keys w, w+4, ... and keeps an online-softmax
// state (running max m, sum l, and its slice of the output: lane owns dims lane + 32*i); the four
// states are merged through shared memory at the end. q.k is reduced with shuffles; expf is the
// accurate one. Scores are q.k * 1/sqrt(headDim), as the CPU does.
// Later (kernels.md 5.1): split-KV flash-decoding with a merge kernel for long contexts, all query
// heads of a KV head in one block (GQA reuse), tensor cores for the group.
#include <cmath>

#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kWarps = 4;

template <int DPL>  // dims per lane: headDim <= 32 * DPL
__global__ void __launch_bounds__(kWarps * 32) attentionKernel(float* __restrict__ out, const float* __restrict__ q,
                                                               const AttnRow* __restrict__ rows, int nHeads, int nKv,
                                                               int headDim, int window, float scale) {
  const AttnRow row = rows[blockIdx.x];
  const int h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qd = int64_t(nHeads) * headDim;
  float* o = out + int64_t(row.outRow) * qd + int64_t(h) * headDim;
  if (row.pos < 0) {
    for (int d = threadIdx.x; d < headDim; d += kWarps * 32) o[d] = 0.f;
    return;
  }
  const int group = nHeads / nKv > 0 ? nHeads / nKv : 1;
  const int kvHead = min(h / group, nKv - 1);
  const int64_t kvStride = int64_t(nKv) * headDim;
  const int64_t first = window > 0 ? max(int64_t(0), int64_t(row.pos) - window + 1) : int64_t(0);
  const int64_t count = int64_t(row.pos) - first + 1;
  const float* kBase = row.k + first * kvStride + int64_t(kvHead) * headDim;
  const float* vBase = row.v + first * kvStride + int64_t(kvHead) * headDim;

  float qv[DPL], acc[DPL];
  const float* qr = q + int64_t(row.qRow) * qd + int64_t(h) * headDim;
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    const int d = lane + 32 * i;
    qv[i] = d < headDim ? qr[d] : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = warp; j < count; j += kWarps) {
    const float* kr = kBase + j * kvStride;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
      const int d = lane + 32 * i;
      if (d < headDim) dot += qv[i] * kr[d];
    }
    const float s = warpSum(dot) * scale;
    const float mNew = fmaxf(m, s);
    if (mNew == -INFINITY) continue;  // every score so far is -inf: nothing to add yet
    const float corr = expf(m - mNew);  // m == -inf gives 0
    const float p = expf(s - mNew);
    l = l * corr + p;
    const float* vr = vBase + j * kvStride;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < headDim ? p * vr[d] : 0.f);
    }
    m = mNew;
  }

  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][32 * DPL];
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < DPL; i++) sacc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float mAll = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; w++) mAll = fmaxf(mAll, sm[w]);
  float f[kWarps];
  float lAll = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; w++) {
    f[w] = sm[w] == -INFINITY ? 0.f : expf(sm[w] - mAll);
    lAll += sl[w] * f[w];
  }
  const float inv = 1.0f / lAll;
  for (int d = threadIdx.x; d < headDim; d += kWarps * 32) {
    float a = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) a += sacc[w][d] * f[w];
    o[d] = a * inv;
  }
}

}  // namespace

void launchAttention(cudaStream_t s, float* out, const float* q, const AttnRow* rows, int64_t nRows, int nHeads,
                     int nKv, int headDim, int window) {
  if (nRows <= 0 || nHeads <= 0 || nKv <= 0 || headDim <= 0) return;
  if (headDim > 256)
    throw Error(kErrUnsupported, "the CUDA attention kernel supports head dimensions up to 256, not " + std::to_string(headDim));
  if (nHeads > 65535) throw Error(kErrUnsupported, "too many attention heads for the CUDA attention kernel");
  const float scale = 1.0f / std::sqrt(float(headDim));
  const dim3 grid{unsigned(nRows), unsigned(nHeads)};
  if (headDim <= 64)
    attentionKernel<2><<<grid, kWarps * 32, 0, s>>>(out, q, rows, nHeads, nKv, headDim, window, scale);
  else if (headDim <= 128)
    attentionKernel<4><<<grid, kWarps * 32, 0, s>>>(out, q, rows, nHeads, nKv, headDim, window, scale);
  else
    attentionKernel<8><<<grid, kWarps * 32, 0, s>>>(out, q, rows, nHeads, nKv, headDim, window, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
