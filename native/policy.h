// Skip policies: for every layer a policy marks each row of the step run or skip, for attention
// and for the MLP (with a router weight w where it has one). The engine compacts the marks into
// index lists and runs queries, attention, output projection and MLP on the active rows only;
// every row still writes its K/V (see engine.cc). One file per policy in native/policies/.
//
// A policy decides in one of two ways, per layer:
// - from facts the host knows before the step (static sets, D3's depth from the generated-token
//   index): planLayer() fills the layer's flags on the host, and they are uploaded with the step;
// - from the hidden state (FlexiDepth, SkipLayer routers): routeLayer()/routeMlp() issue backend
//   ops that write the flags (and w) into the step's plan in backend memory, so the host never
//   waits for a router's output.
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

// One layer's slice of the step plan, in backend memory: [rows] each.
struct LayerFlags {
  uint8_t* attn;  // 1 = the row's query, attention and output projection run
  uint8_t* mlp;   // 1 = the row's MLP runs
  float* weight;  // router weight w (FlexiDepth), NaN where the policy has none
};

class Policy {
 public:
  virtual ~Policy() = default;
  // True when the backend decides this layer (a router); false when planLayer() does.
  virtual bool routed(int layer) const = 0;
  // FlexiDepth's MLP on this layer: run rows add w * MLP, skipped rows add (1 - w) * adapter.
  virtual bool flexiDepth(int) const { return false; }
  // The MLP decision depends on the post-attention state (SkipLayer per-module routers).
  virtual bool routesMlpAfterAttention(int) const { return false; }
  // Host decisions for a layer that is not routed (the buffers start at 1).
  virtual void planLayer(int, const RowMeta*, int64_t, uint8_t* /*attn*/, uint8_t* /*mlp*/) const {}
  // A routed layer: called with the layer's normed input xn (all rows) before any query work.
  virtual void routeLayer(Engine&, int, const float* /*xn*/, int64_t, const LayerFlags&) {}
  // When routesMlpAfterAttention: y = post_attention_layernorm(h') for all rows.
  virtual void routeMlp(Engine&, int, const float* /*y*/, int64_t, const LayerFlags&) {}
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
