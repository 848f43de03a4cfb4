// The sample op on the device, with the semantics of native/cpu/sampling.cc:
//  * first, in place, each row's penalty list (SampleRow::penaltyStart/penaltyCount), drawing or
//    not, is applied to its logits with applyPenalty (kernels.h, the host's code): the ids of a row's
//    list are distinct, so each thread owns the logits it writes.
//  * temperature <= 0: greedy argmax (NaN never wins, lowest id on ties, 0 when every logit is
//    NaN); no draw.
//  * otherwise exactly one splitmix64 draw, taken first: u = (next >> 11) * 2^-53. Candidates are
//    the logits that are not NaN or -inf (only the +inf ones, counted as logit 0, when any is
//    +inf). Top-k keeps the k best by (logit descending, id ascending); weights are
//    exp((logit - max) / T) in double; top-p keeps the shortest prefix in that order whose
//    cumulative weight reaches topP * total and renormalises over it; the token is the first
//    whose cumulative weight exceeds u * total, walking the kept set in sorted order (or in id
//    order when neither top-k nor top-p applies, as the CPU walks its unsorted candidates);
//    rounding past the end picks the last kept token of non-zero weight.
//
// Three kernels: scan (per chunk of the vocabulary, many blocks per row: argmax, candidate
// counts), sum (per chunk: the weights' sum when the total is over every candidate), pick (one
// block per row: greedy, the draw, top-k / top-p over sorted batches from select.cuh, the walk).
//
// Where float summation order differs from the CPU, and what it can change:
//  * total over all candidates (no top-k): per-chunk block sums added chunk by chunk, where the
//    CPU adds one weight at a time in id order. The two totals differ in the last bits, so
//    u * total and topP * total move by about 1e-16 relative: a token (or the nucleus size)
//    differs only when a cumulative sum falls within that distance of the threshold.
//  * the id-order walk: the cumulative sum is chunk sums, then a block scan within the chunk,
//    with the same effect. With top-k, the total, the top-p prefix and the walk are summed one
//    weight at a time in sorted order, like the CPU (bit-identical where exp agrees).
//  * exp in double on the GPU is within 1 ulp of the host's; weights can differ in the last bit.
#include "select.cuh"

