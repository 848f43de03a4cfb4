#include "engine.h"

#include <algorithm>
#include <cstring>

#include "errors.h"

namespace dg {

// Rows per pass through the layers. Long prompts run in chunks so scratch memory stays bounded;
// each chunk writes its K/V before the next chunk's queries read them.
constexpr int64_t kChunk = 256;

Sequence::~Sequence() {
  if (engine) engine->releaseSequence(*this);
}

Engine::Engine(std::shared_ptr<Model> model, std::unique_ptr<Ops> ops)
    : model_(std::move(model)), ops_(std::move(ops)) {
  auto upload = [&](const std::vector<float>& v) -> const float* {
    if (v.empty()) return nullptr;
    float* p = ops_->alloc(v.size());
    small_.push_back(p);
    ops_->upload(p, v.data(), v.size());
    return p;
  };
  try {
    for (auto& L : model_->layers) {
      LayerDev d;
      d.inputNorm = upload(L.inputNorm);
      d.postAttnNorm = upload(L.postAttnNorm);
      d.qB = upload(L.qBias);
      d.kB = upload(L.kBias);
      d.vB = upload(L.vBias);
      d.oB = upload(L.oBias);
      d.gateB = upload(L.gateBias);
      d.upB = upload(L.upBias);
      d.downB = upload(L.downBias);
      d.q = ops_->prepareWeight(L.q);
      d.k = ops_->prepareWeight(L.k);
      d.v = ops_->prepareWeight(L.v);
      d.o = ops_->prepareWeight(L.o);
      d.gate = ops_->prepareWeight(L.gate);
      d.up = ops_->prepareWeight(L.up);
      d.down = ops_->prepareWeight(L.down);
      if (L.flexi.present) {
        d.flexi = true;
        d.fEnc = ops_->prepareWeight(L.flexi.enc);
        d.fDec = ops_->prepareWeight(L.flexi.dec);
        d.fHead = ops_->prepareWeight(L.flexi.head);
        d.fNorm = upload(L.flexi.norm);
        d.fGate = ops_->prepareWeight(L.flexi.gate);
        d.fDown = ops_->prepareWeight(L.flexi.down);
        d.fUp = ops_->prepareWeight(L.flexi.up);
      }
      if (L.skip.layer) d.sLayer = ops_->prepareWeight(L.skip.wLayer);
      if (L.skip.attn) d.sAttn = ops_->prepareWeight(L.skip.wAttn);
      if (L.skip.mlp) d.sMlp = ops_->prepareWeight(L.skip.wMlp);
      layers_.push_back(d);
    }
    finalNorm_ = upload(model_->finalNorm);
    invFreq_ = upload(model_->invFreq);
    embed_ = ops_->prepareWeight(model_->embed);
    lmHead_ = ops_->prepareWeight(model_->lmHead);
  } catch (...) {
    for (float* p : small_) ops_->release(p);
    throw;
  }
}

Engine::~Engine() {
  for (float* p : small_) ops_->release(p);
  for (float* p : {x_, xn_, xg_, q_, kNew_, vNew_, att_, proj_, gate_, up_, r0_, r1_})
    if (p) ops_->release(p);
}

std::unique_ptr<Sequence> Engine::createSequence(int64_t maxContext, uint64_t seed) {
  auto s = std::make_unique<Sequence>();
  s->engine = this;
  s->maxContext = maxContext;
  s->rng = seed;
  s->k.assign(size_t(model_->config.layers), nullptr);
  s->v.assign(size_t(model_->config.layers), nullptr);
  return s;
}

void Engine::releaseSequence(Sequence& s) {
  for (auto& p : s.k)
    if (p) ops_->release(p), p = nullptr;
  for (auto& p : s.v)
    if (p) ops_->release(p), p = nullptr;
  s.capacity = 0;
  s.length = 0;
}

void Engine::truncate(Sequence& s, int64_t length) {
  if (length < s.length) s.length = std::max<int64_t>(0, length);
}

void Engine::ensureCapacity(Sequence& s, int64_t needed) {
  if (needed <= s.capacity) return;
  int64_t cap = std::min(s.maxContext, std::max<int64_t>({needed, s.capacity * 2, 64}));
  const ModelConfig& c = model_->config;
  size_t width = size_t(c.kvHeads) * size_t(c.headDim);
  std::vector<float*> nk(s.k.size(), nullptr), nv(s.v.size(), nullptr);
  try {
    for (size_t l = 0; l < nk.size(); l++) {
      nk[l] = ops_->alloc(size_t(cap) * width);
      nv[l] = ops_->alloc(size_t(cap) * width);
    }
  } catch (...) {
    for (float* p : nk)
      if (p) ops_->release(p);
    for (float* p : nv)
      if (p) ops_->release(p);
    throw;
  }
  for (size_t l = 0; l < nk.size(); l++) {
    if (s.length > 0) {
      ops_->copy(nk[l], s.k[l], size_t(s.length) * width);
      ops_->copy(nv[l], s.v[l], size_t(s.length) * width);
    }
    if (s.k[l]) ops_->release(s.k[l]);
    if (s.v[l]) ops_->release(s.v[l]);
    s.k[l] = nk[l];
    s.v[l] = nv[l];
  }
  s.capacity = cap;
}

void Engine::ensureScratch(int64_t rows) {
  if (rows <= scratchRows_) return;
  const ModelConfig& c = model_->config;
  int64_t d = c.hidden, qd = int64_t(c.heads) * c.headDim, kvd = int64_t(c.kvHeads) * c.headDim;
  int64_t ff = c.intermediate, routerWidth = 2;
  for (auto& L : model_->layers)
    if (L.flexi.present) {
      ff = std::max(ff, L.flexi.gate.rows);
      routerWidth = std::max(routerWidth, L.flexi.enc.rows);
    }
  for (float** p : {&x_, &xn_, &xg_, &q_, &kNew_, &vNew_, &att_, &proj_, &gate_, &up_, &r0_, &r1_})
    if (*p) ops_->release(*p), *p = nullptr;
  scratchRows_ = 0;
  x_ = ops_->alloc(size_t(rows * d));
  xn_ = ops_->alloc(size_t(rows * d));
  xg_ = ops_->alloc(size_t(rows * d));
  q_ = ops_->alloc(size_t(rows * qd));
  kNew_ = ops_->alloc(size_t(rows * kvd));
  vNew_ = ops_->alloc(size_t(rows * kvd));
  att_ = ops_->alloc(size_t(rows * qd));
  proj_ = ops_->alloc(size_t(rows * std::max(d, qd)));
  gate_ = ops_->alloc(size_t(rows * ff));
  up_ = ops_->alloc(size_t(rows * ff));
  r0_ = ops_->alloc(size_t(rows * d));
  r1_ = ops_->alloc(size_t(rows * routerWidth));
  routerHost_.resize(size_t(rows * std::max<int64_t>(routerWidth, 2)));
  scratchRows_ = rows;
}

// Indices of the rows whose flag is set: the compact list of active rows.
static void compactRows(const std::vector<uint8_t>& flags, int64_t rows, std::vector<int32_t>& idx) {
  idx.clear();
  for (int64_t r = 0; r < rows; r++)
    if (flags[size_t(r)]) idx.push_back(int32_t(r));
}

// One pass of `rows` tokens through every layer. On return x_ holds the last hidden states and
// executed/weights ([rows, layers]) say what ran.
void Engine::runChunk(const std::vector<int32_t>& tokens, const std::vector<RowMeta>& meta,
                      const std::vector<Sequence*>& seqs, int64_t rows, Policy* policy, uint8_t* executed,
                      float* weights, const std::atomic<bool>* cancel) {
  const ModelConfig& c = model_->config;
  Ops& ops = *ops_;
  int64_t d = c.hidden, qd = int64_t(c.heads) * c.headDim, kvd = int64_t(c.kvHeads) * c.headDim;
  ops.embed(x_, tokens.data(), rows, embed_);
  bytesRead_ += uint64_t(rows) * uint64_t(d) * dtypeSize(embed_.dtype);
  std::vector<int32_t> positions(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; r++) positions[size_t(r)] = meta[size_t(r)].pos;
  std::vector<KvSlot> slots(static_cast<size_t>(rows));
  std::vector<AttnRow> attn;
  LayerPlan plan;
  for (int l = 0; l < c.layers; l++) {
    if (cancel && cancel->load(std::memory_order_relaxed)) throw Error(kErrAborted, "the forward pass was cancelled");
    const LayerDev& L = layers_[size_t(l)];
    ops.rmsnorm(xn_, x_, rows, d, L.inputNorm, c.rmsEps);
    // Every token writes its K/V, skipped or not, so later tokens can attend to it.
    matmul(kNew_, kvd, xn_, d, rows, L.k, L.kB);
    matmul(vNew_, kvd, xn_, d, rows, L.v, L.vB);
    ops.rope(kNew_, kvd, rows, positions.data(), c.kvHeads, c.headDim, invFreq_);
    for (int64_t r = 0; r < rows; r++) {
      Sequence* s = seqs[size_t(r)];
      slots[size_t(r)] = KvSlot{s->k[size_t(l)] + int64_t(meta[size_t(r)].pos) * kvd,
                                s->v[size_t(l)] + int64_t(meta[size_t(r)].pos) * kvd};
    }
    ops.kvWrite(slots.data(), kNew_, vNew_, rows, kvd);

    // Route, then compact the rows whose attention runs.
    plan.reset(rows);
    if (policy) policy->routeLayer(*this, l, xn_, meta.data(), rows, plan);
    compactRows(plan.attn, rows, attnIdx_);
    int64_t A = int64_t(attnIdx_.size());
    if (A > 0) {
      // All rows active: no copy. Otherwise gather the active rows into a compact buffer.
      const float* qIn = xn_;
      if (A < rows) {
        ops.gatherRows(xg_, xn_, attnIdx_.data(), A, d);
        qIn = xg_;
      }
      posAct_.resize(size_t(A));
      attn.resize(size_t(A));
      for (int64_t i = 0; i < A; i++) {
        int32_t r = attnIdx_[size_t(i)];
        posAct_[size_t(i)] = meta[size_t(r)].pos;
        Sequence* s = seqs[size_t(r)];
        attn[size_t(i)] = AttnRow{int32_t(i), int32_t(i), meta[size_t(r)].pos, s->k[size_t(l)], s->v[size_t(l)]};
      }
      matmul(q_, qd, qIn, d, A, L.q, L.qB);
      ops.rope(q_, qd, A, posAct_.data(), c.heads, c.headDim, invFreq_);
      ops.attention(att_, q_, attn.data(), A, c.heads, c.kvHeads, c.headDim, c.slidingWindow);
      matmul(proj_, d, att_, qd, A, L.o, L.oB);
      if (A == rows) ops.addRows(x_, proj_, rows, d);
      else ops.scatterAddRows(x_, proj_, attnIdx_.data(), nullptr, A, d);
    }
    routedMlp(L, l, rows, plan, policy);
    for (int64_t r = 0; r < rows; r++) {
      executed[r * c.layers + l] = plan.attn[size_t(r)] && plan.mlp[size_t(r)];
      weights[r * c.layers + l] = plan.weight[size_t(r)];
    }
  }
}

// The MLP half of a layer under the plan: SwiGLU on the rows whose MLP runs (scaled by w for
// FlexiDepth), FlexiDepth's adapter scaled by (1 - w) on the rest, identity otherwise.
void Engine::routedMlp(const LayerDev& L, int layer, int64_t rows, LayerPlan& plan, Policy* policy) {
  const ModelConfig& c = model_->config;
  Ops& ops = *ops_;
  int64_t d = c.hidden, ff = c.intermediate;
  // FlexiDepth needs y for both branches; a per-module router decides from y.
  bool normAll = plan.flexiDepth || plan.routeMlpAfterAttention;
  if (normAll) ops.rmsnorm(xn_, x_, rows, d, L.postAttnNorm, c.rmsEps);
  if (plan.routeMlpAfterAttention && policy) policy->routeMlp(*this, layer, xn_, rows, plan);
  compactRows(plan.mlp, rows, mlpIdx_);
  int64_t M = int64_t(mlpIdx_.size());
  if (M > 0) {
    const float* y = xn_;
    if (normAll) {
      if (M < rows) {
        ops.gatherRows(xg_, xn_, mlpIdx_.data(), M, d);
        y = xg_;
      }
    } else if (M == rows) {
      ops.rmsnorm(xn_, x_, rows, d, L.postAttnNorm, c.rmsEps);
    } else {
      ops.gatherRows(xg_, x_, mlpIdx_.data(), M, d);
      ops.rmsnorm(xg_, xg_, M, d, L.postAttnNorm, c.rmsEps);
      y = xg_;
    }
    matmul(gate_, ff, y, d, M, L.gate, L.gateB);
    matmul(up_, ff, y, d, M, L.up, L.upB);
    ops.siluMul(gate_, up_, M, ff);
    matmul(proj_, d, gate_, ff, M, L.down, L.downB);
    if (plan.flexiDepth) {
      mlpScale_.resize(size_t(M));
      for (int64_t i = 0; i < M; i++) mlpScale_[size_t(i)] = plan.weight[size_t(mlpIdx_[size_t(i)])];
      ops.scatterAddRows(x_, proj_, mlpIdx_.data(), mlpScale_.data(), M, d);
    } else if (M == rows) {
      ops.addRows(x_, proj_, rows, d);
    } else {
      ops.scatterAddRows(x_, proj_, mlpIdx_.data(), nullptr, M, d);
    }
  }
  if (!plan.flexiDepth || M == rows) return;
  // Skipped rows: adapter up(silu(gate(y)) * down(y)) scaled by (1 - w).
  adaIdx_.clear();
  adaScale_.clear();
  for (int64_t r = 0; r < rows; r++)
    if (!plan.mlp[size_t(r)]) {
      adaIdx_.push_back(int32_t(r));
      adaScale_.push_back(1.0f - plan.weight[size_t(r)]);
    }
  int64_t S = int64_t(adaIdx_.size()), m = L.fGate.rows;
  ops.gatherRows(xg_, xn_, adaIdx_.data(), S, d);
  matmul(gate_, m, xg_, d, S, L.fGate, nullptr);
  matmul(up_, m, xg_, d, S, L.fDown, nullptr);
  ops.siluMul(gate_, up_, S, m);
  matmul(proj_, d, gate_, m, S, L.fUp, nullptr);
  ops.scatterAddRows(x_, proj_, adaIdx_.data(), adaScale_.data(), S, d);
}

void Engine::forward(std::vector<Request>& requests, std::vector<Response>& responses, const PolicySpec& spec,
                     const std::atomic<bool>* cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  const ModelConfig& c = model_->config;
  const int L = c.layers;
  std::unique_ptr<Policy> policy = makePolicy(*this, spec);
  bytesRead_ = 0;
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
  ensureScratch(kChunk);

  // Rows that report back (logits and what ran): every row for All, the last one otherwise.
  responses.assign(requests.size(), Response());
  for (size_t i = 0; i < requests.size(); i++) {
    const Request& rq = requests[i];
    size_t reported = rq.logits == LogitsMode::All ? rq.tokens.size() : 1;
    size_t withLogits = rq.logits == LogitsMode::All ? rq.tokens.size() : (rq.logits == LogitsMode::Last || rq.sample) ? 1 : 0;
    responses[i].logits.resize(withLogits * size_t(c.vocab));
    responses[i].executed.resize(reported * size_t(L));
    responses[i].weights.resize(reported * size_t(L));
  }

  // Flatten the batch into rows and run it chunk by chunk.
  struct RowRef {
    size_t req;
    size_t idx;
  };
  std::vector<RowRef> all;
  for (size_t i = 0; i < requests.size(); i++)
    for (size_t j = 0; j < requests[i].tokens.size(); j++) all.push_back({i, j});

  std::vector<int32_t> tokens, logitRows;
  std::vector<RowMeta> meta;
  std::vector<Sequence*> seqs;
  std::vector<float*> logitDst;
  std::vector<uint8_t> executed(size_t(kChunk) * size_t(L));
  std::vector<float> weights(size_t(kChunk) * size_t(L));
  float* logitsDev = nullptr;
  int64_t logitsCap = 0;
  try {
    for (size_t start = 0; start < all.size(); start += size_t(kChunk)) {
      size_t end = std::min(all.size(), start + size_t(kChunk));
      int64_t rows = int64_t(end - start);
      tokens.clear();
      meta.clear();
      seqs.clear();
      logitRows.clear();
      logitDst.clear();
      for (size_t i = start; i < end; i++) {
        Request& rq = requests[all[i].req];
        tokens.push_back(rq.tokens[all[i].idx]);
        meta.push_back(RowMeta{int32_t(rq.seq->length + int64_t(all[i].idx)),
                              rq.hasGenIndex ? int32_t(rq.genIndex + int64_t(all[i].idx)) : -1});
        seqs.push_back(rq.seq);
        Response& rs = responses[all[i].req];
        if (rq.logits == LogitsMode::All) {
          logitRows.push_back(int32_t(i - start));
          logitDst.push_back(rs.logits.data() + all[i].idx * size_t(c.vocab));
        } else if (all[i].idx + 1 == rq.tokens.size() && !rs.logits.empty()) {
          logitRows.push_back(int32_t(i - start));
          logitDst.push_back(rs.logits.data());
        }
      }
      runChunk(tokens, meta, seqs, rows, policy.get(), executed.data(), weights.data(), cancel);
      for (size_t i = start; i < end; i++) {
        const Request& rq = requests[all[i].req];
        bool last = all[i].idx + 1 == rq.tokens.size();
        if (rq.logits != LogitsMode::All && !last) continue;
        size_t slot = rq.logits == LogitsMode::All ? all[i].idx : 0;
        Response& rs = responses[all[i].req];
        std::copy_n(executed.begin() + (i - start) * size_t(L), L, rs.executed.begin() + slot * size_t(L));
        std::copy_n(weights.begin() + (i - start) * size_t(L), L, rs.weights.begin() + slot * size_t(L));
      }
      if (!logitRows.empty()) {
        int64_t n = int64_t(logitRows.size());
        ops_->gatherRows(xn_, x_, logitRows.data(), n, c.hidden);
        ops_->rmsnorm(xn_, xn_, n, c.hidden, finalNorm_, c.rmsEps);
        if (n > logitsCap) {
          if (logitsDev) ops_->release(logitsDev);
          logitsDev = nullptr;
          logitsDev = ops_->alloc(size_t(n) * size_t(c.vocab));
          logitsCap = n;
        }
        matmul(logitsDev, c.vocab, xn_, c.hidden, n, lmHead_, nullptr);
        for (int64_t i = 0; i < n; i++)
          ops_->download(logitDst[size_t(i)], logitsDev + i * c.vocab, size_t(c.vocab));
      }
    }
  } catch (...) {
    if (logitsDev) ops_->release(logitsDev);
    throw;
  }
  if (logitsDev) ops_->release(logitsDev);
  model_->store.checkUnchanged();

  for (size_t i = 0; i < requests.size(); i++) {
    Request& rq = requests[i];
    responses[i].weightBytes = bytesRead_;
    rq.seq->length += int64_t(rq.tokens.size());
    if (rq.sample) {
      Response& rs = responses[i];
      const float* last = rs.logits.data() + rs.logits.size() - size_t(c.vocab);
      rs.token = ops_->sample(last, c.vocab, rq.sampling, rq.seq->rng);
    }
  }
}

}  // namespace dg
