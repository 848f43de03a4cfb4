// CPU kernel families. Activations are f32 row-major; weights stay in their stored dtype.
// Each family lives in one file under native/cpu/; the CPU backend (cpu/cpu_backend.cc) is the
// only caller inside the engine, and the addon exposes them to tests and microbenchmarks.
#pragma once
#include <cstdint>

#include "tensor.h"
#include "threadpool.h"

namespace dg {

// cpu/features.cc: what the processor offers and which kernel variant the dispatcher chose.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false;
  bool avx512vl = false, avx512vnni = false;  // the block-quantized kernels' int8 dot (vpdpbusd)
  bool amd = false;                           // CPUID vendor "AuthenticAMD" (the prefetch level: matmul_common.h)
};
const CpuFeatures& cpuFeatures();
// "avx512", "avx2" or "scalar"; DEPTHGATE_CPU_KERNELS=scalar|avx2|avx512 caps it (for tests).
const char* cpuKernelVariant();
// The block-quantized kernels' variant under cpuKernelVariant(): "avx512vnni" (the avx512 variant
// on a processor with AVX512_VNNI and AVX512VL), "avx2" (avx2, or avx512 without VNNI) or "scalar".
const char* quantKernelVariant();
// Where the decode kernels' software prefetch puts the next row group: "l2", "l1" or "off"
// (cpu/matmul_common.h, kPrefetchLevel: why and the default). Read once.
const char* cpuPrefetchLevel();

// cpu/matmul.cc: out[r, o] = sum_i x[r, i] * W[o, i] (+ bias[o]), r < rows, o < W.rows.
// x is [rows, W.cols] with row stride ldx; out is [rows, W.rows] with row stride ldo.
// rows == 1 is the bandwidth-bound decode case (matrix-vector); larger rows reuse each
// converted weight block across rows (matrix-matrix). accumulate: out += the product (+ bias).
// A Q8_0/Q4_0 weight (W.cols a multiple of 32, else dg::Error kErrUnsupported) goes to
// cpu/matmul_quant.cc, which quantizes the x rows to int8 blocks first (see there); a Q4_K/Q6_K
// weight (W.cols a multiple of 256) to cpu/matmul_kquant.cc, likewise with 256-wide blocks; a
// Q8_0x16 weight (the CPU's repacked Q8_0) to cpu/matmul_repacked.cc.
void matmul(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W,
            const float* bias, bool accumulate = false);
// Several matrix-vector products over one x row in one parallel loop (decode: K and V, or Q, K
// and V): jobs[j].out (+)= jobs[j].W x + bias. At most 8 jobs.
struct GemvJob {
  float* out;
  const Weight* W;
  const float* bias;
  bool accumulate;
};
void matmulMany(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs);
// SwiGLU for one row in one parallel loop: out = silu(Wg x + bg) * (Wu x + bu).
void gateUpVector(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                  const float* bu);

// cpu/quantize.cc: llama.cpp's reference rounding for the block formats (tensor.h); decoding
// (dequantizeRow) is in cpu/convert.cc, the K-quants' both ways in cpu/kquant.cc. k must be a
// multiple of blockElements(t) (32, or 256 for Q4_K / Q6_K); `blocks` holds rowBytes(t, k) bytes.
void quantizeRow(DType t, const float* x, unsigned char* blocks, int64_t k);
void dequantizeRow(DType t, const unsigned char* blocks, float* out, int64_t k);
// Quantizes a whole weight (rows of any element type) into `out` (W.rows * rowBytes(t, W.cols)
// bytes), rows split across the pool. W.cols must be a multiple of blockElements(t). Returns false if W holds a
// non-finite value (coded as 0: a block format cannot hold it).
bool quantizeWeight(ThreadPool& pool, const Weight& W, DType t, unsigned char* out);

// cpu/matmul_repacked.cc: the CPU backend's layout for Q8_0 weights, Q8_0x16 (tensor.h).
// Whether the loader repacks Q8_0 matrices for the CPU backend: when the avx512vnni quantized variant
// runs (the only one with a Q8_0x16 kernel) and DEPTHGATE_CPU_REPACK is not "0". Read once.
bool cpuRepacksQ8_0();
// Repacks a Q8_0 weight (W.cols a multiple of 32, else dg::Error kErrUnsupported) into `out`
// (W.rows * rowBytes(Q8_0x16, W.cols) bytes), rows split across the pool.
void repackWeight(ThreadPool& pool, const Weight& W, unsigned char* out);

