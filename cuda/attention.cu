// Causal attention over per-sequence KV caches in their dtype (f32/f16/bf16), for decode and
// prefill alike (native/cpu/attention.cc semantics): set row i is step row r = idx[i] at
// absolute position pos[r] of sequence seqs[seq[r]]; query head h reads KV head h / group at
// positions max(0, pos - window + 1) .. pos of `layer`; pos < 0 gives zeros.
//
// Split-KV ("flash-decoding"): a block is (KV head and up to HB of its query heads, one split of
// the key range, one row). Every count, index and position is read on the device; the host
// only fixes the number of splits S from the grid shape, and each block derives its key range
// from the row's position (splits past the keys exit at once). With S > 1 the blocks write
// partial (max, sum, unnormalised output) records and a combine kernel merges them.
//
// Inside a block, 4 warps take 32-key tiles in turn. Scores: lane j owns key j of the tile and
// dots it with the HB queries held in shared memory, reading the key in 16-byte vectors (a
// whole key row in flight per lane); the V rows of the tile are prefetched into L2 meanwhile.
// Online softmax per head with one max per tile (shuffles per tile, not per key). Values: lanes
// own contiguous slices of the head dimension and walk the tile's keys 4 at a time.
//
// NaN follows the CPU: a NaN score makes that head's output NaN (tracked as a flag, because
// fmaxf drops NaN), all-minus-infinity scores give NaN (exp(-inf - -inf)), and 0 * inf from V
// propagates. The softmax is online in f32 (the CPU sums exponentials in double), and dot
// products and sums run in another order than the CPU's: results agree to f32 rounding, not bits.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMinChunk = 128;  // keys per split at least: one tile per warp
constexpr int kVKeys = 4;       // V rows in flight per lane

struct AttnArgs {
  float* out;
  const float* q;
  int64_t maxRows;
  const int32_t* count;
  const int32_t* idx;
  const int32_t* pos;
  const int32_t* seq;
  const KvCacheRef* seqs;
  int64_t layer;
  int64_t kvWidth;
  int nHeads, nKv, headDim, window, group, headBlocks, splits, vec16;
  float scale;
  float* partAcc;  // [maxRows][nHeads][splits][headDim]
  float2* partML;  // [maxRows][nHeads][splits]: (max, sum; sum NaN when a score was NaN)
};

// DPL contiguous cache elements at p (aligned to DPL elements), as f32.
template <DType T, int DPL>
__device__ __forceinline__ void loadSlice(const void* p, float (&f)[DPL]) {
  if constexpr (T == DType::F32) {
    const float* s = static_cast<const float*>(p);
    if constexpr (DPL % 4 == 0) {
#pragma unroll
      for (int i = 0; i < DPL; i += 4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(s) + i / 4);
        f[i] = v.x, f[i + 1] = v.y, f[i + 2] = v.z, f[i + 3] = v.w;
      }
    } else if constexpr (DPL == 2) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(s));
      f[0] = v.x, f[1] = v.y;
    } else {
      f[0] = __ldg(s);
    }
  } else {
    const auto cvt = [](uint32_t h) { return T == DType::BF16 ? bf16Bits(h) : f16Bits(h); };
    if constexpr (DPL == 8) {
      const uint4 v = __ldg(static_cast<const uint4*>(p));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; i++) f[2 * i] = cvt(w[i] & 0xffffu), f[2 * i + 1] = cvt(w[i] >> 16);
    } else if constexpr (DPL == 4) {
      const uint2 v = __ldg(static_cast<const uint2*>(p));
      f[0] = cvt(v.x & 0xffffu), f[1] = cvt(v.x >> 16), f[2] = cvt(v.y & 0xffffu), f[3] = cvt(v.y >> 16);
    } else if constexpr (DPL == 2) {
      const uint32_t v = __ldg(static_cast<const unsigned int*>(p));
      f[0] = cvt(v & 0xffffu), f[1] = cvt(v >> 16);
    } else {
      f[0] = cvt(__ldg(static_cast<const unsigned short*>(p)));
    }
  }
}

