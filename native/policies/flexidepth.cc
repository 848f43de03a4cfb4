// FlexiDepth, as the released checkpoint computes it (FlexiDepth paper, Luo et al. 2025, and its
// modeling_ddllama.py), on the layers that have router weights (config.routing_layers, or the
// layers an add-on file covers):
//   x = input_layernorm(h);  z = tanh(RMSNorm(router_enc x) * router_norm)
//   w = sigmoid(router_head(router_dec z));  run = w > threshold (0.5)
//   h' = h + run * attention(x)                       (attention output zeroed for skipped rows)
//   y = post_attention_layernorm(h')
//   h'' = h' + (run ? w * mlp(y) : (1 - w) * up(silu(gate(y)) * down(y)))   (router_proj adapter)
// The sigmoid is computed in f32 (whether the official code uses bf16 there is unconfirmed).
// The router runs as backend ops and writes the decision and w into the step plan, so the host
// never waits for it; the engine's scatter epilogues read w and 1 - w where it was written.
#include <cmath>

#include "../engine.h"
#include "../errors.h"
#include "../policy.h"

namespace dg {

namespace {

class FlexiDepthPolicy final : public Policy {
 public:
  FlexiDepthPolicy(const Engine& e, float threshold) : threshold_(threshold) {
    for (int l = 0; l < e.model().config.layers; l++) routedLayers_.push_back(e.flexiDepthRouter(l) != nullptr);
  }
  bool routed(int layer) const override { return routedLayers_[size_t(layer)]; }
  bool flexiDepth(int layer) const override { return routedLayers_[size_t(layer)]; }

  void routeLayer(Engine& e, int layer, const float* xn, int64_t n, const LayerFlags& f) override {
    const Engine::FlexiDepthRouter& R = *e.flexiDepthRouter(layer);
    Ops& ops = e.ops();
    const ModelConfig& c = e.model().config;
    const int64_t d = c.hidden, r = R.enc.rows;
    const RowSet all = RowSet::dense(n);
    float* z = e.routerSmall();   // [n, r]
    float* u = e.routerHidden();  // [n, d]
    ops.matmul(z, r, xn, d, all, R.enc, nullptr, Epilogue::store());
    ops.rmsnorm(z, z, all, r, R.norm, c.rmsEps);
    ops.tanhRows(z, all, r);
    ops.matmul(u, d, z, r, all, R.dec, nullptr, Epilogue::store());
    ops.matmul(z, 1, u, d, all, R.head, nullptr, Epilogue::store());  // the logit, one per row
    ops.routeThreshold(f.attn, f.mlp, f.weight, z, n, threshold_);
  }

 private:
  float threshold_;
  std::vector<bool> routedLayers_;
};

}  // namespace

std::unique_ptr<Policy> makeFlexiDepthPolicy(const Engine& e, const PolicySpec& s) {
  if (e.model().flexiDepthLayers.empty())
    throw OptionError("policy",
                      "this model has no FlexiDepth router weights, which the flexidepth policy needs "
                      "(model.layers.{i}.router.* and router_proj.*); load them from the checkpoint or an add-on file");
  if (!(s.threshold >= 0.0f && s.threshold <= 1.0f))
    throw OptionError("policy.threshold", "must be in [0, 1] for the flexidepth policy");
  return std::make_unique<FlexiDepthPolicy>(e, s.threshold);
}

}  // namespace dg