namespace dg {
namespace cuda {
namespace {

using namespace sampler;

constexpr int64_t kChunkElems = 2048;
constexpr int kScanThreads = 256;

struct ChunkStat {
  float best;      // largest non-NaN logit (may be -inf)
  int32_t bestId;  // its lowest id, -1 when the chunk is all NaN
  int32_t nCand;   // candidates (not NaN, not -inf)
  int32_t nPosInf;
};

__device__ __forceinline__ bool better(float v, int32_t id, float bv, int32_t bid) {
  return id >= 0 && (bid < 0 || v > bv || (v == bv && id < bid));
}

// Reduces (best, bestId) and the two counts over the block; thread 0 gets the result.
template <int NT>
__device__ ChunkStat reduceStats(ChunkStat s) {
  __shared__ ChunkStat part[NT / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, s.best, o);
    const int32_t id = __shfl_xor_sync(0xffffffffu, s.bestId, o);
    s.nCand += __shfl_xor_sync(0xffffffffu, s.nCand, o);
    s.nPosInf += __shfl_xor_sync(0xffffffffu, s.nPosInf, o);
    if (better(v, id, s.best, s.bestId)) s.best = v, s.bestId = id;
  }
  if (lane == 0) part[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < NT / 32; w++) {
      const ChunkStat& o = part[w];
      if (better(o.best, o.bestId, s.best, s.bestId)) s.best = o.best, s.bestId = o.bestId;
      s.nCand += o.nCand;
      s.nPosInf += o.nPosInf;
    }
  }
  __syncthreads();
  return s;
}

// The row's facts from its chunk records, broadcast to the whole block.
template <int NT>
__device__ ChunkStat rowStats(const ChunkStat* stats, int64_t chunks) {
  __shared__ ChunkStat all;
  ChunkStat s{-INFINITY, -1, 0, 0};
  for (int64_t c = threadIdx.x; c < chunks; c += NT) {
    const ChunkStat o = stats[c];
    if (better(o.best, o.bestId, s.best, s.bestId)) s.best = o.best, s.bestId = o.bestId;
    s.nCand += o.nCand;
    s.nPosInf += o.nPosInf;
  }
  s = reduceStats<NT>(s);
  if (threadIdx.x == 0) all = s;
  __syncthreads();
  return all;
}

__device__ __forceinline__ bool topKApplies(const SampleRow& p, int64_t nEff) { return p.topK > 0 && p.topK < nEff; }

__global__ void __launch_bounds__(kScanThreads)
    scanKernel(const float* __restrict__ logits, int64_t vocab, const SampleRow* __restrict__ params, ChunkStat* stats,
               int64_t chunks) {
  const int64_t row = blockIdx.y;
  if (!params[row].draw) return;
  const float* l = logits + row * vocab;
  const int64_t c0 = int64_t(blockIdx.x) * kChunkElems, c1 = min(vocab, c0 + kChunkElems);
  ChunkStat s{-INFINITY, -1, 0, 0};
  for (int64_t i = c0 + threadIdx.x; i < c1; i += kScanThreads) {
    const float v = l[i];
    if (isnan(v)) continue;
    if (better(v, int32_t(i), s.best, s.bestId)) s.best = v, s.bestId = int32_t(i);
    s.nCand += v != -INFINITY;
    s.nPosInf += v == INFINITY;
  }
  s = reduceStats<kScanThreads>(s);
  if (threadIdx.x == 0) stats[row * chunks + blockIdx.x] = s;
}

__device__ __forceinline__ double weightOf(float eff, float maxEff, double invT) {
  return exp((double(eff) - double(maxEff)) * invT);
}

// Per chunk: the sum of every candidate's weight, for rows whose total is over all candidates.
__global__ void __launch_bounds__(kScanThreads)
    sumKernel(const float* __restrict__ logits, int64_t vocab, const SampleRow* __restrict__ params,
              const ChunkStat* __restrict__ stats, double* sums, int64_t chunks) {
  __shared__ double warpSums[kScanThreads / 32];
  const int64_t row = blockIdx.y;
  const SampleRow p = params[row];
  if (!p.draw || !(p.temperature > 0.f)) return;
  const ChunkStat rs = rowStats<kScanThreads>(stats + row * chunks, chunks);
  const bool anyPosInf = rs.nPosInf > 0;
  const int64_t nEff = anyPosInf ? rs.nPosInf : rs.nCand;
  if (nEff == 0 || topKApplies(p, nEff)) return;
  const float maxEff = anyPosInf ? 0.f : rs.best;
  const double invT = 1.0 / double(p.temperature);
  const float* l = logits + row * vocab;
  const int64_t c0 = int64_t(blockIdx.x) * kChunkElems, c1 = min(vocab, c0 + kChunkElems);
  double sum = 0;
  for (int64_t i = c0 + threadIdx.x; i < c1; i += kScanThreads) {
    float eff;
    if (candidate(l[i], anyPosInf, eff)) sum += weightOf(eff, maxEff, invT);
  }
  // blockSum is written for the pick kernel's block size; a plain reduction here.
  sum = warpSumD(sum);
  if ((threadIdx.x & 31) == 0) warpSums[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kScanThreads / 32; w++) t += warpSums[w];
    sums[row * chunks + blockIdx.x] = t;
  }
}

enum SweepMode : int { kSum = 0, kReach = 1, kWalk = 2 };

struct Sweep {
  int64_t n;        // kReach: kept size
  double cum;       // cumulative weight where it stopped (or over all of `limit`)
  int64_t id;       // kWalk: the token
  int64_t lastPos;  // last token of non-zero weight seen
  int64_t firstId;  // the best candidate
  int stopped;
};

struct PickState {
  uint64_t cacheU;
  int cacheB;
  int stop;
  int64_t stopIndex;
  Sweep sw;
};

// Walks the first `limit` candidates in sorted order, in batches of kBatch, adding weights one at
// a time on thread 0 (the CPU's order). The last selected batch stays cached for the next sweep.
__device__ Sweep sweepSorted(Shared& s, PickState& ps, const float* l, int64_t vocab, bool anyPosInf, int64_t nEff,
                             float maxEff, double invT, int64_t limit, int mode, double target) {
  if (threadIdx.x == 0) ps.sw = Sweep{0, 0.0, -1, -1, -1, 0};
  __syncthreads();
  uint64_t U = kAllKeys;
  int64_t done = 0;
  while (done < limit) {
    const int b = int(min(int64_t(kBatch), limit - done));
    if (!(ps.cacheU == U && ps.cacheB >= b)) {
      __syncthreads();
      selectBatch(s, l, vocab, anyPosInf, b, nEff - done, U);
      if (threadIdx.x == 0) ps.cacheU = U, ps.cacheB = b;
    }
    for (int j = threadIdx.x; j < b; j += kThreads) {
      const float v = l[idOf(s.keys[j])];
      s.w[j] = weightOf(anyPosInf ? 0.f : v, maxEff, invT);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      Sweep& r = ps.sw;
      if (done == 0) r.firstId = idOf(s.keys[0]);
      for (int j = 0; j < b; j++) {
        const double w = s.w[j];
        r.cum += w;
        if (w > 0) r.lastPos = idOf(s.keys[j]);
        if (mode == kReach && r.cum >= target) {
          r.n = done + j + 1;
          r.stopped = 1;
          break;
        }
        if (mode == kWalk && target < r.cum) {
          r.id = idOf(s.keys[j]);
          r.stopped = 1;
          break;
        }
      }
      ps.stop = r.stopped;
    }
    __syncthreads();
    const int stop = ps.stop;
    const uint64_t next = s.keys[b - 1];
    __syncthreads();
    if (stop) break;
    U = next;
    done += b;
  }
  Sweep r = ps.sw;
  if (!r.stopped) r.n = limit;
  __syncthreads();
  return r;
}

