// Routing on the device: FlexiDepth's threshold decision, SkipLayer's argmax decision, and the
// stable compaction of run/skip flags into index lists and counts that later kernels read.
// Nothing here returns to the host.
#include "common.cuh"

namespace dg {
namespace cuda {
namespace {

// w = sigmoid(logit) in f32 as the CPU writes it (1 / (1 + exp(-x))); run = w > threshold. expf
// may differ from the host's expf in the last bit, so a w within one ulp of the threshold could
// decide differently on the two backends.
__global__ void routeThresholdKernel(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* __restrict__ logits,
                                     int64_t rows, float threshold) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const float w = 1.0f / (1.0f + expf(-logits[r]));
    const uint8_t run = w > threshold ? 1 : 0;
    runAttn[r] = run;
    runMlp[r] = run;
    weight[r] = w;
  }
}

// logits [rows, 2] = [skip, run]: run when run > skip (a tie, or NaN, skips). Exact.
__global__ void routeArgmaxKernel(uint8_t* run, const float* __restrict__ logits, int64_t rows) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x)
    run[r] = logits[2 * r + 1] > logits[2 * r] ? 1 : 0;
}

constexpr int kCompactThreads = 256;

// One block walks the flags in chunks of 256 rows; within a chunk, ballots give each row its rank
// among the earlier rows of its kind, so the lists come out in increasing row order (stable).
__global__ void __launch_bounds__(kCompactThreads)
    compactKernel(const uint8_t* __restrict__ flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
                  int32_t* skipCount) {
  constexpr int kW = kCompactThreads / 32;
  __shared__ int runW[kW], skipW[kW];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1u;
  int64_t runBase = 0, skipBase = 0;
  for (int64_t c0 = 0; c0 < rows; c0 += kCompactThreads) {
    const int64_t r = c0 + threadIdx.x;
    const bool in = r < rows;
    const bool on = in && flags[r] != 0;
    const unsigned runBits = __ballot_sync(0xffffffffu, on);
    const unsigned skipBits = __ballot_sync(0xffffffffu, in && !on);
    if (lane == 0) {
      runW[warp] = __popc(runBits);
      skipW[warp] = __popc(skipBits);
    }
    __syncthreads();
    int runBefore = 0, skipBefore = 0, runAll = 0, skipAll = 0;
    for (int w = 0; w < kW; w++) {
      if (w < warp) runBefore += runW[w], skipBefore += skipW[w];
      runAll += runW[w];
      skipAll += skipW[w];
    }
    if (on)
      runIdx[runBase + runBefore + __popc(runBits & below)] = int32_t(r);
    else if (in && skipIdx)
      skipIdx[skipBase + skipBefore + __popc(skipBits & below)] = int32_t(r);
    runBase += runAll;
    skipBase += skipAll;
    __syncthreads();  // runW/skipW are rewritten by the next chunk
  }
  if (threadIdx.x == 0) {
    *runCount = int32_t(runBase);
    if (skipCount) *skipCount = int32_t(skipBase);
  }
}

unsigned gridFor(int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceilDiv(n, 256), 1024))); }

}  // namespace

void launchRouteThreshold(const Dev& d, uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits,
                          int64_t rows, float threshold) {
  if (rows <= 0) return;
  routeThresholdKernel<<<gridFor(rows), 256, 0, d.stream>>>(runAttn, runMlp, weight, logits, rows, threshold);
  CUDA_CHECK_LAUNCH();
}

void launchRouteArgmax(const Dev& d, uint8_t* run, const float* logits, int64_t rows) {
  if (rows <= 0) return;
  routeArgmaxKernel<<<gridFor(rows), 256, 0, d.stream>>>(run, logits, rows);
  CUDA_CHECK_LAUNCH();
}

void launchCompact(const Dev& d, const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount,
                   int32_t* skipIdx, int32_t* skipCount) {
  if (rows > int64_t(0x7fffffff)) throw Error(kErrUnsupported, "compact: too many rows");
  // rows == 0 still writes the zero counts, as the CPU does.
  compactKernel<<<1, kCompactThreads, 0, d.stream>>>(flags, rows < 0 ? 0 : rows, runIdx, runCount, skipIdx, skipCount);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace dg
