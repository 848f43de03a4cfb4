// SkipLayer ("Learning to Skip for Language Modeling"): a bias-free Linear(hidden -> 2) router
// with logits [skip, run], argmax at inference (ties skip), identity when skipped. Whole-layer
// routers read input_layernorm(h); per-module routers read input_layernorm(h) for attention and
// post_attention_layernorm(h') for the MLP. Skipped rows still write K/V. Layers without a
// router run in full.
#include "../engine.h"
#include "../errors.h"
#include "../policy.h"

namespace dg {

namespace {

// run[i] = logit_run > logit_skip for each of n rows of input [n, d].
void decide(Engine& e, const Weight& w, const float* in, int64_t n, std::vector<uint8_t>& run) {
  Ops& ops = e.ops();
  float* out = e.routerScratch(1);
  e.matmul(out, 2, in, e.model().config.hidden, n, w, nullptr);
  std::vector<float>& host = e.routerHost();
  ops.download(host.data(), out, size_t(2 * n));
  for (int64_t i = 0; i < n; i++) run[size_t(i)] = host[size_t(2 * i + 1)] > host[size_t(2 * i)] ? 1 : 0;
}

class SkipLayerPolicy final : public Policy {
 public:
  void routeLayer(Engine& e, int layer, const float* xn, const RowMeta*, int64_t n, LayerPlan& plan) override {
    const Engine::LayerDev& L = e.layer(layer);
    const SkipRouterWeights& s = e.model().layers[size_t(layer)].skip;
    if (s.layer) {
      decide(e, L.sLayer, xn, n, plan.attn);
      plan.mlp = plan.attn;
    }
    if (s.attn) decide(e, L.sAttn, xn, n, plan.attn);
    if (s.mlp) plan.routeMlpAfterAttention = true;
  }
  void routeMlp(Engine& e, int layer, const float* y, int64_t n, LayerPlan& plan) override {
    decide(e, e.layer(layer).sMlp, y, n, plan.mlp);
  }
};

}  // namespace

std::unique_ptr<Policy> makeSkipLayerPolicy(const Engine& e, const PolicySpec&) {
  if (e.model().skipRouterLayers.empty())
    throw OptionError("policy", "this model has no SkipLayer router weights, which the skiplayer policy needs "
                                "(model.layers.{i}.skip_router.weight, or self_attn./mlp.skip_router.weight)");
  return std::make_unique<SkipLayerPolicy>();
}

}  // namespace dg
