// FlexiDepth, as the released checkpoint computes it (research/methods.md 1.4), on the layers
// that have router weights (config.routing_layers, or the layers an add-on file covers):
//   x = input_layernorm(h);  z = tanh(RMSNorm(router_enc x) * router_norm)
//   w = sigmoid(router_head(router_dec z));  run = w > threshold (0.5)
//   h' = h + run * attention(x)                       (attention output zeroed for skipped rows)
//   y = post_attention_layernorm(h')
//   h'' = h' + (run ? w * mlp(y) : (1 - w) * up(silu(gate(y)) * down(y)))   (router_proj adapter)
// The sigmoid is computed in f32 (whether the official code uses bf16 there is unconfirmed).
#include <cmath>

#include "../engine.h"
#include "../errors.h"
#include "../policy.h"

namespace dg {

namespace {

class FlexiDepthPolicy final : public Policy {
 public:
  explicit FlexiDepthPolicy(float threshold) : threshold_(threshold) {}

  void routeLayer(Engine& e, int layer, const float* xn, const RowMeta*, int64_t n, LayerPlan& plan) override {
    const Engine::LayerDev& L = e.layer(layer);
    if (!L.flexi) return;  // a plain layer: every row runs
    Ops& ops = e.ops();
    const ModelConfig& c = e.model().config;
    int64_t d = c.hidden, r = L.fEnc.rows;
    float* z = e.routerScratch(1);  // [n, r]
    float* u = e.routerScratch(0);  // [n, d]
    e.matmul(z, r, xn, d, n, L.fEnc, nullptr);
    ops.rmsnorm(z, z, n, r, L.fNorm, c.rmsEps);
    ops.tanhInPlace(z, n * r);
    e.matmul(u, d, z, r, n, L.fDec, nullptr);
    e.matmul(z, 1, u, d, n, L.fHead, nullptr);  // the logit, one per row
    std::vector<float>& host = e.routerHost();
    ops.download(host.data(), z, size_t(n));
    plan.flexiDepth = true;
    for (int64_t i = 0; i < n; i++) {
      float w = 1.0f / (1.0f + std::exp(-host[size_t(i)]));
      uint8_t run = w > threshold_ ? 1 : 0;
      plan.attn[size_t(i)] = run;
      plan.mlp[size_t(i)] = run;
      plan.weight[size_t(i)] = w;
    }
  }

 private:
  float threshold_;
};

}  // namespace

std::unique_ptr<Policy> makeFlexiDepthPolicy(const Engine& e, const PolicySpec& s) {
  if (e.model().flexiDepthLayers.empty())
    throw OptionError("policy", "this model has no FlexiDepth router weights, which the flexidepth policy needs "
                                "(model.layers.{i}.router.* and router_proj.*); load them from the checkpoint or an add-on file");
  if (!(s.threshold >= 0.0f && s.threshold <= 1.0f)) throw OptionError("policy.threshold", "must be in [0, 1] for the flexidepth policy");
  return std::make_unique<FlexiDepthPolicy>(s.threshold);
}

}  // namespace dg
