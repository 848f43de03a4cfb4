// The op table: every operation the decoder's forward pass needs, over memory owned by the
// backend. The engine (engine.cc) is written only against this interface; the CPU backend
// (cpu/cpu_backend.cc) implements it with the kernels in native/cpu/, and the CUDA backend
// (cuda/, loaded at run time) implements the same table on the GPU.
//
// The design keeps a whole forward step on the backend, so that a GPU never waits for the host
// inside a step:
// - The step's facts (token ids, positions, which sequence each row belongs to, D3/static plans,
//   sampling parameters) are uploaded once, at the start of a step, into buffers the engine
//   keeps for the model's life (StepBuffers in engine_step.h).
// - Routing happens on the backend: router scores, the run/skip decision, the stable compaction
//   of the rows that run into an index list and its length are ops. Ops over "active rows" take
//   a RowSet whose count and indices live in backend memory, so the host never learns (or waits
//   for) how many rows a router chose.
// - Each sequence's KV cache is one block per K and V ([layers][capacity][nKv * headDim] in the
//   cache dtype); kernels find a row's cache from the sequence table and the layer index.
// - Sampling is an op; a step ends with one download of what the host needs (tokens, the per-row
//   plan, and logits only when asked).
//
// All pointers passed to ops are backend memory (host memory for the CPU backend) unless a
// parameter says "host". Activations are f32 row-major; weights are Weight views that the backend
// got from prepareWeight(). Every op is ordered after the ops before it; only download() and
// sync() make the host wait.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"
#include "tensor.h"

namespace dg {

// A set of rows an op reads. Row i (i < count) of the set is row idx[i] of the op's input (or
// row i when idx is null). count and idx are backend memory, so the set may be decided by an
// earlier op; `max` is the host-known bound (capacity) and count <= max. With count null the set
// is rows 0 .. max-1: a host-known, dense set.
struct RowSet {
  int64_t max = 0;
  const int32_t* count = nullptr;
  const int32_t* idx = nullptr;
  static RowSet dense(int64_t n) { return RowSet{n, nullptr, nullptr}; }
};

// Where a matmul's result goes. Store: out[i] = y_i (compact: row i of the set). Add:
// out[i] += y_i. ScatterAdd: out[dst[i]] += s_i * y_i, with s_i = 1, scale[dst[i]] or
// 1 - scale[dst[i]] (FlexiDepth's w and 1 - w, read where the router wrote them).
struct Epilogue {
  enum Mode : int32_t { Store = 0, Add = 1, ScatterAdd = 2 } mode = Store;
  const int32_t* dst = nullptr;  // ScatterAdd: destination rows (backend memory), one per row of the set
  enum Scale : int32_t { One = 0, W = 1, OneMinusW = 2 } scaleMode = One;
  const float* scale = nullptr;  // [rows of out], indexed by dst[i]
  static Epilogue store() { return Epilogue{}; }
  static Epilogue add() { return Epilogue{Add, nullptr, One, nullptr}; }
  static Epilogue scatterAdd(const int32_t* dst, Scale s = One, const float* scale = nullptr) {
    return Epilogue{ScatterAdd, dst, s, scale};
  }
};

// One sequence's KV cache as kernels see it: layer l, position p of K is at
// k + ((l * capacity) + p) * kvWidth elements of the cache dtype (the same for V).
struct KvCacheRef {
  void* k = nullptr;
  void* v = nullptr;
  int64_t capacity = 0;  // positions per layer
};

// The rows of one step, in backend memory: row r is at position pos[r] of sequence seq[r] of the
// sequence table `seqs`.
struct StepRows {
  int64_t rows = 0;              // host-known
  const int32_t* pos = nullptr;  // [rows]
  const int32_t* seq = nullptr;  // [rows] index into seqs
  const KvCacheRef* seqs = nullptr;
};

// The attention and cache geometry of a model.
struct AttnShape {
  int nHeads = 0, nKv = 0, headDim = 0;
  int window = 0;  // sliding window (0 = none): row at p reads positions p - window + 1 .. p
  // The cache dtype (f32, f16 or bf16): K and V are computed in f32 and rounded once, to nearest
  // even, when written; attention reads them in this dtype.
  DType kv = DType::F32;
  int64_t kvWidth() const { return int64_t(nKv) * headDim; }
};

// Per-row sampling parameters and generator state for the sample op (backend memory).
struct SampleRow {
  float temperature = 0.f;  // <= 0: greedy (argmax, lowest id on ties; draws nothing)
  int32_t topK = 0;         // 0 = all
  float topP = 1.f;         // 1 = all
  int32_t draw = 0;         // 0: this logits row needs no token (its penalties still apply)
  uint64_t rng = 0;         // splitmix64 state before the draw (one draw per sampled token)
  // Penalties over the tokens of the row's context window (see PenaltyToken): the row's entries
  // are penalties[penaltyStart .. penaltyStart + penaltyCount) of the sample op's list.
  float repetitionPenalty = 1.f;  // 1 = off
  float frequencyPenalty = 0.f;   // 0 = off
  float presencePenalty = 0.f;    // 0 = off
  int32_t penaltyStart = 0;
  int32_t penaltyCount = 0;
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual const char* name() const = 0;

