// Internal to the engine (engine.cc, engine_plan.cc): the step's buffers in backend memory, and
// what the host decides for a forward pass before its chunks run (the order of its rows, their
// penalty lists) and for each chunk (its facts and plan, staged for the one upload).
#pragma once
#include <cstdint>
#include <vector>

#include "engine.h"

namespace dg {

// The step's buffers in backend memory, and their host staging copy. One allocation:
//
//   work: attnIdx[R] attnCount mlpIdx[R] mlpCount skipIdx[R] skipCount   (backend only)
//   in:   tokens[R] pos[R] seq[R] logitRows[R] | seqs: KvCacheRef[R] | sample: SampleRow[R]
//         penalties: PenaltyToken[P]  (the penalised rows' (id, count) lists; P only grows, so the
//         layout, and with it a device's captured step, stays the same from step to step)
//   plan: attn u8[L*R] mlp u8[L*R] (padded) weight f32[L*R]              <- uploaded with `in`
//   out:  tokens i32[R] | logits f32[logit rows * vocab]                 <- downloaded with `plan`
//
// R is the chunk's row count: offsets are computed per chunk, within a buffer sized for kChunk.
// One upload covers in + plan and one download covers plan + out, so a step costs the host two
// transfers whatever the policy.
struct Engine::StepBuffers {
  struct Layout {
    size_t attnIdx, attnCount, mlpIdx, mlpCount, skipIdx, skipCount;
    size_t tokens, pos, seq, logitRows, seqs, sample, penalties, planAttn, planMlp, planWeight, outTokens, logits, end;
  };
  static size_t align(size_t x, size_t a) { return (x + a - 1) / a * a; }
  static Layout layout(int64_t rows, int layers, int64_t vocab, int64_t logitRows, size_t penaltyCap) {
    Layout o{};
    size_t R = size_t(rows), L = size_t(layers), at = 0;
    auto take = [&](size_t bytes) {
      at = align(at, 64);
      size_t here = at;
      at += bytes;
      return here;
    };
    o.attnIdx = take(4 * R);
    o.attnCount = take(4);
    o.mlpIdx = take(4 * R);
    o.mlpCount = take(4);
    o.skipIdx = take(4 * R);
    o.skipCount = take(4);
    o.tokens = take(4 * R);
    o.pos = take(4 * R);
    o.seq = take(4 * R);
    o.logitRows = take(4 * R);
    o.seqs = take(sizeof(KvCacheRef) * R);
    o.sample = take(sizeof(SampleRow) * R);
    o.penalties = take(sizeof(PenaltyToken) * penaltyCap);
    o.planAttn = take(L * R);
    o.planMlp = take(L * R);
    o.planWeight = take(4 * L * R);
    o.outTokens = take(4 * R);
    o.logits = take(4 * size_t(logitRows) * size_t(vocab));
    o.end = at;
    return o;
  }
  Ops* ops = nullptr;
  char* dev = nullptr;  // backend memory
  size_t capacity = 0;
  size_t penaltyCap = 0;   // PenaltyToken entries the layout holds (grows by doubling, never shrinks)
  std::vector<char> host;  // staging for in + plan, and the downloaded plan + out
  ~StepBuffers() {
    if (dev) ops->release(dev);
  }
  void reserve(size_t bytes) {
    if (bytes <= capacity) return;
    if (dev) ops->release(dev);
    dev = nullptr;
    capacity = 0;
    dev = static_cast<char*>(ops->alloc(bytes));
    capacity = bytes;
  }
  template <class T>
  T* d(size_t off) {
    return reinterpret_cast<T*>(dev + off);
  }
  template <class T>
  T* h(size_t off) {
    return reinterpret_cast<T*>(host.data() + off);
  }
};

// One row of a forward: row `idx` of request `req`.
struct RowRef {
  size_t req;
  size_t idx;
};

struct ForwardPlan {
  // The rows in the order they run: the rows of the requests that follow the pass's policy
  // first, then those of the full-depth requests (Request::fullDepth), each request's rows in
  // order (a chunk writes its K/V before the next chunk reads them). Every chunk's policy rows
  // are thus a prefix of it, the rows that routers and host plans look at.
  std::vector<RowRef> rows;
  // The penalty lists of the rows that have one (see rowPenalized), each over the window of the
  // context that ends at the row's own token; per entry of `rows`, its start and count (0: none).
  std::vector<PenaltyToken> penalties;
  std::vector<int32_t> penaltyStart, penaltyCount;
};

struct Engine::ChunkStage {
  int64_t rows = 0;
  int64_t policyRows = 0;           // the prefix of the chunk's rows under the policy
  Policy* policy = nullptr;         // the pass's policy, or null when the chunk has no policy rows
  int64_t logitRows = 0;            // rows with logits (their list: logitRows in the step buffers)
  bool downloadLogits = false;      // some request asked for logits back
  bool sampleOp = false;            // some row draws a token or has its logits penalised
  std::vector<int32_t> logitRowOf;  // per chunk row: its logits row, or -1
  std::vector<uint8_t> hostRun;     // [2 * layers]: what the host knows of attention and MLP (HostRun)
  StepBuffers::Layout layout;
};

// Row j of `rq` gets a logits row: every row for All, the last one for Last or a sample.
inline bool rowHasLogits(const Request& rq, size_t j) {
  const bool last = j + 1 == rq.tokens.size();
  return rq.logits == LogitsMode::All || (last && (rq.logits == LogitsMode::Last || rq.sample));
}
// Row j of `rq` has its logits penalised: the drawn row of a penalised sample, or any logits row
// of a request with penalizeLogits.
inline bool rowPenalized(const Request& rq, size_t j) {
  if (!rq.sampling.penalized() || !rowHasLogits(rq, j)) return false;
  return rq.penalizeLogits || (rq.sample && j + 1 == rq.tokens.size());
}

// The rows in pass order and their penalty lists. The sequences' contexts already hold the
// pass's tokens; advances their penalty windows.
ForwardPlan planForward(std::vector<Request>& requests);

// What the host knows of a layer's rows before the step: all run, none run, or some.
enum HostRun : int { kSome = 0, kAll = 1, kNone = 2 };

}  // namespace dg
