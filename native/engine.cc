#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_step.h"
#include "errors.h"

namespace dg {

Sequence::~Sequence() {
  if (engine) engine->releaseSequence(*this);
}

Engine::Engine(std::shared_ptr<Model> model, std::unique_ptr<Ops> ops, DType kvType)
    : model_(std::move(model)), ops_(std::move(ops)) {
  const ModelConfig& c = model_->config;
  kv_.nHeads = c.heads;
  kv_.nKv = c.kvHeads;
  kv_.headDim = c.headDim;
  kv_.window = c.slidingWindow;
  kv_.kv = kvType;
  auto upload = [&](const std::vector<float>& v) -> const float* {
    if (v.empty()) return nullptr;
    void* p = ops_->alloc(v.size() * sizeof(float));
    small_.push_back(p);
    ops_->upload(p, v.data(), v.size() * sizeof(float));
    return static_cast<const float*>(p);
  };
  try {
    for (auto& L : model_->layers) {
      LayerWeights d;
      d.inputNorm = upload(L.inputNorm);
      d.postAttnNorm = upload(L.postAttnNorm);
      d.qBias = upload(L.qBias);
      d.kBias = upload(L.kBias);
      d.vBias = upload(L.vBias);
      d.oBias = upload(L.oBias);
      d.gateBias = upload(L.gateBias);
      d.upBias = upload(L.upBias);
      d.downBias = upload(L.downBias);
      d.q = ops_->prepareWeight(L.q);
      d.k = ops_->prepareWeight(L.k);
      d.v = ops_->prepareWeight(L.v);
      d.o = ops_->prepareWeight(L.o);
      d.gate = ops_->prepareWeight(L.gate);
      d.up = ops_->prepareWeight(L.up);
      d.down = ops_->prepareWeight(L.down);
      layers_.push_back(d);
      FlexiDepthRouter f;
      if (L.flexi.present) {
        f.enc = ops_->prepareWeight(L.flexi.enc);
        f.dec = ops_->prepareWeight(L.flexi.dec);
        f.head = ops_->prepareWeight(L.flexi.head);
        f.norm = upload(L.flexi.norm);
        f.adapterGate = ops_->prepareWeight(L.flexi.gate);
        f.adapterDown = ops_->prepareWeight(L.flexi.down);
        f.adapterUp = ops_->prepareWeight(L.flexi.up);
      }
      flexi_.push_back(f);
      SkipRouters s;
      if (L.skip.layer) s.layer = ops_->prepareWeight(L.skip.wLayer);
      if (L.skip.attn) s.attn = ops_->prepareWeight(L.skip.wAttn);
      if (L.skip.mlp) s.mlp = ops_->prepareWeight(L.skip.wMlp);
      skip_.push_back(s);
    }
    finalNorm_ = upload(model_->finalNorm);
    invFreq_ = upload(model_->invFreq);
    embed_ = ops_->prepareWeight(model_->embed);
    lmHead_ = ops_->prepareWeight(model_->lmHead);
    step_ = std::make_unique<StepBuffers>();
    step_->ops = ops_.get();
  } catch (...) {
    for (void* p : small_) ops_->release(p);
    throw;
  }
}

Engine::~Engine() {
  step_.reset();
  for (void* p : small_) ops_->release(p);
  for (float* p : {x_, xn_, q_, kNew_, vNew_, att_, gate_, routerHidden_, routerSmall_})
    if (p) ops_->release(p);
}

size_t Engine::kvBytesPerPosition() const {
  return 2 * size_t(model_->config.layers) * size_t(kv_.kvWidth()) * dtypeSize(kv_.kv);
}

std::unique_ptr<Sequence> Engine::createSequence(int64_t maxContext, uint64_t seed) {
  auto s = std::make_unique<Sequence>();
  s->engine = this;
  s->maxContext = maxContext;
  s->rng = seed;
  return s;
}

void Engine::releaseSequence(Sequence& s) {
  if (s.k) ops_->release(s.k);
  if (s.v) ops_->release(s.v);
  s.k = s.v = nullptr;
  s.capacity = 0;
  s.length = 0;
  s.context.clear();
  s.penalties.invalidate(0);
}

void Engine::truncate(Sequence& s, int64_t length) {
  if (length < s.length) s.length = std::max<int64_t>(0, length);
  s.context.resize(size_t(s.length));
  s.penalties.invalidate(s.length);
}

void Engine::ensureCapacity(Sequence& s, int64_t needed) {
  if (needed <= s.capacity) return;
  const int64_t cap = std::min(s.maxContext, std::max<int64_t>({needed, s.capacity * 2, 64}));
  const size_t layers = size_t(model_->config.layers);
  const size_t rowBytes = size_t(kv_.kvWidth()) * dtypeSize(kv_.kv);
  void* nk = ops_->alloc(layers * size_t(cap) * rowBytes);
  void* nv = nullptr;
  try {
    nv = ops_->alloc(layers * size_t(cap) * rowBytes);
  } catch (...) {
    ops_->release(nk);
    throw;
  }
  // Each layer's block moves to its new offset (the layer stride is the capacity).
  if (s.length > 0)
    for (size_t l = 0; l < layers; l++) {
      ops_->copy(static_cast<char*>(nk) + l * size_t(cap) * rowBytes,
                 static_cast<const char*>(s.k) + l * size_t(s.capacity) * rowBytes, size_t(s.length) * rowBytes);
      ops_->copy(static_cast<char*>(nv) + l * size_t(cap) * rowBytes,
                 static_cast<const char*>(s.v) + l * size_t(s.capacity) * rowBytes, size_t(s.length) * rowBytes);
    }
  if (s.k) ops_->release(s.k);
  if (s.v) ops_->release(s.v);
  s.k = nk;
  s.v = nv;
  s.capacity = cap;
}

void Engine::ensureScratch() {
  if (x_) return;
  const ModelConfig& c = model_->config;
  const size_t R = size_t(kChunk), d = size_t(c.hidden), qd = size_t(c.heads) * size_t(c.headDim),
               kvd = size_t(kv_.kvWidth());
  size_t ff = size_t(c.intermediate), routerWidth = 2;
  for (auto& f : flexi_)
    if (f.enc.data) {
      ff = std::max(ff, size_t(f.adapterGate.rows));
      routerWidth = std::max(routerWidth, size_t(f.enc.rows));
    }
  try {
    x_ = static_cast<float*>(ops_->alloc(4 * R * d));
    xn_ = static_cast<float*>(ops_->alloc(4 * R * d));
    q_ = static_cast<float*>(ops_->alloc(4 * R * qd));
    kNew_ = static_cast<float*>(ops_->alloc(4 * R * kvd));
    vNew_ = static_cast<float*>(ops_->alloc(4 * R * kvd));
    att_ = static_cast<float*>(ops_->alloc(4 * R * qd));
    gate_ = static_cast<float*>(ops_->alloc(4 * R * ff));
    routerHidden_ = static_cast<float*>(ops_->alloc(4 * R * d));
    routerSmall_ = static_cast<float*>(ops_->alloc(4 * R * routerWidth));
  } catch (...) {
    for (float** p : {&x_, &xn_, &q_, &kNew_, &vNew_, &att_, &gate_, &routerHidden_, &routerSmall_})
      if (*p) ops_->release(*p), *p = nullptr;
    throw;
  }
}

// The rows whose attention runs: host-known (all, none) or compacted on the backend.
void Engine::attentionBlock(int l, int64_t rows, const LayerFlags& f, bool routed, int hostRun) {
  const ModelConfig& c = model_->config;
  const LayerWeights& W = layers_[size_t(l)];
  const int64_t d = c.hidden, qd = int64_t(c.heads) * c.headDim;
  StepBuffers::Layout o = StepBuffers::layout(rows, c.layers, c.vocab, 0, step_->penaltyCap);
  RowSet A = RowSet::dense(rows);
  if (!routed && hostRun == kNone) return;
  if (routed || hostRun == kSome) {
    int32_t* idx = step_->d<int32_t>(o.attnIdx);
    int32_t* count = step_->d<int32_t>(o.attnCount);
    ops_->compact(f.attn, rows, idx, count, nullptr, nullptr);
    A = RowSet{rows, count, idx};
  }
  StepRows sr{rows, step_->d<int32_t>(o.pos), step_->d<int32_t>(o.seq), step_->d<KvCacheRef>(o.seqs)};
  ops_->matmul(q_, qd, xn_, d, A, W.q, W.qBias, Epilogue::store());
  ops_->ropeRows(q_, qd, A, sr, c.heads, c.headDim, invFreq_);
  ops_->attention(att_, q_, A, sr, l, kv_);
  // The output projection reads the compact attention rows and adds into their residual rows.
  const RowSet compactRows{rows, A.count, nullptr};
  ops_->matmul(x_, d, att_, qd, compactRows, W.o, W.oBias, A.idx ? Epilogue::scatterAdd(A.idx) : Epilogue::add());
}

// The MLP half of a layer: SwiGLU on the rows whose MLP runs (scaled by w for FlexiDepth),
// FlexiDepth's adapter scaled by (1 - w) on the rest, identity otherwise.
void Engine::mlpBlock(int l, int64_t rows, int64_t policyRows, Policy* policy, const LayerFlags& f, bool routed,
                      int hostRun) {
  const ModelConfig& c = model_->config;
  const LayerWeights& W = layers_[size_t(l)];
  const int64_t d = c.hidden, ff = c.intermediate;
  const bool flexi = policy && policy->flexiDepth(l);
  const bool after = policy && policy->routesMlpAfterAttention(l);
  StepBuffers::Layout o = StepBuffers::layout(rows, c.layers, c.vocab, 0, step_->penaltyCap);
  if (!routed && !after && hostRun == kNone) return;
  ops_->rmsnorm(xn_, x_, RowSet::dense(rows), d, W.postAttnNorm, c.rmsEps);
  if (after) policy->routeMlp(*this, l, xn_, policyRows, f);
  RowSet M = RowSet::dense(rows), S{};
  if (routed || after || hostRun == kSome) {
    int32_t* idx = step_->d<int32_t>(o.mlpIdx);
    int32_t* count = step_->d<int32_t>(o.mlpCount);
    int32_t* sIdx = flexi ? step_->d<int32_t>(o.skipIdx) : nullptr;
    int32_t* sCount = flexi ? step_->d<int32_t>(o.skipCount) : nullptr;
    ops_->compact(f.mlp, rows, idx, count, sIdx, sCount);
    M = RowSet{rows, count, idx};
    S = RowSet{rows, sCount, sIdx};
  }
  ops_->matmulGateUp(gate_, ff, xn_, d, M, W.gate, W.gateBias, W.up, W.upBias);
  const Epilogue ep = flexi   ? Epilogue::scatterAdd(M.idx, Epilogue::W, f.weight)
                      : M.idx ? Epilogue::scatterAdd(M.idx)
                              : Epilogue::add();
  ops_->matmul(x_, d, gate_, ff, RowSet{rows, M.count, nullptr}, W.down, W.downBias, ep);
  if (!flexi) return;
  // Skipped rows: adapter up(silu(gate(y)) * down(y)) scaled by (1 - w).
  const FlexiDepthRouter& R = flexi_[size_t(l)];
  const int64_t m = R.adapterGate.rows;
  ops_->matmulGateUp(gate_, m, xn_, d, S, R.adapterGate, nullptr, R.adapterDown, nullptr);
  ops_->matmul(x_, d, gate_, m, RowSet{rows, S.count, nullptr}, R.adapterUp, nullptr,
               Epilogue::scatterAdd(S.idx, Epilogue::OneMinusW, f.weight));
}

// One step of `rows` rows through every layer, from the uploaded step buffers. On return x_ holds
// the last hidden states and the plan in backend memory says what ran. Routers read the first
// `policyRows` rows (the rows after them run every layer: the uploaded plan says so).
void Engine::runChunk(int64_t rows, int64_t policyRows, Policy* policy, const std::vector<uint8_t>& hostRun,
                      const std::atomic<bool>* cancel) {
  const ModelConfig& c = model_->config;
  StepBuffers::Layout o = StepBuffers::layout(rows, c.layers, c.vocab, 0, step_->penaltyCap);
  const int64_t d = c.hidden, kvd = kv_.kvWidth();
  const StepRows sr{rows, step_->d<int32_t>(o.pos), step_->d<int32_t>(o.seq), step_->d<KvCacheRef>(o.seqs)};
  ops_->embed(x_, step_->d<int32_t>(o.tokens), rows, embed_);
  for (int l = 0; l < c.layers; l++) {
    if (cancel && cancel->load(std::memory_order_relaxed)) throw Error(kErrAborted, "the forward pass was cancelled");
    const LayerWeights& W = layers_[size_t(l)];
    ops_->rmsnorm(xn_, x_, RowSet::dense(rows), d, W.inputNorm, c.rmsEps);
    // Every token writes its K/V, skipped or not, so later tokens can attend to it.
    ops_->matmul2(kNew_, kvd, vNew_, kvd, xn_, d, RowSet::dense(rows), W.k, W.kBias, W.v, W.vBias);
    ops_->kvWriteRope(kNew_, vNew_, sr, l, kv_, invFreq_);
    const LayerFlags f{step_->d<uint8_t>(o.planAttn) + size_t(l) * size_t(rows),
                       step_->d<uint8_t>(o.planMlp) + size_t(l) * size_t(rows),
                       step_->d<float>(o.planWeight) + size_t(l) * size_t(rows)};
    const bool routed = policy && policy->routed(l);
    if (routed) policy->routeLayer(*this, l, xn_, policyRows, f);
    attentionBlock(l, rows, f, routed, hostRun[size_t(2 * l)]);
    mlpBlock(l, rows, policyRows, policy, f, routed, hostRun[size_t(2 * l + 1)]);
  }
}

// The weight bytes a step read, from the plan as executed: K/V projections and routers for every
// row, queries/attention/output and the MLP where any row ran them, FlexiDepth's adapter where any
// row skipped, the embedding rows and the LM head for the rows with logits.
uint64_t Engine::weightBytesOf(int64_t rows, const uint8_t* attn, const uint8_t* mlp, Policy* policy,
                               int64_t logitRows) const {
  const ModelConfig& c = model_->config;
  uint64_t bytes = uint64_t(rows) * rowBytes(embed_.dtype, c.hidden);
  for (int l = 0; l < c.layers; l++) {
    const LayerWeights& W = layers_[size_t(l)];
    const uint8_t* a = attn + size_t(l) * size_t(rows);
    const uint8_t* m = mlp + size_t(l) * size_t(rows);
    bool anyAttn = false, anyMlp = false, anySkipMlp = false;
    for (int64_t r = 0; r < rows; r++) {
      anyAttn |= a[r] != 0;
      anyMlp |= m[r] != 0;
      anySkipMlp |= m[r] == 0;
    }
    bytes += W.k.bytes() + W.v.bytes();
    if (anyAttn) bytes += W.q.bytes() + W.o.bytes();
    if (anyMlp) bytes += W.gate.bytes() + W.up.bytes() + W.down.bytes();
    if (policy && policy->routed(l)) {
      const FlexiDepthRouter& f = flexi_[size_t(l)];
      const SkipRouters& s = skip_[size_t(l)];
      if (policy->flexiDepth(l)) {
        bytes += f.enc.bytes() + f.dec.bytes() + f.head.bytes();
        if (anySkipMlp) bytes += f.adapterGate.bytes() + f.adapterDown.bytes() + f.adapterUp.bytes();
      } else {
        if (s.layer.data) bytes += s.layer.bytes();
        if (s.attn.data) bytes += s.attn.bytes();
      }
    }
    if (policy && policy->routesMlpAfterAttention(l)) bytes += skip_[size_t(l)].mlp.bytes();
  }
  if (logitRows > 0) bytes += lmHead_.bytes();
  return bytes;
}

void Engine::forward(std::vector<Request>& requests, std::vector<Response>& responses, const PolicySpec& spec,
                     const std::atomic<bool>* cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  const ModelConfig& c = model_->config;
  const int L = c.layers;
  std::unique_ptr<Policy> policy = makePolicy(*this, spec);
  // A checkpoint rewritten in place since the load would give a mixture of old and new weights
  // (and a truncated one SIGBUS): refuse before the pass, and after it, so a pass during which
  // the file changed reports nothing computed from it.
  model_->store.checkUnchanged();
  // Validate everything before touching any cache.
  for (auto& rq : requests) {
    if (!rq.seq) throw Error(kErrArg, "request has no sequence");
    if (rq.tokens.empty()) throw Error(kErrArg, "request has no tokens");
    for (int32_t t : rq.tokens)
      if (t < 0 || t >= c.vocab)
        throw Error(kErrArg, "token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                 std::to_string(c.vocab - 1) + ")");
    int64_t need = rq.seq->length + int64_t(rq.tokens.size());
    if (need > rq.seq->maxContext)
      throw Error(kErrContext, "the sequence needs " + std::to_string(need) + " positions but its context holds " +
                                   std::to_string(rq.seq->maxContext));
    for (auto& other : requests)
      if (&other != &rq && other.seq == rq.seq) throw Error(kErrArg, "a sequence appears twice in one batch");
  }
  for (auto& rq : requests) ensureCapacity(*rq.seq, rq.seq->length + int64_t(rq.tokens.size()));
  ensureScratch();

  // Each context takes the pass's tokens now (the penalty windows count them); a pass that throws
  // leaves them past `length`, where the next pass overwrites them, and its counts are dropped.
  struct ContextRollback {
    std::vector<Request>& rqs;
    bool done = false;
    ~ContextRollback() {
      if (done) return;
      for (auto& rq : rqs) {
        rq.seq->context.resize(size_t(rq.seq->length));
        rq.seq->penalties.invalidate(rq.seq->length);
      }
    }
  } rollback{requests};
  for (auto& rq : requests) {
    rq.seq->context.resize(size_t(rq.seq->length));
    rq.seq->context.insert(rq.seq->context.end(), rq.tokens.begin(), rq.tokens.end());
  }
  // The rows in pass order (policy rows first) and every penalised row's list, uploaded with
  // every chunk (a row reads its own).
  const ForwardPlan plan = planForward(requests);
  if (plan.penalties.size() > step_->penaltyCap) {
    size_t cap = std::max<size_t>(256, step_->penaltyCap);
    while (cap < plan.penalties.size()) cap *= 2;
    step_->penaltyCap = cap;
  }
  const size_t penaltyCap = step_->penaltyCap;

  // Rows that report back (logits and what ran): every row for All, the last one otherwise.
  responses.assign(requests.size(), Response());
  for (size_t i = 0; i < requests.size(); i++) {
    const Request& rq = requests[i];
    size_t reported = rq.logits == LogitsMode::All ? rq.tokens.size() : 1;
    size_t withLogits = rq.logits == LogitsMode::All ? rq.tokens.size() : rq.logits == LogitsMode::Last ? 1 : 0;
    responses[i].logits.resize(withLogits * size_t(c.vocab));
    responses[i].executed.resize(reported * size_t(L));
    responses[i].routerWeights.resize(reported * size_t(L));
  }

  // The rows chunk by chunk.
  const std::vector<RowRef>& all = plan.rows;
  uint64_t weightBytes = 0;
  for (size_t start = 0; start < all.size(); start += size_t(kChunk)) {
    const size_t end = std::min(all.size(), start + size_t(kChunk));
    const ChunkStage st = stageChunk(requests, plan, start, end, policy.get());
    const int64_t rows = st.rows, nLogits = st.logitRows;
    const StepBuffers::Layout& o = st.layout;
    const std::vector<int32_t>& logitRowOf = st.logitRowOf;
    ops_->upload(step_->dev + o.tokens, step_->host.data() + o.tokens, o.outTokens - o.tokens);  // in + plan

    runChunk(rows, st.policyRows, st.policy, st.hostRun, cancel);

    if (nLogits > 0) {
      const RowSet logitRows{nLogits, nullptr, step_->d<int32_t>(o.logitRows)};
      float* logits = step_->d<float>(o.logits);
      ops_->rmsnorm(xn_, x_, logitRows, c.hidden, finalNorm_, c.rmsEps);
      ops_->matmul(logits, c.vocab, xn_, c.hidden, RowSet::dense(nLogits), lmHead_, nullptr, Epilogue::store());
      if (st.sampleOp)
        ops_->sample(step_->d<int32_t>(o.outTokens), logits, nLogits, c.vocab, step_->d<SampleRow>(o.sample),
                     penaltyCap ? step_->d<PenaltyToken>(o.penalties) : nullptr);
    }
    // The one download of the step: the plan as executed, sampled tokens, logits when asked.
    const size_t downloadEnd = st.downloadLogits ? o.end : o.logits;
    ops_->download(step_->host.data() + o.planAttn, step_->dev + o.planAttn, downloadEnd - o.planAttn);
    const uint8_t* pa = step_->h<uint8_t>(o.planAttn);
    const uint8_t* pm = step_->h<uint8_t>(o.planMlp);
    const float* pw = step_->h<float>(o.planWeight);
    weightBytes += weightBytesOf(rows, pa, pm, st.policy, nLogits);

    for (size_t i = start; i < end; i++) {
      const size_t r = i - start;
      const Request& rq = requests[all[i].req];
      Response& rs = responses[all[i].req];
      const bool last = all[i].idx + 1 == rq.tokens.size();
      if (rq.logits == LogitsMode::All || last) {
        const size_t slot = rq.logits == LogitsMode::All ? all[i].idx : 0;
        for (int l = 0; l < L; l++) {
          const size_t p = size_t(l) * size_t(rows) + r;
          rs.executed[slot * size_t(L) + size_t(l)] = pa[p] && pm[p];
          // A full-depth row's w of 1 is the engine's, not a router's.
          rs.routerWeights[slot * size_t(L) + size_t(l)] = rq.fullDepth ? NAN : pw[p];
        }
      }
      const int32_t lr = logitRowOf[r];
      if (lr >= 0 && rq.logits != LogitsMode::None) {
        const size_t slot = rq.logits == LogitsMode::All ? all[i].idx : 0;
        std::memcpy(rs.logits.data() + slot * size_t(c.vocab), step_->h<float>(o.logits) + size_t(lr) * size_t(c.vocab),
                    size_t(c.vocab) * sizeof(float));
      }
      if (lr >= 0 && last && rq.sample) {
        rs.token = step_->h<int32_t>(o.outTokens)[lr];
        // The backend advanced its copy of the generator by the one draw a sampled token takes.
        if (rq.sampling.temperature > 0.f) rngNext(rq.seq->rng);
      }
    }
  }
  model_->store.checkUnchanged();
  rollback.done = true;
  for (size_t i = 0; i < requests.size(); i++) {
    responses[i].weightBytes = weightBytes;
    requests[i].seq->length += int64_t(requests[i].tokens.size());
  }
}

}  // namespace dg
