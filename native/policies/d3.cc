// D3 (position-aware depth decay): the pass producing the i-th generated token keeps
// N_i = floor(L * alpha^max(0, i - start)) layers, at least max(minLayers, 2), at most L;
// the prompt (and the pass producing token 0) runs at full depth. Kept layers: the first
// ceil(N/2) and the last floor(N/2), so the first and last layers always run and the middle
// layers are dropped first. Skipped layers still write K/V from the hidden state that passes
// through them, so a later full-depth pass (a new chat turn) reads complete K/V everywhere.
#include <algorithm>
#include <cmath>

#include "../engine.h"
#include "../errors.h"
#include "../policy.h"

namespace dg {

int d3Depth(int L, int genIndex, double alpha, int start, int minLayers) {
  if (genIndex < 1) return L;
  int e = std::max(0, genIndex - start);
  // A small epsilon keeps exact products (alpha = 0.5, L = 12) from flooring one below.
  double n = std::floor(double(L) * std::pow(alpha, double(e)) + 1e-9);
  int lo = std::max(minLayers, 2);
  return int(std::min<double>(L, std::max<double>(lo, n)));
}

bool d3Keeps(int L, int depth, int layer) {
  int head = (depth + 1) / 2, tail = depth / 2;
  return layer < head || layer >= L - tail;
}

namespace {

class D3Policy final : public Policy {
 public:
  D3Policy(int L, const PolicySpec& s) : L_(L), s_(s) {}
  void routeLayer(Engine&, int layer, const float*, const RowMeta* rows, int64_t n, LayerPlan& plan) override {
    for (int64_t r = 0; r < n; r++) {
      int depth = d3Depth(L_, rows[r].genIndex, s_.alpha, s_.start, s_.minLayers);
      uint8_t keep = d3Keeps(L_, depth, layer) ? 1 : 0;
      plan.attn[size_t(r)] = keep;
      plan.mlp[size_t(r)] = keep;
    }
  }

 private:
  int L_;
  PolicySpec s_;
};

}  // namespace

std::unique_ptr<Policy> makeD3Policy(const Engine& e, const PolicySpec& s) {
  if (!(s.alpha > 0 && s.alpha <= 1)) throw OptionError("policy.alpha", "must be in (0, 1] for the d3 policy");
  if (s.start < 0) throw OptionError("policy.start", "must be >= 0 for the d3 policy");
  if (s.minLayers < 0) throw OptionError("policy.minLayers", "must be >= 0 for the d3 policy");
  return std::make_unique<D3Policy>(e.model().config.layers, s);
}

}  // namespace dg
