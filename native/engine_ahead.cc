// Decode ahead: the next step of a generation, run while JavaScript handles the token just
// returned.
//
// A decode step costs the pass plus a round trip: the result goes to the JavaScript thread, the
// generation loop streams the token, the scheduler queues the next step and the model's thread
// picks it up. On a small model that round trip is a quarter of the step (issue 17). When a
// generation's step says another will follow (Request::ahead), the next request is already known
// (its token is the one just sampled, its genIndex one more), so the model's thread runs it as
// soon as the answer is on its way, and the round trip overlaps the pass instead of adding to it.
//
// The step is exact: it is the pass the caller would have asked for, on the same state (cache,
// generator, penalty window), so taking it gives what running it then would have given. A step
// that is not asked for (a stop string, an abort, another sequence's request joining the batch,
// a truncation) is undone: the sequence's length, context, penalty window and generator return
// to what they were, and the K/V it wrote lie past the length, where the next pass overwrites
// them. Only a call of one request runs ahead (a batch of several sequences already shares its
// passes), and never past one of the request's stop tokens or the context's end.
#include <cmath>

#include "engine.h"

namespace dg {
namespace {

bool sameSampling(const SamplingParams& a, const SamplingParams& b) {
  return a.temperature == b.temperature && a.topK == b.topK && a.topP == b.topP &&
         a.repetitionPenalty == b.repetitionPenalty && a.frequencyPenalty == b.frequencyPenalty &&
         a.presencePenalty == b.presencePenalty && a.penaltyWindow == b.penaltyWindow;
}

bool samePolicy(const PolicySpec& a, const PolicySpec& b) {
  return a.type == b.type && a.skipLayers == b.skipLayers && a.skipAttention == b.skipAttention &&
         a.skipMlp == b.skipMlp && a.threshold == b.threshold && a.alpha == b.alpha && a.start == b.start &&
         a.minLayers == b.minLayers;
}

// Whether `rq` asks for exactly the step that was run ahead (its own `ahead` may differ).
bool answers(const AheadStep& a, const Request& rq, const PolicySpec& policy) {
  const Request& r = a.request;
  return rq.seq == r.seq && rq.tokens == r.tokens && rq.logits == r.logits && rq.sample == r.sample &&
         sameSampling(rq.sampling, r.sampling) && rq.hasGenIndex == r.hasGenIndex && rq.genIndex == r.genIndex &&
         rq.fullDepth == r.fullDepth && rq.penalizeLogits == r.penalizeLogits && samePolicy(policy, a.policy);
}

// Puts the sequence back as it was before the step (aheadMu held).
void undo(Sequence& s, AheadStep& a) {
  s.length = a.length;
  s.context.resize(size_t(a.length));
  s.penalties.invalidate(a.length);
  s.rng = a.rng;
  a.state = AheadStep::None;
  a.response = Response();
}

struct Locked {
  explicit Locked(Sequence& s) : s(s) { pthread_mutex_lock(&s.aheadMu); }
  ~Locked() { pthread_mutex_unlock(&s.aheadMu); }
  Sequence& s;
};

}  // namespace

bool Engine::takeAhead(const std::vector<Request>& requests, std::vector<Response>& responses,
                       const PolicySpec& policy) {
  bool taken = false;
  for (const Request& rq : requests) {
    if (!rq.seq) continue;
    Sequence& s = *rq.seq;
    Locked lock(s);
    if (!s.ahead || s.ahead->state != AheadStep::Ready) continue;
    if (requests.size() == 1 && answers(*s.ahead, rq, policy)) {
      responses.assign(1, std::move(s.ahead->response));
      s.ahead->state = AheadStep::None;
      taken = true;
    } else {
      undo(s, *s.ahead);
    }
  }
  return taken;
}

bool Engine::aheadWanted(const std::vector<Request>& requests, const std::vector<Response>& responses) const {
  if (requests.size() != 1 || responses.size() != 1) return false;
  const Request& rq = requests[0];
  const Response& rs = responses[0];
  if (!rq.ahead || !rq.sample || rq.penalizeLogits || rq.logits != LogitsMode::None || !rq.seq) return false;
  if (rq.hasGenIndex && rq.tokens.size() != 1) return false;  // a scored continuation, not a step
  if (rs.token < 0 || rs.token >= model_->config.vocab) return false;
  for (int32_t t : rq.aheadStop)
    if (t == rs.token) return false;
  return rq.seq->length + 1 <= rq.seq->maxContext;
}

void Engine::runAhead(const Request& done, const Response& got, const PolicySpec& policy,
                      const std::atomic<bool>* cancel) {
  Sequence& s = *done.seq;
  Request next = done;
  next.tokens.assign(1, got.token);
  next.genIndex = done.hasGenIndex ? done.genIndex + 1 : 1;
  next.hasGenIndex = true;
  {
    Locked lock(s);
    if (!s.ahead) s.ahead = std::make_unique<AheadStep>();
    AheadStep& a = *s.ahead;
    a.request = next;
    a.policy = policy;
    a.length = s.length;
    a.rng = s.rng;
    a.state = AheadStep::Running;
  }
  std::vector<Request> rqs{next};
  std::vector<Response> out;
  bool ok = false;
  try {
    forward(rqs, out, policy, cancel);
    ok = out.size() == 1;
  } catch (...) {
    // Nothing to report: the caller never asked for this step. It asks again and gets the error.
  }
  Locked lock(s);
  AheadStep& a = *s.ahead;
  if (ok) {
    a.response = std::move(out[0]);
    a.state = AheadStep::Ready;
  } else {
    undo(s, a);
  }
  pthread_cond_broadcast(&s.aheadCv);
}

void Engine::settleAhead(Sequence& s) {
  Locked lock(s);
  while (s.ahead && s.ahead->state == AheadStep::Running) pthread_cond_wait(&s.aheadCv, &s.aheadMu);
  if (s.ahead && s.ahead->state == AheadStep::Ready) undo(s, *s.ahead);
}

int64_t Engine::aheadLength(Sequence& s) {
  Locked lock(s);
  return s.ahead && s.ahead->state != AheadStep::None ? s.ahead->length : s.length;
}

}  // namespace dg