__device__ __forceinline__ void prefetchL2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Resident blocks per multiprocessor the register budget is set for: 4 (128 registers) for the
// small groups; the accumulators of 4 or 8 query heads x up to 8 dims per lane need more.
template <int DMAX, int HB>
constexpr int attnMinBlocks() {
  return HB * (DMAX / 32) >= 32 ? 2 : (HB >= 4 || HB * (DMAX / 32) >= 16) ? 3 : 4;
}

template <DType T, int DMAX, int HB>
__global__ void __launch_bounds__(kWarps * 32, attnMinBlocks<DMAX, HB>()) attnKernel(const AttnArgs a) {
  constexpr int DPL = DMAX / 32;
  constexpr int es = T == DType::F32 ? 4 : 2;
  constexpr int E16 = 16 / es;  // elements per 16-byte vector
  __shared__ __align__(16) float qs[HB][DMAX];
  __shared__ float ps[kWarps][HB][32];
  __shared__ float mAcc[kWarps][HB][DMAX];
  __shared__ float mM[kWarps][HB], mL[kWarps][HB];
  __shared__ unsigned mNan[kWarps];

  const int64_t i = blockIdx.z;
  if (i >= rowCount(a.count, a.maxRows)) return;
  const int split = blockIdx.y;
  const int g = blockIdx.x / a.headBlocks, hb = blockIdx.x % a.headBlocks;
  const int hFirst = g * a.group + hb * HB;
  const int nh = min(min(HB, a.group - hb * HB), a.nHeads - hFirst);  // never past the query heads
  const int D = a.headDim;
  const int64_t r = rowAt(a.idx, i);
  const int pos = a.pos[r];
  const int64_t qd = int64_t(a.nHeads) * D;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (pos < 0) {  // the combine writes the zeros when the row is split
    if (a.splits == 1)
      for (int t = tid; t < nh * D; t += kWarps * 32) a.out[i * qd + int64_t(hFirst) * D + t] = 0.f;
    return;
  }
  const int64_t first = a.window > 0 ? max(int64_t(0), int64_t(pos) - a.window + 1) : int64_t(0);
  const int64_t keys = int64_t(pos) - first + 1;
  int64_t chunk = max(ceilDiv(keys, a.splits), int64_t(kMinChunk));
  chunk = ceilDiv(chunk, 32) * 32;
  const int64_t k0 = first + split * chunk, k1 = min(int64_t(pos) + 1, k0 + chunk);
  const int64_t rec = (i * a.nHeads + hFirst) * a.splits + split;  // partial record of head 0
  if (k0 >= k1) {                                                  // an empty split (only when splits > 1)
    for (int t = tid; t < nh * D; t += kWarps * 32) a.partAcc[(rec + int64_t(t / D) * a.splits) * D + t % D] = 0.f;
    if (tid < nh) a.partML[rec + int64_t(tid) * a.splits] = make_float2(-INFINITY, 0.f);
    return;
  }

  for (int t = tid; t < HB * DMAX; t += kWarps * 32) {
    const int h = t / DMAX, dd = t % DMAX;
    qs[h][dd] = (h < nh && dd < D) ? a.q[i * qd + int64_t(hFirst + h) * D + dd] : 0.f;
  }
  const KvCacheRef kv = a.seqs[a.seq[r]];
  const int64_t base = (a.layer * kv.capacity) * a.kvWidth + int64_t(g) * D;  // elements
  const char* kb = static_cast<const char*>(kv.k) + base * es;
  const char* vb = static_cast<const char*>(kv.v) + base * es;
  const int64_t rowBytes = a.kvWidth * es;
  __syncthreads();

  float m[HB], ls[HB], acc[HB][DPL];
  unsigned nanMask = 0;
#pragma unroll
  for (int h = 0; h < HB; h++) {
    m[h] = -INFINITY;
    ls[h] = 0.f;
#pragma unroll
    for (int e = 0; e < DPL; e++) acc[h][e] = 0.f;
  }
  const bool laneHasDims = lane * DPL < D;

  for (int64_t t0 = k0 + warp * 32; t0 < k1; t0 += kWarps * 32) {
    const int64_t j = t0 + lane;
    const bool valid = j < k1;
    float s[HB];
#pragma unroll
    for (int h = 0; h < HB; h++) s[h] = 0.f;
    if (valid) {
      const char* vrow = vb + j * rowBytes;
      for (int off = 0; off < D * es; off += 128) prefetchL2(vrow + off);
      const char* krow = kb + j * rowBytes;
      if (a.vec16) {
        constexpr int NV = DMAX / E16;      // vectors per key at most
        constexpr int B = NV < 4 ? NV : 4;  // 16-byte loads in flight per lane
        const int nvec = D / E16;
#pragma unroll 1
        for (int c0 = 0; c0 < nvec; c0 += B) {
          uint4 kv4[B];
#pragma unroll
          for (int u = 0; u < B; u++)
            if (c0 + u < nvec) kv4[u] = __ldg(reinterpret_cast<const uint4*>(krow) + c0 + u);
#pragma unroll
          for (int u = 0; u < B; u++) {
            if (c0 + u >= nvec) continue;  // (not break: keeps the loop unrolled, kv4 in registers)
            float f[E16];
            widen16<T>(kv4[u], f);
            const int d0 = (c0 + u) * E16;
#pragma unroll
            for (int h = 0; h < HB; h++) {
#pragma unroll
              for (int e = 0; e < E16; e += 4) {
                const float4 qv = *reinterpret_cast<const float4*>(&qs[h][d0 + e]);
                s[h] = fmaf(qv.x, f[e], s[h]);
                s[h] = fmaf(qv.y, f[e + 1], s[h]);
                s[h] = fmaf(qv.z, f[e + 2], s[h]);
                s[h] = fmaf(qv.w, f[e + 3], s[h]);
              }
            }
          }
        }
      } else {
        for (int dd = 0; dd < D; dd++) {
          const float kf = loadElem<T>(krow, dd);
#pragma unroll
          for (int h = 0; h < HB; h++) s[h] = fmaf(qs[h][dd], kf, s[h]);
        }
      }
    }
#pragma unroll
    for (int h = 0; h < HB; h++) {
      const float sc = s[h] * a.scale;
      const bool isNan = valid && isnan(sc);
      nanMask |= unsigned(isNan) << h;
      const float sv = (valid && !isNan) ? sc : -INFINITY;
      const float mNew = fmaxf(m[h], warpMax(sv));
      const float corr = m[h] == -INFINITY ? 0.f : expf(m[h] - mNew);
      const float p = sv == -INFINITY ? 0.f : expf(sv - mNew);
      ls[h] = ls[h] * corr + p;
#pragma unroll
      for (int e = 0; e < DPL; e++) acc[h][e] *= corr;
      m[h] = mNew;
      ps[warp][h][lane] = p;
    }
    __syncwarp();
    const int nk = int(min(int64_t(32), k1 - t0));
    if (laneHasDims) {
      const char* vslice = vb + t0 * rowBytes + int64_t(lane) * DPL * es;
      for (int jj = 0; jj < nk; jj += kVKeys) {
        float v[kVKeys][DPL];
#pragma unroll
        for (int u = 0; u < kVKeys; u++)
          if (jj + u < nk) loadSlice<T, DPL>(vslice + (jj + u) * rowBytes, v[u]);
#pragma unroll
        for (int u = 0; u < kVKeys; u++) {
          if (jj + u >= nk) continue;
#pragma unroll
          for (int h = 0; h < HB; h++) {
            const float pv = ps[warp][h][jj + u];
#pragma unroll
            for (int e = 0; e < DPL; e++) acc[h][e] = fmaf(pv, v[u][e], acc[h][e]);
          }
        }
      }
    }
    __syncwarp();
  }

  // Merge the warps' states, then write the output (one split) or the partial record.
  const unsigned nanAll = __reduce_or_sync(0xffffffffu, nanMask);
#pragma unroll
  for (int h = 0; h < HB; h++) {
    const float l = warpSum(ls[h]);
    if (lane == 0) {
      mM[warp][h] = m[h];
      mL[warp][h] = l;
    }
#pragma unroll
    for (int e = 0; e < DPL; e++) mAcc[warp][h][lane * DPL + e] = acc[h][e];
  }
  if (lane == 0) mNan[warp] = nanAll;
  __syncthreads();
  for (int t = tid; t < nh * D; t += kWarps * 32) {
    const int h = t / D, dd = t % D;
    float M = -INFINITY;
    bool nan = false;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      M = fmaxf(M, mM[w][h]);
      nan |= (mNan[w] >> h) & 1u;
    }
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      const float f = mM[w][h] == -INFINITY ? 0.f : expf(mM[w][h] - M);
      L = fmaf(mL[w][h], f, L);
      A = fmaf(mAcc[w][h][dd], f, A);
    }
    if (a.splits == 1) {
      a.out[i * qd + int64_t(hFirst + h) * D + dd] = (nan || M == -INFINITY) ? NAN : A * (1.0f / L);
    } else {
      a.partAcc[(rec + int64_t(h) * a.splits) * D + dd] = A;
      if (dd == 0) a.partML[rec + int64_t(h) * a.splits] = make_float2(M, nan ? NAN : L);
    }
  }
}

