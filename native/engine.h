// The decoder forward pass over a ragged batch: any number of sequences, each bringing any
// number of new tokens (a prompt to prefill, or one token to decode), each with its own KV cache,
// with a skip policy deciding per token and per layer what runs.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "model.h"
#include "policy.h"

namespace dg {

class Engine;

// One sequence's KV cache: per layer, K and V of every position so far, [capacity, nKv*headDim],
// in backend memory. Grows by doubling up to maxContext.
struct Sequence {
  Engine* engine = nullptr;
  int64_t maxContext = 0;
  int64_t capacity = 0;
  int64_t length = 0;  // positions whose K/V are written in every layer
  std::vector<float*> k, v;
  uint64_t rng = 0;
  ~Sequence();
};

enum class LogitsMode { None, Last, All };

struct Request {
  Sequence* seq = nullptr;
  std::vector<int32_t> tokens;
  LogitsMode logits = LogitsMode::Last;
  bool sample = false;
  SamplingParams sampling;
  // D3 counts generated tokens: with hasGenIndex, row i of this request produces generated token
  // genIndex + i (rows whose index is < 1 are prompt rows: full depth). Several rows happen when
  // a known continuation is scored (evaluate's generatedFrom); a decode step has one row.
  bool hasGenIndex = false;
  int32_t genIndex = 0;
};

struct Response {
  std::vector<float> logits;     // [rows, vocab]: 1 row for Last (or sample), tokens.size() for All
  std::vector<uint8_t> executed;  // [rows, layers]: 1 where the layer's full computation ran
  std::vector<float> weights;     // [rows, layers]: router weight, NaN where there is none
  int32_t token = -1;             // sampled from the last row when Request::sample
  uint64_t weightBytes = 0;       // weight bytes the whole batch pass read (same for every response)
};

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, std::unique_ptr<Ops> ops);
  ~Engine();

  const Model& model() const { return *model_; }
  Ops& ops() { return *ops_; }

  std::unique_ptr<Sequence> createSequence(int64_t maxContext, uint64_t seed);
  // Runs every request in one pass per layer under `policy`. Throws dg::Error (context overflow,
  // bad policy, memory) before any cache is modified when a request cannot fit. When `cancel`
  // becomes true (the environment is being torn down) the pass stops at the next layer with
  // kErrAborted; a sequence's length only advances when its pass completes, so K/V rows written
  // by a pass that threw are never read.
  void forward(std::vector<Request>& requests, std::vector<Response>& responses, const PolicySpec& policy,
               const std::atomic<bool>* cancel = nullptr);
  void truncate(Sequence& s, int64_t length);  // forget positions >= length
  void releaseSequence(Sequence& s);

  // Weights and norms as the backend holds them.
  struct LayerDev {
    const float *inputNorm, *postAttnNorm, *qB, *kB, *vB, *oB, *gateB, *upB, *downB;
    Weight q, k, v, o, gate, up, down;
    bool flexi = false;
    Weight fEnc, fDec, fHead, fGate, fDown, fUp;
    const float* fNorm = nullptr;
    Weight sLayer, sAttn, sMlp;
  };
  const LayerDev& layer(int l) const { return layers_[size_t(l)]; }
  // Every weight product goes through here, so the pass can count the weight bytes it reads
  // (a matrix is read once per call, whatever the number of rows; none when rows == 0).
  void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows, const Weight& W, const float* bias) {
    if (rows <= 0) return;
    bytesRead_ += W.bytes();
    ops_->matmul(out, ldo, x, ldx, rows, W, bias);
  }
  // Scratch for routers: [rows, n] floats of backend memory, and a host copy for decisions.
  float* routerScratch(int which) { return which == 0 ? r0_ : r1_; }
  std::vector<float>& routerHost() { return routerHost_; }

 private:
  void ensureCapacity(Sequence& s, int64_t needed);
  void ensureScratch(int64_t rows);
  void runChunk(const std::vector<int32_t>& tokens, const std::vector<RowMeta>& meta,
                const std::vector<Sequence*>& seqs, int64_t rows, Policy* policy, uint8_t* executed, float* weights,
                const std::atomic<bool>* cancel);
  void routedMlp(const LayerDev& L, int layer, int64_t rows, LayerPlan& plan, Policy* policy);

  std::shared_ptr<Model> model_;
  std::unique_ptr<Ops> ops_;
  std::mutex mu_;  // one forward at a time per engine
  // Scratch, sized for kChunk rows.
  int64_t scratchRows_ = 0;
  float *x_ = nullptr, *xn_ = nullptr, *xg_ = nullptr, *q_ = nullptr, *kNew_ = nullptr, *vNew_ = nullptr,
        *att_ = nullptr, *proj_ = nullptr, *gate_ = nullptr, *up_ = nullptr, *r0_ = nullptr, *r1_ = nullptr;
  std::vector<float> routerHost_;
  std::vector<float*> small_;  // norms and biases in backend memory
  std::vector<LayerDev> layers_;
  const float* finalNorm_ = nullptr;
  const float* invFreq_ = nullptr;
  Weight embed_, lmHead_;
  // Per-chunk index lists (host); the CUDA backend will keep them on the device.
  std::vector<int32_t> attnIdx_, mlpIdx_, adaIdx_, posAct_;
  std::vector<float> mlpScale_, adaScale_;
  uint64_t bytesRead_ = 0;
};

}  // namespace dg
