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
    // CPU: a plain copy; a device backend's alloc/copy pair does the same for its memory.
    std::memcpy(p, v.data(), v.size() * 4);
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
  for (float* p : {x_, xn_, q_, kNew_, vNew_, att_, proj_, gate_, up_})
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
  int64_t ff = c.intermediate;
  for (float** p : {&x_, &xn_, &q_, &kNew_, &vNew_, &att_, &proj_, &gate_, &up_})
    if (*p) ops_->release(*p), *p = nullptr;
  scratchRows_ = 0;
  x_ = ops_->alloc(size_t(rows * d));
  xn_ = ops_->alloc(size_t(rows * d));
  q_ = ops_->alloc(size_t(rows * qd));
  kNew_ = ops_->alloc(size_t(rows * kvd));
  vNew_ = ops_->alloc(size_t(rows * kvd));
  att_ = ops_->alloc(size_t(rows * qd));
  proj_ = ops_->alloc(size_t(rows * std::max(d, qd)));
  gate_ = ops_->alloc(size_t(rows * ff));
  up_ = ops_->alloc(size_t(rows * ff));
  scratchRows_ = rows;
}

// One pass of `rows` tokens through every layer. On return x_ holds the last hidden states.
void Engine::runChunk(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
                      const std::vector<Sequence*>& seqs, int64_t rows) {
  const ModelConfig& c = model_->config;
  Ops& ops = *ops_;
  int64_t d = c.hidden, qd = int64_t(c.heads) * c.headDim, kvd = int64_t(c.kvHeads) * c.headDim;
  int64_t ff = c.intermediate;
  ops.embed(x_, tokens.data(), rows, embed_);
  std::vector<KvSlot> slots(static_cast<size_t>(rows));
  std::vector<AttnRow> attn(static_cast<size_t>(rows));
  for (int l = 0; l < c.layers; l++) {
    const LayerDev& L = layers_[size_t(l)];
    // Attention: K/V of every token go to the cache first, so queries in this chunk see them.
    ops.rmsnorm(xn_, x_, rows, d, L.inputNorm, c.rmsEps);
    ops.matmul(kNew_, kvd, xn_, d, rows, L.k, L.kB);
    ops.matmul(vNew_, kvd, xn_, d, rows, L.v, L.vB);
    ops.rope(kNew_, kvd, rows, positions.data(), c.kvHeads, c.headDim, invFreq_);
    for (int64_t r = 0; r < rows; r++) {
      Sequence* s = seqs[size_t(r)];
      slots[size_t(r)] = KvSlot{s->k[size_t(l)] + int64_t(positions[size_t(r)]) * kvd,
                                s->v[size_t(l)] + int64_t(positions[size_t(r)]) * kvd};
      attn[size_t(r)] = AttnRow{int32_t(r), int32_t(r), positions[size_t(r)], s->k[size_t(l)], s->v[size_t(l)]};
    }
    ops.kvWrite(slots.data(), kNew_, vNew_, rows, kvd);
    ops.matmul(q_, qd, xn_, d, rows, L.q, L.qB);
    ops.rope(q_, qd, rows, positions.data(), c.heads, c.headDim, invFreq_);
    ops.attention(att_, q_, attn.data(), rows, c.heads, c.kvHeads, c.headDim, c.slidingWindow);
    ops.matmul(proj_, d, att_, qd, rows, L.o, L.oB);
    ops.addRows(x_, proj_, rows, d);
    // MLP: down(silu(gate(y)) * up(y)) with y the post-attention norm.
    ops.rmsnorm(xn_, x_, rows, d, L.postAttnNorm, c.rmsEps);
    ops.matmul(gate_, ff, xn_, d, rows, L.gate, L.gateB);
    ops.matmul(up_, ff, xn_, d, rows, L.up, L.upB);
    ops.siluMul(gate_, up_, rows, ff);
    ops.matmul(proj_, d, gate_, ff, rows, L.down, L.downB);
    ops.addRows(x_, proj_, rows, d);
  }
}

void Engine::forward(std::vector<Request>& requests, std::vector<Response>& responses) {
  std::lock_guard<std::mutex> lock(mu_);
  const ModelConfig& c = model_->config;
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

  responses.assign(requests.size(), Response());
  for (size_t i = 0; i < requests.size(); i++) {
    size_t n = requests[i].logits == LogitsMode::All ? requests[i].tokens.size()
               : requests[i].logits == LogitsMode::Last || requests[i].sample ? 1 : 0;
    responses[i].logits.resize(n * size_t(c.vocab));
  }

  // Flatten the batch into rows and run it chunk by chunk.
  struct RowRef {
    size_t req;
    size_t idx;
  };
  std::vector<RowRef> all;
  for (size_t i = 0; i < requests.size(); i++)
    for (size_t j = 0; j < requests[i].tokens.size(); j++) all.push_back({i, j});

  std::vector<int32_t> tokens, positions, logitRows;
  std::vector<Sequence*> seqs;
  std::vector<float*> logitDst;
  float* logitsDev = nullptr;
  int64_t logitsCap = 0;
  try {
    for (size_t start = 0; start < all.size(); start += size_t(kChunk)) {
      size_t end = std::min(all.size(), start + size_t(kChunk));
      int64_t rows = int64_t(end - start);
      tokens.clear();
      positions.clear();
      seqs.clear();
      logitRows.clear();
      logitDst.clear();
      for (size_t i = start; i < end; i++) {
        Request& rq = requests[all[i].req];
        tokens.push_back(rq.tokens[all[i].idx]);
        positions.push_back(int32_t(rq.seq->length + int64_t(all[i].idx)));
        seqs.push_back(rq.seq);
        bool last = all[i].idx + 1 == rq.tokens.size();
        Response& rs = responses[all[i].req];
        if (rq.logits == LogitsMode::All) {
          logitRows.push_back(int32_t(i - start));
          logitDst.push_back(rs.logits.data() + all[i].idx * size_t(c.vocab));
        } else if (last && !rs.logits.empty()) {
          logitRows.push_back(int32_t(i - start));
          logitDst.push_back(rs.logits.data());
        }
      }
      runChunk(tokens, positions, seqs, rows);
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
        ops_->matmul(logitsDev, c.vocab, xn_, c.hidden, n, lmHead_, nullptr);
        for (int64_t i = 0; i < n; i++)
          ops_->download(logitDst[size_t(i)], logitsDev + i * c.vocab, size_t(c.vocab));
      }
    }
  } catch (...) {
    if (logitsDev) ops_->release(logitsDev);
    throw;
  }
  if (logitsDev) ops_->release(logitsDev);

  for (size_t i = 0; i < requests.size(); i++) {
    Request& rq = requests[i];
    rq.seq->length += int64_t(rq.tokens.size());
    if (rq.sample) {
      Response& rs = responses[i];
      const float* last = rs.logits.data() + rs.logits.size() - size_t(c.vocab);
      rs.token = ops_->sample(last, c.vocab, rq.sampling, rq.seq->rng);
    }
  }
}

}  // namespace dg