// Merges the S partial records of (row, query head): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
__global__ void __launch_bounds__(128) combineKernel(const AttnArgs a) {
  __shared__ float wf[64];
  __shared__ float total;
  __shared__ int bad;
  const int64_t i = blockIdx.y;
  if (i >= rowCount(a.count, a.maxRows)) return;
  const int h = blockIdx.x, D = a.headDim, S = a.splits;
  const int64_t qd = int64_t(a.nHeads) * D;
  float* out = a.out + i * qd + int64_t(h) * D;
  if (a.pos[rowAt(a.idx, i)] < 0) {
    for (int dd = threadIdx.x; dd < D; dd += blockDim.x) out[dd] = 0.f;
    return;
  }
  const int64_t rec = (i * a.nHeads + h) * S;
  if (threadIdx.x == 0) {
    float M = -INFINITY;
    bool nan = false;
    for (int s = 0; s < S; s++) {
      const float2 ml = a.partML[rec + s];
      M = fmaxf(M, ml.x);
      nan |= isnan(ml.y);
    }
    float L = 0.f;
    for (int s = 0; s < S; s++) {
      const float2 ml = a.partML[rec + s];
      wf[s] = ml.x == -INFINITY ? 0.f : expf(ml.x - M);
      L = fmaf(ml.y, wf[s], L);
    }
    total = L;
    bad = nan || M == -INFINITY;
  }
  __syncthreads();
  for (int dd = threadIdx.x; dd < D; dd += blockDim.x) {
    float A = 0.f;
    for (int s = 0; s < S; s++) A = fmaf(a.partAcc[(rec + s) * D + dd], wf[s], A);
    out[dd] = bad ? NAN : A * (1.0f / total);
  }
}

