// Token sampling: repetition penalties, then greedy or temperature + top-k + top-p (nucleus)
// with a seeded generator.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace dg {

uint64_t rngNext(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

namespace {

// NaN never wins; among equal values the lowest id comes first.
int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = -1;
  for (int64_t i = 0; i < vocab; i++) {
    float v = logits[i];
    if (std::isnan(v)) continue;
    if (best < 0 || v > logits[best]) best = i;
  }
  return best < 0 ? 0 : int32_t(best);
}

}  // namespace

void applyPenalties(float* logits, int64_t vocab, const PenaltyToken* list, int64_t n, float r, float f, float p) {
  for (int64_t i = 0; i < n; i++) {
    const PenaltyToken& t = list[i];
    if (t.id >= 0 && t.id < vocab) logits[t.id] = applyPenalty(logits[t.id], t.count, r, f, p);
  }
}

int32_t sampleToken(const float* logits, int64_t vocab, const SamplingParams& p, uint64_t& rngState) {
  if (vocab <= 0) return p.temperature > 0.f ? (rngNext(rngState), 0) : 0;
  // Greedy does not consume randomness, so switching a request to greedy leaves the stream
  // of later sampled tokens unchanged.
  if (!(p.temperature > 0.f)) return argmax(logits, vocab);
  // Exactly one draw per sampled token, taken first so that no early return skips it: a caller
  // (or a device backend's host) can follow the generator without reading it back.
  const double u = double(rngNext(rngState) >> 11) * 0x1.0p-53;  // uniform in [0, 1)

  // Candidates are the tokens that can have non-zero probability. NaN counts as -inf.
  struct Candidate {
    float logit;
    int32_t id;
    double weight;  // unnormalised probability, filled in once the kept set is known
  };
  thread_local std::vector<Candidate> cand;
  cand.clear();
  bool anyPosInf = false;
  for (int64_t i = 0; i < vocab; i++) {
    float v = logits[i];
    if (std::isnan(v) || v == -INFINITY) continue;
    if (v == INFINITY) anyPosInf = true;
    cand.push_back({v, int32_t(i), 0.0});
  }
  if (cand.empty()) return 0;
  if (anyPosInf) {  // +inf swallows all finite mass: uniform over the +inf tokens
    cand.erase(std::remove_if(cand.begin(), cand.end(), [](const Candidate& c) { return c.logit != INFINITY; }),
               cand.end());
    for (auto& c : cand) c.logit = 0.f;
  }
  const auto higher = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };

  // Top-k: partial_sort is O(V log k) and leaves the kept set ordered for top-p.
  bool sorted = false;
  if (p.topK > 0 && size_t(p.topK) < cand.size()) {
    std::partial_sort(cand.begin(), cand.begin() + p.topK, cand.end(), higher);
    cand.resize(size_t(p.topK));
    sorted = true;
  }

  // Softmax in double of logit / temperature, relative to the largest kept logit.
  float maxLogit = cand[0].logit;
  for (const auto& c : cand) maxLogit = std::max(maxLogit, c.logit);
  const double invT = 1.0 / double(p.temperature);
  double total = 0;
  for (auto& c : cand) {
    c.weight = std::exp((double(c.logit) - double(maxLogit)) * invT);
    total += c.weight;
  }

  // Top-p: keep the shortest prefix (by descending probability) whose mass reaches topP.
  // Real distributions put that mass in a few hundred tokens, so order only the best m and
  // widen m when they fall short, instead of sorting the whole vocabulary every step.
  size_t kept = cand.size();
  if (p.topP < 1.f) {
    const double target = double(p.topP) * total;
    size_t m = sorted ? cand.size() : std::min(cand.size(), size_t(256));
    for (;;) {
      if (!sorted) {
        if (m == cand.size())
          std::sort(cand.begin(), cand.end(), higher);
        else
          std::partial_sort(cand.begin(), cand.begin() + ptrdiff_t(m), cand.end(), higher);
      }
      double cumulative = 0;
      size_t n = 0;
      while (n < m) {
        cumulative += cand[n++].weight;
        if (cumulative >= target) break;
      }
      if (cumulative >= target || m == cand.size()) {
        kept = n;
        total = cumulative;  // renormalise over the nucleus
        break;
      }
      // Past a few thousand the heap in partial_sort loses to one plain sort.
      m = m < 4096 ? std::min(cand.size(), m * 16) : cand.size();
    }
  }

  const double threshold = u * total;
  double cumulative = 0;
  for (size_t i = 0; i < kept; i++) {
    cumulative += cand[i].weight;
    if (threshold < cumulative) return cand[i].id;
  }
  // Rounding can leave threshold just past the last sum; the last kept non-zero token wins.
  for (size_t i = kept; i-- > 0;)
    if (cand[i].weight > 0) return cand[i].id;
  return cand[0].id;
}

}  // namespace dg