  // ---- memory -----------------------------------------------------------------------------
  virtual void* alloc(size_t bytes) = 0;  // throws dg::Error(kErrMemory) when it cannot
  virtual void release(void* p) = 0;      // stream-ordered: the memory is reused only after pending ops
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // backend to backend
  // host -> backend. The host buffer may be reused as soon as upload returns.
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;
  // backend -> host: waits for every op before it, then copies.
  virtual void download(void* host, const void* src, size_t bytes) = 0;
  virtual void sync() = 0;                                   // waits for every op issued so far
  virtual Weight prepareWeight(const Weight& hostView) = 0;  // CPU: the mmap view itself

  // ---- the layer's dense ops (every row of the step) ---------------------------------------
  // x[r] = table[tokens[r]]
  virtual void embed(float* x, const int32_t* tokens, int64_t rows, const Weight& table) = 0;
  // out[i] = rmsnorm(x[set row i]) * weight (compact output)
  virtual void rmsnorm(float* out, const float* x, RowSet rows, int64_t dim, const float* weight, float eps) = 0;
  // y_i = W x[set row i] + bias, written as the epilogue says. ldx, ldo: row strides (floats).
  virtual void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W,
                      const float* bias, Epilogue ep) = 0;
  // Two matrices over the same input rows in one pass (K and V): out0 = W0 x (+b0), out1 = W1 x (+b1).
  virtual void matmul2(float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx, RowSet rows,
                       const Weight& W0, const float* b0, const Weight& W1, const float* b1) = 0;
  // SwiGLU in one pass: out[i] = silu(Wg x_i + bg) * (Wu x_i + bu), x_i = x[set row i].
  virtual void matmulGateUp(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                            const float* bg, const Weight& Wu, const float* bu) = 0;
  // Rotates K rows (HF rotate-half) at their positions and writes K and V of every step row
  // into its sequence's cache at (layer, pos), rounded to the cache dtype. k, v: [rows, kvWidth].
  virtual void kvWriteRope(float* k, const float* v, const StepRows& step, int layer, const AttnShape& a,
                           const float* invFreq) = 0;

  // ---- ops over the rows that run --------------------------------------------------------
  // Rotates q row i (compact) at the position of step row rows.idx[i].
  virtual void ropeRows(float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                        const float* invFreq) = 0;
  // Causal attention: out row i (compact) from q row i (compact), for step row rows.idx[i],
  // over that row's sequence cache at `layer`, positions max(0, pos - window + 1) .. pos.
  virtual void attention(float* out, const float* q, RowSet rows, const StepRows& step, int layer,
                         const AttnShape& a) = 0;
  // x[r] = tanh(x[r]) in place, for the rows r of the set (r = idx[i], or i when dense).
  virtual void tanhRows(float* x, RowSet rows, int64_t dim) = 0;

  // ---- routing ------------------------------------------------------------------------------
  // FlexiDepth's decision from router logits [rows]: w = sigmoid(logit), run = w > threshold.
  // Writes run into runAttn[r] and runMlp[r] (1/0) and w into weight[r].
  virtual void routeThreshold(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits, int64_t rows,
                              float threshold) = 0;
  // SkipLayer's decision from logits [rows, 2] ([skip, run]): run[r] = logits[r,1] > logits[r,0]
  // (a tie skips).
  virtual void routeArgmax(uint8_t* run, const float* logits, int64_t rows) = 0;
  // Stable compaction: runIdx = the rows r with flags[r] != 0 in increasing order, *runCount their
  // number; skipIdx/skipCount the others (skipIdx may be null when not needed).
  virtual void compact(const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
                       int32_t* skipCount) = 0;

  // ---- the end of a step ----------------------------------------------------------------------
  // tokens[i] = a token drawn from logits row i (vocab wide) under params[i], for the rows with
  // params[i].draw; params[i].rng is advanced by the draw (exactly one when temperature > 0,
  // none for greedy, so the host can follow the generator without reading it back).
  // First, in place, each row's penalties are applied to its logits (applyPenalty in kernels.h,
  // for every entry of its penalty list; ids in a row's list are distinct), drawing or not: a
  // caller that downloads the logits afterwards sees what the draw saw (or would see), before
  // temperature, top-k and top-p. `penalties` may be null when no row has a penalty list.
  virtual void sample(int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
                      const PenaltyToken* penalties) = 0;
};

// cpu/cpu_backend.cc
Ops* createCpuOps(int threads);
// Bytes currently allocated by all CPU backends (for leak tests).
size_t cpuBytesOutstanding();

}  // namespace dg