struct Plan {
  int dmax, hb, headBlocks, splits, group;
};

Plan planOf(const Dev& d, const RowSet& rows, const AttnShape& sh) {
  Plan p{};
  if (sh.headDim <= 0 || sh.nHeads <= 0 || sh.nKv <= 0) return p;
  if (sh.headDim > 256)
    throw Error(kErrUnsupported,
                "the CUDA attention kernel supports head dimensions up to 256, not " + std::to_string(sh.headDim));
  p.dmax = sh.headDim <= 32 ? 32 : sh.headDim <= 64 ? 64 : sh.headDim <= 128 ? 128 : 256;
  if (sh.headDim % (p.dmax / 32) != 0)
    throw Error(kErrUnsupported, "the CUDA attention kernel needs the head dimension (" + std::to_string(sh.headDim) +
                                     ") to be a multiple of " + std::to_string(p.dmax / 32));
  p.group = sh.nHeads / sh.nKv > 0 ? sh.nHeads / sh.nKv : 1;
  p.hb = p.group <= 1 ? 1 : p.group <= 2 ? 2 : p.group <= 4 ? 4 : 8;
  p.headBlocks = int(ceilDiv(p.group, p.hb));
  const int64_t perSplit = rows.max * sh.nKv * p.headBlocks;
  p.splits = int(std::max<int64_t>(1, std::min<int64_t>(64, int64_t(4) * d.sms / std::max<int64_t>(1, perSplit))));
  if (rows.max > 65535 || int64_t(sh.nKv) * p.headBlocks > 0x7fffffff)
    throw Error(kErrUnsupported, "attention: too many rows or heads for the CUDA kernel");
  return p;
}

