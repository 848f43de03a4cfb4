// A loaded checkpoint: dimensions, weight views into the mapped files, and the few small
// tensors (norms, biases) converted to f32 at load. Large weights are never copied.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "safetensors.h"
#include "tensor.h"
#include "weight_arena.h"

namespace dg {

// Normalised by src/config.ts from config.json; every field is validated there and here.
struct ModelConfig {
  std::string architecture;  // LlamaForCausalLM | MistralForCausalLM | Qwen2ForCausalLM
  int vocab = 0, hidden = 0, layers = 0, heads = 0, kvHeads = 0, headDim = 0, intermediate = 0;
  int maxPositions = 0;
  float rmsEps = 1e-6f;
  double ropeTheta = 10000.0;
  std::string ropeType = "default";  // default | linear | llama3
  double ropeFactor = 1.0, lowFreqFactor = 1.0, highFreqFactor = 4.0;
  int originalMaxPositions = 8192;
  bool tiedEmbeddings = false;
  bool qkvBias = false;   // Qwen2, or Llama attention_bias
  bool oBias = false;     // Llama attention_bias
  bool mlpBias = false;   // Llama mlp_bias
  int slidingWindow = 0;  // 0 = none (Mistral sets it)
  // FlexiDepth's config.routing_layers, when config.json has it (an add-on file brings none).
  bool hasRoutingLayers = false;
  std::vector<int> routingLayers;
  // config.json's router_reduction_factor / proj_reduction_factor (0 when absent). The widths come
  // from the tensors' shapes; these are only checked against them (hidden / r, intermediate / p).
  int routerReductionFactor = 0, projReductionFactor = 0;
  // Path of config.json, for errors about what it says.
  std::string configFile = "config.json";
};

// FlexiDepth router and adapter of one layer, under the official key names
// model.layers.{i}.router.* and model.layers.{i}.router_proj.* (those of the FlexiDepth paper's
// released modeling_ddllama.py; README "The official FlexiDepth checkpoint" lists the tensors and shapes).
struct FlexiDepthWeights {
  bool present = false;
  Weight enc, dec, head;    // [r, d], [d, r], [1, d]
  std::vector<float> norm;  // [r] router_norm
  Weight gate, down, up;    // adapter: [m, d], [m, d] (maps d -> m despite its name), [d, m]
};

// SkipLayer routers: bias-free Linear(hidden -> 2) with logits [skip, run]. Key names (ours):
// model.layers.{i}.skip_router.weight (whole layer, on input_layernorm(h)), or per module
// model.layers.{i}.self_attn.skip_router.weight (on input_layernorm(h)) and
// model.layers.{i}.mlp.skip_router.weight (on post_attention_layernorm(h')).
struct SkipRouterWeights {
  bool layer = false, attn = false, mlp = false;
  Weight wLayer, wAttn, wMlp;  // [2, d]
};

struct LayerWeights {
  std::vector<float> inputNorm, postAttnNorm;
  Weight q, k, v, o, gate, up, down;
  std::vector<float> qBias, kBias, vBias, oBias, gateBias, upBias, downBias;  // empty when absent
  FlexiDepthWeights flexi;
  SkipRouterWeights skip;
};

struct Model {
  ModelConfig config;
  TensorStore store;
  Weight embed;   // [vocab, hidden]
  Weight lmHead;  // [vocab, hidden]; aliases embed when tied
  std::vector<float> finalNorm;
  std::vector<LayerWeights> layers;
  std::vector<float> invFreq;  // [headDim/2], RoPE frequencies after scaling
  size_t weightBytes = 0;      // bytes of every tensor the model uses
  int64_t parameters = 0;
  std::string dtypeSummary;           // e.g. "BF16" or "BF16+F32"
  std::vector<int> flexiDepthLayers;  // layers with FlexiDepth routers
  std::vector<int> skipRouterLayers;  // layers with any SkipLayer router
  // Quantization on load (quantize_model.cc): the format asked for ("stored" when none), the
  // quantized copies the weights above point into, and how long making them took.
  std::string weightFormat = "stored";
  std::vector<std::vector<unsigned char>> quantizedCopies;
  double quantizeSeconds = 0;
  // The CPU backend's layouts (cpu_layout.cc): the arena the views above point into, how many
  // matrices were repacked and how many copied as they are, whether the arena was advised for huge
  // pages, and how long all that took.
  std::unique_ptr<WeightArena> cpuArena;
  int repackedMatrices = 0;
  int placedMatrices = 0;
  bool cpuHugePages = false;
  double cpuLayoutSeconds = 0;
};

// Opens `files` (the checkpoint's shards, then any add-on files with router weights), checks that exactly the tensors
// the config needs are there with the right shapes, and binds them. onProgress(done, total) is called while pages are
// read in. Throws dg::Error; everything taken so far is released by the throw.
std::unique_ptr<Model> loadModel(const ModelConfig& cfg, const std::vector<std::string>& files, bool prefault,
                                 const std::function<bool(double)>& onProgress);

// quantize_model.cc: replaces the decoder layers' projections (q, k, v, o, gate, up, down) and the
// LM head with quantized copies, by `format` (the `weights` load option):
//   "q8_0", "q4_0": every projection in that format, the LM head in Q8_0 (the format with the most
//     precision there is; llama.cpp too keeps the output matrix above Q4 precision);
//   "q4_k": llama.cpp's Q4_K_M mix: Q4_K, except v and down in Q6_K on the layers llama.cpp's
//     use_more_bits picks (the first and last eighth and every third between), the LM head Q6_K;
//   "q6_k": every projection and the LM head in Q6_K.
// A K-quant matrix whose width is not a multiple of 256 is made Q8_0 instead. The embedding
// table and the FlexiDepth / SkipLayer router and adapter weights keep their stored dtype. `threads`
// quantize in parallel. Throws dg::Error naming the tensor when one is not 32k columns wide
// (kErrUnsupported) or holds a non-finite value (kErrFormat); the model then holds no copies.
void quantizeModel(Model& m, const std::string& format, int threads, const std::function<bool()>& keepGoing);

// cpu_layout.cc: for a model the CPU backend will run, copies every projection and the LM head
// into one arena (weight_arena.h): Q8_0 repacked into Q8_0x16 (tensor.h) when cpuRepacksQ8_0()
// (kernels.h), the rest as they are when the arena gets transparent huge pages and
// DEPTHGATE_CPU_HUGEPAGES is not "0"; all within the memory available (see cpu_layout.cc). Gives
// back the bytes each copy replaces. Throws dg::Error
// (kErrAborted) when keepGoing says stop, kErrMemory when the arena cannot be reserved; the model
// stays whole.
void layOutForCpu(Model& m, int threads, const std::function<bool()>& keepGoing);

// Drops the mapped file pages wholly inside [p, p + n) from this process (quantize_model.cc): a copy
// replaced them, and the page cache keeps them for whoever else reads the file. Pages shared with
// a neighbouring tensor are kept. Only for memory that maps a file (anonymous pages would read 0).
void releasePages(const void* p, size_t n);

// RoPE inverse frequencies with HF's scaling rules (default, linear, llama3).
std::vector<float> ropeInvFreq(const ModelConfig& c);

}  // namespace dg
