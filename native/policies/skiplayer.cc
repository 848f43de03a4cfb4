// SkipLayer ("Learning to Skip for Language Modeling", Zeng et al. 2023): a bias-free
// Linear(hidden -> 2) router with logits [skip, run], argmax at inference (a tie skips), identity
// when skipped. Whole-layer routers read input_layernorm(h); per-module routers read
// input_layernorm(h) for attention and post_attention_layernorm(h') for the MLP. Skipped rows
// still write K/V. Layers without a router run in full. Routers run as backend ops that write
// their decisions into the step plan.
#include "../engine.h"
#include "../errors.h"
#include "../policy.h"

namespace dg {

namespace {

// run[i] = logit_run > logit_skip for each of n rows of input [n, hidden], on the backend.
void decide(Engine& e, const Weight& w, const float* in, int64_t n, uint8_t* run) {
  float* logits = e.routerSmall();
  e.ops().matmul(logits, 2, in, e.model().config.hidden, RowSet::dense(n), w, nullptr, Epilogue::store());
  e.ops().routeArgmax(run, logits, n);
}

class SkipLayerPolicy final : public Policy {
 public:
  explicit SkipLayerPolicy(const Engine& e) {
    for (int l = 0; l < e.model().config.layers; l++) {
      const Engine::SkipRouters& s = e.skipRouters(l);
      layer_.push_back(s.layer.data != nullptr);
      attn_.push_back(s.attn.data != nullptr);
      mlp_.push_back(s.mlp.data != nullptr);
    }
  }
  bool routed(int l) const override { return layer_[size_t(l)] || attn_[size_t(l)]; }
  bool routesMlpAfterAttention(int l) const override { return mlp_[size_t(l)]; }

  void routeLayer(Engine& e, int l, const float* xn, int64_t n, const LayerFlags& f) override {
    const Engine::SkipRouters& s = e.skipRouters(l);
    if (s.layer.data) {
      decide(e, s.layer, xn, n, f.attn);
      e.ops().copy(f.mlp, f.attn, size_t(n));  // the whole layer: the MLP follows attention
    }
    if (s.attn.data) decide(e, s.attn, xn, n, f.attn);
  }
  void routeMlp(Engine& e, int l, const float* y, int64_t n, const LayerFlags& f) override {
    decide(e, e.skipRouters(l).mlp, y, n, f.mlp);
  }

 private:
  std::vector<bool> layer_, attn_, mlp_;
};

}  // namespace

std::unique_ptr<Policy> makeSkipLayerPolicy(const Engine& e, const PolicySpec&) {
  if (e.model().skipRouterLayers.empty())
    throw OptionError("policy",
                      "this model has no SkipLayer router weights, which the skiplayer policy needs "
                      "(model.layers.{i}.skip_router.weight, or self_attn./mlp.skip_router.weight)");
  return std::make_unique<SkipLayerPolicy>(e);
}

}  // namespace dg
