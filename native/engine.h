// The decoder forward pass over a ragged batch: any number of sequences, each bringing any
// number of new tokens (a prompt to prefill, or one token to decode), each with its own KV cache.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "model.h"

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
};

struct Response {
  std::vector<float> logits;  // [rows, vocab]: 1 row for Last, tokens.size() for All
  int32_t token = -1;         // sampled from the last row when Request::sample
};

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, std::unique_ptr<Ops> ops);
  ~Engine();

  const Model& model() const { return *model_; }
  Ops& ops() { return *ops_; }

  std::unique_ptr<Sequence> createSequence(int64_t maxContext, uint64_t seed);
  // Runs every request in one pass per layer. Throws dg::Error (context overflow, memory)
  // before any cache is modified when a request cannot fit.
  void forward(std::vector<Request>& requests, std::vector<Response>& responses);
  void truncate(Sequence& s, int64_t length);  // forget positions >= length
  void releaseSequence(Sequence& s);

 private:
  void ensureCapacity(Sequence& s, int64_t needed);
  void ensureScratch(int64_t rows);
  void runChunk(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
                const std::vector<Sequence*>& seqs, int64_t rows);

  std::shared_ptr<Model> model_;
  std::unique_ptr<Ops> ops_;
  std::vector<Weight> deviceWeights_;
  std::mutex mu_;  // one forward at a time per engine
  // Scratch, sized for kChunk rows.
  int64_t scratchRows_ = 0;
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *kNew_ = nullptr, *vNew_ = nullptr, *att_ = nullptr,
        *proj_ = nullptr, *gate_ = nullptr, *up_ = nullptr;
  std::vector<float*> small_;  // norms and biases in backend memory
  struct LayerDev {
    const float *inputNorm, *postAttnNorm, *qB, *kB, *vB, *oB, *gateB, *upB, *downB;
    Weight q, k, v, o, gate, up, down;
  };
  std::vector<LayerDev> layers_;
  const float* finalNorm_ = nullptr;
  const float* invFreq_ = nullptr;
  Weight embed_, lmHead_;
};

}  // namespace dg
