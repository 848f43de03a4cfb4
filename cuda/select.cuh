// Block-wide building blocks of the device sampler (sampling.cu): reductions and scans, the
// candidate order, and the selection of the next B candidates in that order.
//
// Order: candidates are ranked by logit descending, then id ascending, exactly the CPU's
// `higher` comparator. A 64-bit key encodes it: the logit's bits mapped to an unsigned integer
// that orders like the float (with -0 taken as +0, since the CPU compares -0 == +0), in the high
// half, and 0xffffffff - id in the low half. Larger key = earlier. Keys are unique.
//
// selectBatch(b, U) leaves in shared memory, sorted descending, the b largest keys below U:
// a radix select over the logit half (digits of 11, 11 and 10 bits, histograms in shared
// memory with warp-aggregated atomics), one ordered pass over ids when the boundary logit is
// tied, one gather pass, then a bitonic sort of at most kBatch keys.
#pragma once
#include "common.cuh"

namespace dg {
namespace cuda {
namespace sampler {

constexpr int kThreads = 512;  // block size of the pick kernel
constexpr int kWarps = kThreads / 32;
constexpr int kBatch = 1024;  // keys sorted at once
constexpr uint64_t kAllKeys = ~uint64_t(0);

__device__ __forceinline__ uint32_t orderedBits(float l) {
  if (l == 0.f) l = 0.f;  // -0 ranks with +0
  const uint32_t u = __float_as_uint(l);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t keyOf(float eff, int64_t id) {
  return (uint64_t(orderedBits(eff)) << 32) | uint64_t(0xffffffffu - uint32_t(id));
}
__device__ __forceinline__ int64_t idOf(uint64_t key) { return int64_t(0xffffffffu - uint32_t(key & 0xffffffffu)); }

// Whether logit l can be drawn (not NaN, not -inf; only the +inf ones when any is +inf) and the
// logit it counts with (the +inf ones count as 0: uniform among them), as native/cpu/sampling.cc.
__device__ __forceinline__ bool candidate(float l, bool anyPosInf, float& eff) {
  if (isnan(l) || l == -INFINITY) return false;
  if (anyPosInf) {
    eff = 0.f;
    return l == INFINITY;
  }
  eff = l;
  return true;
}

struct Shared {
  uint64_t keys[kBatch];
  double w[kBatch];
  int hist[2048];
  int scanI[kWarps];
  double scanD[kWarps];
  int bcastI[4];
  uint64_t bcastK;
};

// Exclusive scan over the block (thread order) of one value per thread; *total gets the sum.
// The cross-warp part adds the warp totals sequentially, so the result does not depend on timing.
template <typename V>
__device__ V blockExclusiveScan(V v, V* warpSums, V* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  V incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const V y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) warpSums[warp] = incl;
  __syncthreads();
  V before = 0, all = 0;
  for (int w = 0; w < kWarps; w++) {
    if (w == warp) before = all;
    all += warpSums[w];
  }
  __syncthreads();
  *total = all;
  return before + (incl - v);
}

template <typename V>
__device__ V blockSum(V v, V* warpSums) {
  V total;
  blockExclusiveScan<V>(v, warpSums, &total);
  return total;
}

// Histogram of digit `bin` (or none: bin < 0) from every thread, one shared atomic per distinct
// bin per warp. All 32 lanes must call it together.
__device__ __forceinline__ void histAdd(int* hist, int bin) {
  const unsigned peers = __match_any_sync(0xffffffffu, bin);
  if (bin >= 0 && (threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
}

// The bin, from the top, where the running count reaches `rank` (1-based): returns the bin and
// sets *rank to the rank within it and *inBin to its count. nb bins in hist, nb >= kThreads.
__device__ int findBinFromTop(Shared& s, int nb, int* rank, int* inBin) {
  const int per = nb / kThreads;
  int mine = 0;
  for (int k = 0; k < per; k++) mine += s.hist[nb - 1 - (threadIdx.x * per + k)];
  int total;
  const int before = blockExclusiveScan<int>(mine, s.scanI, &total);
  const int want = *rank;
  if (before < want && want <= before + mine) {
    int cum = before;
    for (int k = 0; k < per; k++) {
      const int bin = nb - 1 - (threadIdx.x * per + k);
      if (cum + s.hist[bin] >= want) {
        s.bcastI[0] = bin;
        s.bcastI[1] = want - cum;
        s.bcastI[2] = s.hist[bin];
        break;
      }
      cum += s.hist[bin];
    }
  }
  __syncthreads();
  *rank = s.bcastI[1];
  *inBin = s.bcastI[2];
  const int bin = s.bcastI[0];
  __syncthreads();
  return bin;
}

// The b largest candidate keys below U, sorted descending into s.keys[0..b) (zeros after, up to
// the sort size). `avail` = candidates with key < U (the caller knows it); b <= avail, b <= kBatch.
__device__ void selectBatch(Shared& s, const float* __restrict__ logits, int64_t vocab, bool anyPosInf, int b,
                            int64_t avail, uint64_t U) {
  const int tid = threadIdx.x;
  uint64_t T = 0;  // keys in [T, U) are the batch
  if (b < avail) {
    uint32_t prefix = 0;
    int rank = b, inBin = 0;
    for (int p = 0; p < 3; p++) {
      const int shift = p == 0 ? 21 : p == 1 ? 10 : 0, bits = p == 2 ? 10 : 11;
      const int nb = 1 << bits;
      for (int k = tid; k < nb; k += kThreads) s.hist[k] = 0;
      __syncthreads();
      for (int64_t base = 0; base < vocab; base += kThreads) {
        const int64_t i = base + tid;
        int bin = -1;
        float eff;
        if (i < vocab && candidate(logits[i], anyPosInf, eff)) {
          const uint64_t key = keyOf(eff, i);
          const uint32_t hi = uint32_t(key >> 32);
          const bool inPrefix = p == 0 || (uint64_t(hi) >> (shift + bits)) == prefix;
          if (key < U && inPrefix) bin = int((hi >> shift) & uint32_t(nb - 1));
        }
        histAdd(s.hist, bin);
      }
      __syncthreads();
      const int bin = findBinFromTop(s, nb, &rank, &inBin);
      prefix = (prefix << bits) | uint32_t(bin);
    }
    T = uint64_t(prefix) << 32;  // the whole tied group when all of it is in
    if (rank < inBin) {
      // The rank-th smallest id among the keys of logit `prefix` below U: an ordered pass.
      const int64_t per = ceilDiv(vocab, kThreads), lo = tid * per, hi = min(vocab, lo + per);
      int mine = 0;
      for (int64_t i = lo; i < hi; i++) {
        float eff;
        if (candidate(logits[i], anyPosInf, eff)) {
          const uint64_t key = keyOf(eff, i);
          mine += (uint32_t(key >> 32) == prefix && key < U) ? 1 : 0;
        }
      }
      int total;
      const int before = blockExclusiveScan<int>(mine, s.scanI, &total);
      if (before < rank && rank <= before + mine) {
        int seen = before;
        for (int64_t i = lo; i < hi; i++) {
          float eff;
          if (!candidate(logits[i], anyPosInf, eff)) continue;
          const uint64_t key = keyOf(eff, i);
          if (uint32_t(key >> 32) == prefix && key < U && ++seen == rank) {
            s.bcastK = key;
            break;
          }
        }
      }
      __syncthreads();
      T = s.bcastK;
      __syncthreads();
    }
  }
  // Gather [T, U) (exactly b keys), pad, sort.
  int sz = 2;
  while (sz < b) sz <<= 1;
  if (tid == 0) s.bcastI[3] = 0;
  for (int k = tid; k < sz; k += kThreads) s.keys[k] = 0;
  __syncthreads();
  const int lane = tid & 31;
  for (int64_t base = 0; base < vocab; base += kThreads) {
    const int64_t i = base + tid;
    bool take = false;
    uint64_t key = 0;
    float eff;
    if (i < vocab && candidate(logits[i], anyPosInf, eff)) {
      key = keyOf(eff, i);
      take = key >= T && key < U;
    }
    const unsigned bal = __ballot_sync(0xffffffffu, take);
    int at = 0;
    if (lane == 0 && bal) at = atomicAdd(&s.bcastI[3], __popc(bal));
    at = __shfl_sync(0xffffffffu, at, 0) + __popc(bal & ((1u << lane) - 1u));
    if (take && at < kBatch) s.keys[at] = key;
  }
  __syncthreads();
  for (int k = 2; k <= sz; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = tid; t < sz; t += kThreads) {
        const int u = t ^ j;
        if (u > t) {
          const uint64_t x = s.keys[t], y = s.keys[u];
          if ((t & k) == 0 ? x < y : x > y) s.keys[t] = y, s.keys[u] = x;
        }
      }
      __syncthreads();
    }
}

}  // namespace sampler
}  // namespace cuda
}  // namespace dg
