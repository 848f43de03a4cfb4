// Float64 references (see reference.h).
#include "reference.h"

#include <algorithm>
#include <cmath>

#include "tensor.h"

namespace parity::ref {

void matvec(const HostWeight& W, const float* x, const float* bias, double* y) {
  for (int64_t o = 0; o < W.rows; o++) {
    const double* w = W.exact.data() + size_t(o * W.cols);
    double s = 0;
    for (int64_t i = 0; i < W.cols; i++) s += w[i] * double(x[i]);
    y[o] = s + (bias ? double(bias[o]) : 0.0);
  }
}

void matvecAbs(const HostWeight& W, const float* x, const float* bias, double* a) {
  for (int64_t o = 0; o < W.rows; o++) {
    const double* w = W.exact.data() + size_t(o * W.cols);
    double s = 0;
    for (int64_t i = 0; i < W.cols; i++) s += std::fabs(w[i] * double(x[i]));
    a[o] = s + (bias ? std::fabs(double(bias[o])) : 0.0);
  }
}

double rowScale(const double* y, const double* a, int64_t n, int64_t K) {
  double yy = 0, aa = 0;
  for (int64_t j = 0; j < n; j++) yy += y[j] * y[j], aa += a[j] * a[j];
  return std::max(std::sqrt(yy), std::sqrt(aa / double(std::max<int64_t>(K, 1))));
}

void rmsnorm(const float* x, int64_t dim, const float* w, float eps, double* out) {
  double ss = 0;
  for (int64_t i = 0; i < dim; i++) ss += double(x[i]) * double(x[i]);
  const double inv = 1.0 / std::sqrt(ss / double(dim) + double(eps));
  for (int64_t i = 0; i < dim; i++) out[i] = double(w[i]) * (double(x[i]) * inv);
}

void rope(double* v, int nHeads, int headDim, const float* invFreq, int32_t pos) {
  const int half = headDim / 2;
  for (int h = 0; h < nHeads; h++) {
    double* lo = v + int64_t(h) * headDim;
    double* hi = lo + half;
    for (int i = 0; i < half; i++) {
      const double a = double(pos) * double(invFreq[i]);
      const double c = std::cos(a), s = std::sin(a), x = lo[i], y = hi[i];
      lo[i] = x * c - y * s;
      hi[i] = y * c + x * s;
    }
  }
}

void attentionRow(const float* q, const void* kLayer, const void* vLayer, DType t, int nHeads, int nKv, int headDim,
                  int32_t pos, int window, double* out) {
  const int group = nHeads / nKv;
  const int64_t kvw = int64_t(nKv) * headDim;
  const int64_t first = window > 0 ? std::max<int64_t>(0, int64_t(pos) - window + 1) : 0;
  const double scale = 1.0 / std::sqrt(double(headDim));
  std::vector<double> s(size_t(pos - first + 1));
  for (int h = 0; h < nHeads; h++) {
    const int g = h / group;
    const float* qh = q + int64_t(h) * headDim;
    double m = -INFINITY;
    for (int64_t j = first; j <= pos; j++) {
      double d = 0;
      for (int i = 0; i < headDim; i++) d += double(qh[i]) * widen(kLayer, t, size_t(j * kvw + g * headDim + i));
      s[size_t(j - first)] = d * scale;
      m = std::max(m, d * scale);
    }
    double total = 0;
    for (auto& x : s) total += (x = std::exp(x - m));
    double* o = out + int64_t(h) * headDim;
    for (int i = 0; i < headDim; i++) o[i] = 0;
    for (int64_t j = first; j <= pos; j++) {
      const double p = s[size_t(j - first)] / total;
      for (int i = 0; i < headDim; i++) o[i] += p * widen(vLayer, t, size_t(j * kvw + g * headDim + i));
    }
  }
}

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void penalize(float* logits, const dg::SampleRow& p, const dg::PenaltyToken* list) {
  for (int32_t j = 0; j < p.penaltyCount; j++) {
    float& l = logits[list[p.penaltyStart + j].id];
    const float scaled = l > 0.f ? l / p.repetitionPenalty : l * p.repetitionPenalty;
    const float counted = float(list[p.penaltyStart + j].count) * p.frequencyPenalty;
    const float lessFrequency = scaled - counted;
    l = lessFrequency - p.presencePenalty;
  }
}

// The sampling semantics (native/cpu/sampling.cc's contract, which every backend must draw
// identically): greedy = argmax with NaN never winning and the lowest id on ties, drawing
// nothing; otherwise exactly one draw u in [0, 1) first; candidates are the ids whose logit is
// neither NaN nor -inf (only the +inf ones, uniformly, when any is +inf); top-k keeps the k
// highest (ties: lower id first); probabilities exp((l - max) / T) in double; top-p keeps the
// shortest prefix of the descending order whose mass reaches topP; the token is the first
// candidate, in descending order when top-k or top-p reordered them and in id order otherwise,
// whose running mass exceeds u times the kept mass.
int32_t sample(const float* logits, int64_t vocab, const dg::SampleRow& p, uint64_t& rng) {
  if (!(p.temperature > 0.f)) {
    int64_t best = -1;
    for (int64_t i = 0; i < vocab; i++)
      if (!std::isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
    return best < 0 ? 0 : int32_t(best);
  }
  const double u = double(splitmix(rng) >> 11) * 0x1.0p-53;
  struct C {
    float l;
    int32_t id;
    double w;
  };
  std::vector<C> c;
  bool posInf = false;
  for (int64_t i = 0; i < vocab; i++) {
    const float v = logits[i];
    if (std::isnan(v) || v == -INFINITY) continue;
    posInf |= v == INFINITY;
    c.push_back({v, int32_t(i), 0});
  }
  if (c.empty()) return 0;
  if (posInf) {
    std::vector<C> inf;
    for (auto& x : c)
      if (x.l == INFINITY) inf.push_back({0.f, x.id, 0});
    c = inf;
  }
  auto desc = [](const C& a, const C& b) { return a.l > b.l || (a.l == b.l && a.id < b.id); };
  bool sorted = false;
  if (p.topK > 0 && size_t(p.topK) < c.size()) {
    std::sort(c.begin(), c.end(), desc);
    c.resize(size_t(p.topK));
    sorted = true;
  }
  float mx = c[0].l;
  for (auto& x : c) mx = std::max(mx, x.l);
  const double invT = 1.0 / double(p.temperature);
  double total = 0;
  for (auto& x : c) total += (x.w = std::exp((double(x.l) - double(mx)) * invT));
  size_t kept = c.size();
  if (p.topP < 1.f) {
    if (!sorted) std::sort(c.begin(), c.end(), desc);
    const double target = double(p.topP) * total;
    double cum = 0;
    size_t n = 0;
    while (n < c.size()) {
      cum += c[n++].w;
      if (cum >= target) break;
    }
    kept = n;
    total = cum;
  }
  const double threshold = u * total;
  double cum = 0;
  for (size_t i = 0; i < kept; i++) {
    cum += c[i].w;
    if (threshold < cum) return c[i].id;
  }
  for (size_t i = kept; i-- > 0;)
    if (c[i].w > 0) return c[i].id;
  return c[0].id;
}

}  // namespace parity::ref
