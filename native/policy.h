// Skip policies: at the start of every layer a policy marks each row of the batch run or skip
// (per module, with a router weight where it has one). The engine compacts the marks into index
// lists and runs queries, attention, output projection and MLP on the active rows only; every row
// still writes its K/V (see engine.cc). One file per policy in native/policies/.
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dg {

class Engine;

// Normalised by src/policy.ts; the native side checks it again against the model.
struct PolicySpec {
  enum Type { None, Static, FlexiDepth, SkipLayer, D3 } type = None;
  // static
  std::vector<int> skipLayers, skipAttention, skipMlp;
  // flexidepth
  float threshold = 0.5f;
  // d3
  double alpha = 1.0;
  int start = 0;
  int minLayers = 2;
};

// Per-row facts a policy may use.
struct RowMeta {
  int32_t pos;       // absolute position in its sequence
  int32_t genIndex;  // index of the generated token this row produces; < 1 for prompt rows
};

// One layer's decisions for the rows of a chunk.
struct LayerPlan {
  std::vector<uint8_t> attn;  // 1 = attention (query side) runs for the row
  std::vector<uint8_t> mlp;   // 1 = MLP runs for the row
  std::vector<float> weight;  // router weight w (FlexiDepth), NaN when the policy has none
  // FlexiDepth: run rows add w * MLP, skipped rows add (1 - w) * adapter(y).
  bool flexiDepth = false;
  // The MLP decision depends on the post-attention state (SkipLayer per module).
  bool routeMlpAfterAttention = false;

  void reset(int64_t rows) {
    attn.assign(size_t(rows), 1);
    mlp.assign(size_t(rows), 1);
    weight.assign(size_t(rows), NAN);
    flexiDepth = false;
    routeMlpAfterAttention = false;
  }
};

class Policy {
 public:
  virtual ~Policy() = default;
  // Called with the layer's normed input xn (all rows, backend memory) before any query work.
  virtual void routeLayer(Engine& e, int layer, const float* xn, const RowMeta* rows, int64_t n,
                          LayerPlan& plan) = 0;
  // Called when plan.routeMlpAfterAttention, with y = post_attention_layernorm(h') for all rows.
  virtual void routeMlp(Engine&, int, const float*, int64_t, LayerPlan&) {}
};

// policies/*.cc. Each factory checks the spec against the model and throws dg::Error.
std::unique_ptr<Policy> makeStaticPolicy(const Engine& e, const PolicySpec& s);
std::unique_ptr<Policy> makeFlexiDepthPolicy(const Engine& e, const PolicySpec& s);
std::unique_ptr<Policy> makeSkipLayerPolicy(const Engine& e, const PolicySpec& s);
std::unique_ptr<Policy> makeD3Policy(const Engine& e, const PolicySpec& s);
// Null for PolicySpec::None: the engine then runs every layer for every row.
std::unique_ptr<Policy> makePolicy(const Engine& e, const PolicySpec& s);

// D3's depth for the pass producing generated token `genIndex` (prompt rows: genIndex < 1 -> L),
// and whether layer l is kept at that depth: the first ceil(N/2) and the last floor(N/2) layers.
int d3Depth(int layers, int genIndex, double alpha, int start, int minLayers);
bool d3Keeps(int layers, int depth, int layer);

}  // namespace dg