// Id-order walk (neither top-k nor top-p): the first candidate whose cumulative weight exceeds
// `threshold`, using the chunk sums to find the chunk and a block scan inside it.
__device__ int64_t walkIds(Shared& s, PickState& ps, const float* l, int64_t vocab, bool anyPosInf, float maxEff,
                           double invT, const double* sums, int64_t chunks, double threshold) {
  __shared__ int64_t chunk;
  __shared__ double before;
  __shared__ unsigned long long found, lastPos, firstCand;
  if (threadIdx.x == 0) {
    double cum = 0;
    chunk = -1;
    for (int64_t c = 0; c < chunks; c++) {
      if (threshold < cum + sums[c]) {
        chunk = c;
        break;
      }
      cum += sums[c];
    }
    before = cum;
    found = ~0ull;
    lastPos = 0;  // stored as id + 1, 0 = none
    firstCand = ~0ull;
  }
  __syncthreads();
  const int64_t c = chunk;
  // The chunk to search, or (rounding past the end) the whole vocabulary for the fallbacks.
  const int64_t lo = c >= 0 ? c * kChunkElems : 0, hi = c >= 0 ? min(vocab, lo + kChunkElems) : vocab;
  const int64_t per = ceilDiv(hi - lo, kThreads), t0 = lo + threadIdx.x * per, t1 = min(hi, t0 + per);
  double mine = 0;
  for (int64_t i = t0; i < t1; i++) {
    float eff;
    if (candidate(l[i], anyPosInf, eff)) {
      const double w = weightOf(eff, maxEff, invT);
      mine += w;
      if (w > 0) atomicMax(&lastPos, (unsigned long long)(i + 1));
      atomicMin(&firstCand, (unsigned long long)i);
    }
  }
  double total;
  double run = blockExclusiveScan<double>(mine, s.scanD, &total);
  if (c >= 0) {
    for (int64_t i = t0; i < t1; i++) {
      float eff;
      if (!candidate(l[i], anyPosInf, eff)) continue;
      run += weightOf(eff, maxEff, invT);
      if (threshold < before + run) {
        atomicMin(&found, (unsigned long long)i);
        break;
      }
    }
  }
  __syncthreads();
  int64_t id = found != ~0ull ? int64_t(found) : lastPos ? int64_t(lastPos) - 1 : -1;
  if (id < 0) id = firstCand != ~0ull ? int64_t(firstCand) : 0;
  __syncthreads();
  return id;
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void __launch_bounds__(kThreads, 1)
    pickKernel(int32_t* tokens, const float* __restrict__ logits, int64_t vocab, SampleRow* params,
               const ChunkStat* __restrict__ stats, const double* __restrict__ sums, int64_t chunks) {
  __shared__ Shared s;
  __shared__ PickState ps;
  __shared__ double uShared;
  const int64_t row = blockIdx.x;
  const SampleRow p = params[row];
  if (!p.draw) return;
  const ChunkStat rs = rowStats<kThreads>(stats + row * chunks, chunks);
  if (!(p.temperature > 0.f)) {
    if (threadIdx.x == 0) tokens[row] = rs.bestId >= 0 ? rs.bestId : 0;
    return;
  }
  if (threadIdx.x == 0) {
    uint64_t st = p.rng;
    uShared = double(splitmix64(st) >> 11) * 0x1.0p-53;
    params[row].rng = st;  // the one draw of this token
    ps.cacheU = 0;
    ps.cacheB = 0;
  }
  __syncthreads();
  const double u = uShared;
  const bool anyPosInf = rs.nPosInf > 0;
  const int64_t nEff = anyPosInf ? rs.nPosInf : rs.nCand;
  if (nEff == 0) {
    if (threadIdx.x == 0) tokens[row] = 0;
    return;
  }
  const float* l = logits + row * vocab;
  const float maxEff = anyPosInf ? 0.f : rs.best;
  const double invT = 1.0 / double(p.temperature);
  int64_t token;
  if (topKApplies(p, nEff)) {
    const int64_t k = p.topK;
    const Sweep all = sweepSorted(s, ps, l, vocab, anyPosInf, nEff, maxEff, invT, k, kSum, 0.0);
    double total = all.cum;
    int64_t kept = k;
    if (p.topP < 1.f) {
      const Sweep nuc = sweepSorted(s, ps, l, vocab, anyPosInf, nEff, maxEff, invT, k, kReach, double(p.topP) * total);
      kept = nuc.n;
      total = nuc.cum;
    }
    const Sweep w = sweepSorted(s, ps, l, vocab, anyPosInf, nEff, maxEff, invT, kept, kWalk, u * total);
    token = w.stopped ? w.id : w.lastPos >= 0 ? w.lastPos : w.firstId;
  } else {
    __shared__ double totalShared;
    if (threadIdx.x == 0) {
      double t = 0;
      for (int64_t c = 0; c < chunks; c++) t += sums[row * chunks + c];
      totalShared = t;
    }
    __syncthreads();
    const double total = totalShared;
    if (p.topP < 1.f) {
      const Sweep nuc =
          sweepSorted(s, ps, l, vocab, anyPosInf, nEff, maxEff, invT, nEff, kReach, double(p.topP) * total);
      const Sweep w = sweepSorted(s, ps, l, vocab, anyPosInf, nEff, maxEff, invT, nuc.n, kWalk, u * nuc.cum);
      token = w.stopped ? w.id : w.lastPos >= 0 ? w.lastPos : w.firstId;
    } else {
      token = walkIds(s, ps, l, vocab, anyPosInf, maxEff, invT, sums + row * chunks, chunks, u * total);
    }
  }
  if (threadIdx.x == 0) tokens[row] = int32_t(token);
}

__global__ void penaltyKernel(float* logits, int64_t vocab, const SampleRow* __restrict__ params,
                              const PenaltyToken* __restrict__ penalties) {
  const int64_t row = blockIdx.x;
  const SampleRow p = params[row];
  if (p.penaltyCount <= 0) return;  // drawing or not (exact mode draws from penalised rows itself)
  float* l = logits + row * vocab;
  const PenaltyToken* list = penalties + p.penaltyStart;
  for (int32_t j = threadIdx.x; j < p.penaltyCount; j += blockDim.x) {
    const PenaltyToken t = list[j];
    if (t.id >= 0 && t.id < vocab)
      l[t.id] = applyPenalty(l[t.id], t.count, p.repetitionPenalty, p.frequencyPenalty, p.presencePenalty);
  }
}

int64_t chunksOf(int64_t vocab) { return ceilDiv(vocab, kChunkElems); }

}  // namespace