template <DType T, int DMAX>
void launchHb(const dim3& grid, cudaStream_t s, const AttnArgs& a, int hb) {
  switch (hb) {
    case 1:
      attnKernel<T, DMAX, 1><<<grid, kWarps * 32, 0, s>>>(a);
      break;
    case 2:
      attnKernel<T, DMAX, 2><<<grid, kWarps * 32, 0, s>>>(a);
      break;
    case 4:
      attnKernel<T, DMAX, 4><<<grid, kWarps * 32, 0, s>>>(a);
      break;
    default:
      attnKernel<T, DMAX, 8><<<grid, kWarps * 32, 0, s>>>(a);
      break;
  }
}

template <DType T>
void launchT(const dim3& grid, cudaStream_t s, const AttnArgs& a, const Plan& p) {
  switch (p.dmax) {
    case 32:
      launchHb<T, 32>(grid, s, a, p.hb);
      break;
    case 64:
      launchHb<T, 64>(grid, s, a, p.hb);
      break;
    case 128:
      launchHb<T, 128>(grid, s, a, p.hb);
      break;
    default:
      launchHb<T, 256>(grid, s, a, p.hb);
      break;
  }
}

}  // namespace

size_t attentionScratchBytes(const Dev& d, RowSet rows, const AttnShape& sh) {
  if (rows.max <= 0) return 0;
  const Plan p = planOf(d, rows, sh);
  if (p.splits <= 1) return 0;
  const size_t recs = size_t(rows.max) * size_t(sh.nHeads) * size_t(p.splits);
  return recs * sizeof(float2) + recs * size_t(sh.headDim) * sizeof(float);
}

void launchAttention(const Dev& d, float* out, const float* q, RowSet rows, const StepRows& step, int layer,
                     const AttnShape& sh, void* scratch) {
  if (rows.max <= 0 || sh.headDim <= 0 || sh.nHeads <= 0 || sh.nKv <= 0) return;
  const Plan p = planOf(d, rows, sh);
  AttnArgs a{};
  a.out = out;
  a.q = q;
  a.maxRows = rows.max;
  a.count = rows.count;
  a.idx = rows.idx;
  a.pos = step.pos;
  a.seq = step.seq;
  a.seqs = step.seqs;
  a.layer = layer;
  a.kvWidth = sh.kvWidth();
  a.nHeads = sh.nHeads;
  a.nKv = sh.nKv;
  a.headDim = sh.headDim;
  a.window = sh.window;
  a.group = p.group;
  a.headBlocks = p.headBlocks;
  a.splits = p.splits;
  a.vec16 = (int64_t(sh.headDim) * int64_t(dtypeSize(sh.kv))) % 16 == 0;
  a.scale = 1.0f / std::sqrt(float(sh.headDim));
  if (p.splits > 1) {
    if (!scratch) throw Error(kErrArg, "attention: no scratch for the split-KV records");
    const size_t recs = size_t(rows.max) * size_t(sh.nHeads) * size_t(p.splits);
    a.partML = static_cast<float2*>(scratch);
    a.partAcc = reinterpret_cast<float*>(static_cast<char*>(scratch) + recs * sizeof(float2));
  }
  const dim3 grid(unsigned(sh.nKv * p.headBlocks), unsigned(p.splits), unsigned(rows.max));
  switch (sh.kv) {
    case DType::F32:
      launchT<DType::F32>(grid, d.stream, a, p);
      break;
    case DType::F16:
      launchT<DType::F16>(grid, d.stream, a, p);
      break;
    case DType::BF16:
      launchT<DType::BF16>(grid, d.stream, a, p);
      break;
  }
  CUDA_CHECK_LAUNCH();
  if (p.splits > 1) {
    // Only the heads the blocks cover (nKv * group, as on the CPU).
    combineKernel<<<dim3(unsigned(std::min(sh.nHeads, sh.nKv * p.group)), unsigned(rows.max)), 128, 0, d.stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace cuda
}  // namespace dg
