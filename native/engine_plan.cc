// The host's side of a forward pass before its chunks run: the order of the rows (the rows that
// follow the pass's policy first, the full-depth ones after), each penalised row's (id, count)
// list, and for each chunk the facts and plan staged for its one upload. Routers decide on the
// backend (policies/); this file decides only what the host knows.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine.h"
#include "engine_step.h"

namespace dg {

namespace {
int hostRunOf(const uint8_t* flags, int64_t rows) {
  int64_t on = 0;
  for (int64_t r = 0; r < rows; r++) on += flags[r] != 0;
  return on == rows ? kAll : on == 0 ? kNone : kSome;
}
}  // namespace

ForwardPlan planForward(std::vector<Request>& requests) {
  ForwardPlan plan;
  for (bool full : {false, true})
    for (size_t i = 0; i < requests.size(); i++)
      if (requests[i].fullDepth == full)
        for (size_t j = 0; j < requests[i].tokens.size(); j++) plan.rows.push_back({i, j});
  plan.penaltyStart.assign(plan.rows.size(), 0);
  plan.penaltyCount.assign(plan.rows.size(), 0);
  // Rows come in increasing j per request, so each request's window only moves forward here.
  for (size_t r = 0; r < plan.rows.size(); r++) {
    const Request& rq = requests[plan.rows[r].req];
    const size_t j = plan.rows[r].idx;
    if (!rowPenalized(rq, j)) continue;
    // The window of the pass that would sample after this row's token: it ends with that token.
    rq.seq->penalties.advance(rq.seq->context, rq.seq->length + int64_t(j) + 1, rq.sampling.penaltyWindow);
    plan.penaltyStart[r] = int32_t(plan.penalties.size());
    rq.seq->penalties.appendTo(plan.penalties);
    plan.penaltyCount[r] = int32_t(plan.penalties.size()) - plan.penaltyStart[r];
  }
  return plan;
}

Engine::ChunkStage Engine::stageChunk(const std::vector<Request>& requests, const ForwardPlan& plan, size_t start,
                                      size_t end, Policy* policy) {
  const ModelConfig& c = model_->config;
  const int L = c.layers;
  ChunkStage st;
  st.rows = int64_t(end - start);
  const int64_t rows = st.rows;
  st.logitRowOf.assign(size_t(rows), -1);
  for (size_t i = start; i < end; i++) {
    const Request& rq = requests[plan.rows[i].req];
    const size_t j = plan.rows[i].idx;
    if (!rq.fullDepth) st.policyRows++;
    if (!rowHasLogits(rq, j)) continue;
    st.logitRowOf[i - start] = int32_t(st.logitRows++);
    st.downloadLogits |= rq.logits != LogitsMode::None;
    st.sampleOp |= (rq.sample && j + 1 == rq.tokens.size()) || plan.penaltyCount[i] > 0;
  }
  // A chunk of full-depth rows only runs as under no policy.
  if (st.policyRows == 0) policy = nullptr;
  st.policy = policy;
  const size_t penaltyCap = step_->penaltyCap;
  const StepBuffers::Layout o = StepBuffers::layout(rows, L, c.vocab, st.logitRows, penaltyCap);
  st.layout = o;
  step_->reserve(StepBuffers::layout(kChunk, L, c.vocab, st.logitRows, penaltyCap).end);
  step_->host.assign(o.end, 0);
  if (!plan.penalties.empty())
    std::memcpy(step_->h<PenaltyToken>(o.penalties), plan.penalties.data(),
                plan.penalties.size() * sizeof(PenaltyToken));
  // The step's facts.
  std::vector<Sequence*> seqTable;
  std::vector<RowMeta> meta(static_cast<size_t>(rows));
  for (size_t i = start; i < end; i++) {
    const size_t r = i - start;
    const Request& rq = requests[plan.rows[i].req];
    const size_t j = plan.rows[i].idx;
    const int32_t pos = int32_t(rq.seq->length + int64_t(j));
    meta[r] = RowMeta{pos, rq.hasGenIndex ? int32_t(rq.genIndex + int64_t(j)) : -1};
    size_t si = size_t(std::find(seqTable.begin(), seqTable.end(), rq.seq) - seqTable.begin());
    if (si == seqTable.size()) seqTable.push_back(rq.seq);
    step_->h<int32_t>(o.tokens)[r] = rq.tokens[j];
    step_->h<int32_t>(o.pos)[r] = pos;
    step_->h<int32_t>(o.seq)[r] = int32_t(si);
    const int32_t lr = st.logitRowOf[r];
    if (lr < 0) continue;
    step_->h<int32_t>(o.logitRows)[lr] = int32_t(r);
    SampleRow& sp = step_->h<SampleRow>(o.sample)[lr];
    sp.draw = rq.sample && j + 1 == rq.tokens.size() ? 1 : 0;
    sp.temperature = rq.sampling.temperature;
    sp.topK = rq.sampling.topK;
    sp.topP = rq.sampling.topP;
    sp.rng = rq.seq->rng;
    if (plan.penaltyCount[i] > 0) {
      sp.repetitionPenalty = rq.sampling.repetitionPenalty;
      sp.frequencyPenalty = rq.sampling.frequencyPenalty;
      sp.presencePenalty = rq.sampling.presencePenalty;
      sp.penaltyStart = plan.penaltyStart[i];
      sp.penaltyCount = plan.penaltyCount[i];
    }
  }
  for (size_t si = 0; si < seqTable.size(); si++)
    step_->h<KvCacheRef>(o.seqs)[si] = KvCacheRef{seqTable[si]->k, seqTable[si]->v, seqTable[si]->capacity};
  // The plan: host decisions for the policy rows of the layers the policy does not route; routers
  // overwrite theirs. Full-depth rows (after the policy rows) run everything, with FlexiDepth's
  // w = 1: the scaled MLP epilogue then adds the plain MLP output.
  uint8_t* pa = step_->h<uint8_t>(o.planAttn);
  uint8_t* pm = step_->h<uint8_t>(o.planMlp);
  float* pw = step_->h<float>(o.planWeight);
  std::fill(pa, pa + size_t(L) * size_t(rows), uint8_t(1));
  std::fill(pm, pm + size_t(L) * size_t(rows), uint8_t(1));
  std::fill(pw, pw + size_t(L) * size_t(rows), NAN);
  st.hostRun.assign(size_t(2 * L), 0);
  for (int l = 0; l < L; l++) {
    uint8_t* a = pa + size_t(l) * size_t(rows);
    uint8_t* m = pm + size_t(l) * size_t(rows);
    if (policy && !policy->routed(l)) policy->planLayer(l, meta.data(), st.policyRows, a, m);
    if (policy) std::fill(pw + size_t(l) * size_t(rows) + st.policyRows, pw + size_t(l + 1) * size_t(rows), 1.f);
    st.hostRun[size_t(2 * l)] = uint8_t(hostRunOf(a, rows));
    st.hostRun[size_t(2 * l + 1)] = uint8_t(hostRunOf(m, rows));
  }
  return st;
}

}  // namespace dg
