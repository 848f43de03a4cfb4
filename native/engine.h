// The decoder forward pass over a ragged batch: any number of sequences, each bringing any
// number of new tokens (a prompt to prefill, or one token to decode), each with its own KV cache,
// with a skip policy deciding per token and per layer what runs.
//
// A step (one chunk of at most kChunk rows) talks to the backend twice: one upload of the step's
// facts (tokens, positions, sequences, host-known plan, sampling parameters) at the start, and one
// download of what the caller needs (the plan as executed, sampled tokens, logits when asked) at
// the end. Everything between is backend ops, routing included (see backend.h).
#pragma once
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "model.h"
#include "penalty_window.h"
#include "policy.h"

namespace dg {

class Engine;
struct ForwardPlan;  // engine_step.h
struct AheadStep;    // below

// One sequence's KV cache: K and V blocks of [layers][capacity][nKv * headDim] in the cache dtype,
// in backend memory. Grows by doubling up to maxContext.
struct Sequence {
  Engine* engine = nullptr;
  int64_t maxContext = 0;
  int64_t capacity = 0;
  int64_t length = 0;  // positions whose K/V are written in every layer
  void* k = nullptr;
  void* v = nullptr;
  uint64_t rng = 0;
  // The tokens at positions 0 .. length - 1 (entries past length belong to a pass in flight or
  // one that failed), and their counts in the window the repetition penalties look at.
  std::vector<int32_t> context;
  PenaltyWindow penalties;
  // A decode step run ahead of the caller's request for it (engine_ahead.cc). The model's thread
  // runs it while the JavaScript thread may read or cut the sequence, so its state is guarded.
  pthread_mutex_t aheadMu = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t aheadCv = PTHREAD_COND_INITIALIZER;
  std::unique_ptr<AheadStep> ahead;  // under aheadMu; null when none was ever run
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
  // The request's rows run every layer whatever the pass's policy (exact mode's verify rows
  // sharing a pass with other sequences' draft rows): routers and host plans skip them.
  bool fullDepth = false;
  // The penalties in `sampling` are applied to every logits row the request gets back, each over
  // the window that ends at its own token (the logits a plain pass would sample from there),
  // without drawing (exact mode builds its distributions from them).
  bool penalizeLogits = false;
  // A generation's decode step that will be followed by the next one: once it is answered, the
  // model's thread runs that next step (the sampled token, genIndex + 1) ahead, unless the token
  // is one of aheadStop (engine_ahead.cc).
  bool ahead = false;
  std::vector<int32_t> aheadStop;
};

struct Response {
  std::vector<float> logits;         // [rows, vocab]: 1 row for Last, tokens.size() for All, none otherwise
  std::vector<uint8_t> executed;     // [rows, layers]: 1 where the layer's full computation ran
  std::vector<float> routerWeights;  // [rows, layers]: FlexiDepth router weight w, NaN where there is none
  int32_t token = -1;                // sampled from the last row when Request::sample
  uint64_t weightBytes = 0;          // weight bytes the whole batch pass read (same for every response)
};

// A decode step run ahead: the request it answers, its response, and what it changed in its
// sequence so that it can be undone (engine_ahead.cc).
struct AheadStep {
  enum State { None, Running, Ready } state = None;
  Request request;
  PolicySpec policy;
  Response response;
  int64_t length = 0;  // the sequence's length before the step
  uint64_t rng = 0;    // and its generator
};

// Rows per step through the layers. Long prompts run in chunks so scratch memory stays bounded;
// each chunk writes its K/V before the next chunk's queries read them.
constexpr int64_t kChunk = 256;

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, std::unique_ptr<Ops> ops, DType kvType);
  ~Engine();

  const Model& model() const { return *model_; }
  Ops& ops() { return *ops_; }
  DType kvType() const { return kv_.kv; }
  // Bytes of KV cache per position of one sequence (K and V, every layer).
  size_t kvBytesPerPosition() const;

  std::unique_ptr<Sequence> createSequence(int64_t maxContext, uint64_t seed);
  // Runs every request in one pass per layer under `policy`. Throws dg::Error (context overflow,
  // bad policy, memory) before any cache is modified when a request cannot fit. When `cancel`
  // becomes true (the environment is being torn down) the pass stops at the next layer with
  // kErrAborted; a sequence's length only advances when its pass completes, so K/V rows written
  // by a pass that threw are never read.
  void forward(std::vector<Request>& requests, std::vector<Response>& responses, const PolicySpec& policy,
               const std::atomic<bool>* cancel = nullptr);
  void truncate(Sequence& s, int64_t length);  // forget positions >= length

  // Decode ahead (engine_ahead.cc). Model's thread, before a pass: a step run ahead answers a call
  // that is exactly the one request it was run for (true: `responses` filled); a step of any other
  // sequence of the call is undone. After a pass: aheadWanted says whether the call asked for the
  // next step and may have it; runAhead runs it (never throws: a failed step is undone).
  bool takeAhead(const std::vector<Request>& requests, std::vector<Response>& responses, const PolicySpec& policy);
  bool aheadWanted(const std::vector<Request>& requests, const std::vector<Response>& responses) const;
  void runAhead(const Request& done, const Response& got, const PolicySpec& policy, const std::atomic<bool>* cancel);
  // JavaScript thread, before it reads or changes a sequence: waits for a step in flight and
  // undoes a step nobody asked for yet. aheadLength: the length without such a step, no wait.
  void settleAhead(Sequence& s);
  int64_t aheadLength(Sequence& s);
  // K and V of `layer` at positions [0, s.length), in f32 (kvWidth each): for tests that compare
  // caches (kv_inspect.cc). Waits for a pass in flight.
  void readKv(const Sequence& s, int layer, std::vector<float>& k, std::vector<float>& v);
  void releaseSequence(Sequence& s);

  // Weights and norms as the backend holds them.
  struct LayerWeights {
    const float *inputNorm, *postAttnNorm;
    const float *qBias, *kBias, *vBias, *oBias, *gateBias, *upBias, *downBias;  // null when absent
    Weight q, k, v, o, gate, up, down;
  };
  struct FlexiDepthRouter {                      // present when the layer has FlexiDepth weights
    Weight enc, dec, head;                       // router: [r, d], [d, r], [1, d]
    const float* norm = nullptr;                 // [r]
    Weight adapterGate, adapterDown, adapterUp;  // adapter: [m, d], [m, d] (d -> m despite the name), [d, m]
  };
  struct SkipRouters {
    Weight layer, attn, mlp;  // [2, d] each; data null when absent
  };
  const LayerWeights& layer(int l) const { return layers_[size_t(l)]; }
  const FlexiDepthRouter* flexiDepthRouter(int l) const {
    return flexi_[size_t(l)].enc.data ? &flexi_[size_t(l)] : nullptr;
  }
  const SkipRouters& skipRouters(int l) const { return skip_[size_t(l)]; }
  // Router scratch in backend memory, for a policy's ops: [kChunk, hidden] and [kChunk, max router width].
  float* routerHidden() { return routerHidden_; }
  float* routerSmall() { return routerSmall_; }

 private:
  struct StepBuffers;  // engine_step.h
  struct ChunkStage;   // engine_step.h
  void ensureCapacity(Sequence& s, int64_t needed);
  void ensureScratch();
  // engine_plan.cc: the host-side facts and plan of one chunk of a forward, staged for upload.
  ChunkStage stageChunk(const std::vector<Request>& requests, const ForwardPlan& plan, size_t start, size_t end,
                        Policy* policy);
  // Runs a chunk's rows through every layer; routers and host plans see its first `policyRows`.
  void runChunk(int64_t rows, int64_t policyRows, Policy* policy, const std::vector<uint8_t>& hostRun,
                const std::atomic<bool>* cancel);
  void attentionBlock(int l, int64_t rows, const LayerFlags& f, bool routed, int hostRun);
  void mlpBlock(int l, int64_t rows, int64_t policyRows, Policy* policy, const LayerFlags& f, bool routed, int hostRun);
  uint64_t weightBytesOf(int64_t rows, const uint8_t* attn, const uint8_t* mlp, Policy* policy,
                         int64_t logitRows) const;

  std::shared_ptr<Model> model_;
  std::unique_ptr<Ops> ops_;
  AttnShape kv_;
  std::mutex mu_;  // one forward at a time per engine
  // Activations, sized for kChunk rows (backend memory).
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *kNew_ = nullptr, *vNew_ = nullptr, *att_ = nullptr,
        *gate_ = nullptr, *routerHidden_ = nullptr, *routerSmall_ = nullptr;
  std::unique_ptr<StepBuffers> step_;
  std::vector<void*> small_;  // norms and biases in backend memory
  std::vector<LayerWeights> layers_;
  std::vector<FlexiDepthRouter> flexi_;
  std::vector<SkipRouters> skip_;
  const float* finalNorm_ = nullptr;
  const float* invFreq_ = nullptr;
  Weight embed_, lmHead_;
};

}  // namespace dg