// cpu/norm.cc: out = x / sqrt(mean(x^2) + eps) * weight, per row of width `dim`.
// The mean of squares is accumulated in f32 like HF does (variance in fp32).
void rmsnorm(ThreadPool& pool, float* out, const float* x, int64_t rows, int64_t dim, const float* weight, float eps);

// cpu/rope.cc: rotates each head of each row in place by its position, HF "rotate_half"
// layout (pairs i and i + headDim/2). invFreq has headDim/2 entries.
void rope(ThreadPool& pool, float* x, int64_t ldx, int64_t rows, const int32_t* positions, int nHeads, int headDim,
          const float* invFreq);
// One row: every head of x rotated by position pos.
void ropeRow(float* x, int nHeads, int headDim, const float* invFreq, int32_t pos);

// cpu/activation.cc: gate[i] = silu(gate[i]) * up[i] over rows of width n.
void siluMul(ThreadPool& pool, float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t rows, int64_t n);

// cpu/attention.cc: causal attention for a batch of query rows over per-sequence KV caches.
// Row r has query q[r] ([nHeads*headDim]), absolute position pos[r], and reads keys/values
// at positions max(0, pos[r]-window+1) .. pos[r] from k[r]/v[r] (each [ctx, nKv*headDim] in
// the cache dtype kv: f32, f16 or bf16); window <= 0 means unlimited. Query head h reads KV
// head h / (nHeads / nKv).
struct AttentionRow {
  const float* q;
  const void* k;
  const void* v;
  float* out;
  int32_t pos;
};
void attention(ThreadPool& pool, const AttentionRow* rows, int64_t nRows, int nHeads, int nKv, int headDim, int window,
               float scale, DType kv);

// cpu/sampling.cc: picks a token from one row of logits.
struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy (argmax, lowest id on ties)
  int topK = 0;             // 0 = all
  float topP = 1.f;         // 1 = all
  // Penalties over the last penaltyWindow tokens of the context (0 = all of it), applied to the
  // logits before the above (the sample op, backend.h): see applyPenalty.
  float repetitionPenalty = 1.f;  // 1 = off
  float frequencyPenalty = 0.f;
  float presencePenalty = 0.f;
  int64_t penaltyWindow = 0;
  bool penalized() const { return repetitionPenalty != 1.f || frequencyPenalty != 0.f || presencePenalty != 0.f; }
};
// One token of a context window the repetition penalties look at, and how often it occurs there.
struct PenaltyToken {
  int32_t id = 0;
  int32_t count = 0;  // >= 1
};
// A logit of a token that occurs `count` (>= 1) times in the window, penalised: the repetition
// penalty r as Hugging Face transformers applies it (l / r when l > 0, l * r otherwise), then
// the frequency and presence penalties as OpenAI defines them (- count * f - p). Written once
// for the host and the device (cuda/sampling.cu) so both compute the same floats.
#if defined(__CUDACC__)
__host__ __device__
#endif
    inline float
    applyPenalty(float logit, int32_t count, float r, float f, float p) {
  const float l = logit > 0.f ? logit / r : logit * r;
#if defined(__CUDA_ARCH__)
  // Rounded steps, as the host computes them: no fused multiply-add.
  return __fsub_rn(__fsub_rn(l, __fmul_rn(float(count), f)), p);
#else
  return l - float(count) * f - p;
#endif
}
// Applies applyPenalty to logits[id] for each entry of the list (ids must be distinct and < vocab).
void applyPenalties(float* logits, int64_t vocab, const PenaltyToken* list, int64_t n, float r, float f, float p);
// Draws use `rngState` (advanced in place), so the same seed gives the same tokens.
int32_t sampleToken(const float* logits, int64_t vocab, const SamplingParams& p, uint64_t& rngState);
uint64_t rngNext(uint64_t& state);  // splitmix64

}  // namespace dg
