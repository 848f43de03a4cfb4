// Static skipping: the same layers (or attention / MLP modules) are skipped for every token,
// prompt included (a ShortGPT-style pruned stack that keeps its weights).
#include <algorithm>
#include <set>

#include "../engine.h"
#include "../errors.h"
#include "../policy.h"

namespace dg {

namespace {

class StaticPolicy final : public Policy {
 public:
  StaticPolicy(std::set<int> attnOff, std::set<int> mlpOff)
      : attnOff_(std::move(attnOff)), mlpOff_(std::move(mlpOff)) {}
  bool routed(int) const override { return false; }
  void planLayer(int layer, const RowMeta*, int64_t n, uint8_t* attn, uint8_t* mlp) const override {
    const uint8_t a = attnOff_.count(layer) ? 0 : 1, m = mlpOff_.count(layer) ? 0 : 1;
    std::fill(attn, attn + n, a);
    std::fill(mlp, mlp + n, m);
  }

 private:
  std::set<int> attnOff_, mlpOff_;
};

}  // namespace

std::unique_ptr<Policy> makeStaticPolicy(const Engine& e, const PolicySpec& s) {
  int L = e.model().config.layers;
  std::set<int> attnOff, mlpOff;
  auto add = [&](const std::vector<int>& list, const char* what, bool a, bool m) {
    for (int l : list) {
      if (l < 0 || l >= L)
        throw OptionError(std::string("policy.") + what,
                          "has layer " + std::to_string(l) + " but the model has layers 0.." + std::to_string(L - 1));
      if (a) attnOff.insert(l);
      if (m) mlpOff.insert(l);
    }
  };
  add(s.skipLayers, "skipLayers", true, true);
  add(s.skipAttention, "skipAttention", true, false);
  add(s.skipMlp, "skipMlp", false, true);
  return std::make_unique<StaticPolicy>(std::move(attnOff), std::move(mlpOff));
}

}  // namespace dg