size_t sampleScratchBytes(int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  const size_t recs = size_t(rows) * size_t(chunksOf(vocab));
  return recs * sizeof(double) + recs * sizeof(ChunkStat);
}

void launchSample(const Dev& d, int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
                  const PenaltyToken* penalties, void* scratch) {
  if (rows <= 0) return;
  if (rows > 65535) throw Error(kErrUnsupported, "sample: more than 65535 rows in one call");
  if (vocab <= 0 || vocab > int64_t(0x7fffffff))
    throw Error(kErrUnsupported, "sample: the vocabulary size is out of range");
  if (!scratch) throw Error(kErrArg, "sample: no scratch");
  const int64_t chunks = chunksOf(vocab);
  double* sums = static_cast<double*>(scratch);
  ChunkStat* stats = reinterpret_cast<ChunkStat*>(sums + size_t(rows) * size_t(chunks));
  if (penalties) {
    penaltyKernel<<<unsigned(rows), kScanThreads, 0, d.stream>>>(logits, vocab, params, penalties);
    CUDA_CHECK_LAUNCH();
  }
  const dim3 grid{unsigned(chunks), unsigned(rows)};
  scanKernel<<<grid, kScanThreads, 0, d.stream>>>(logits, vocab, params, stats, chunks);
  CUDA_CHECK_LAUNCH();
  sumKernel<<<grid, kScanThreads, 0, d.stream>>>(logits, vocab, params, stats, sums, chunks);
  CUDA_CHECK_LAUNCH();
  pickKernel<<<unsigned(rows), kThreads, 0, d.stream>>>(tokens, logits, vocab, params, stats, sums, chunks);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
