// Quantization on load: the `weights` load option. The checkpoint stays mapped as it is; the
// matrices that decode streams every token get block-quantized copies owned by the Model, and
// their Weight views are pointed at those copies. Which matrices, and why, is in model.h.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "kernels.h"
#include "model.h"
#include "threadpool.h"

namespace dg {

namespace {

struct Target {
  std::string name;  // the tensor's name in the checkpoint, for errors
  Weight* weight;
  DType to;
};

std::string fileOf(const Model& m, const std::string& name) {
  const TensorEntry* t = m.store.find(name);
  return t ? m.store.files()[t->file]->path() : std::string();
}

// llama.cpp's use_more_bits (llama-quant.cpp): the first and last eighth of the layers and every
// third one between them, whose attn_v and ffn_down Q4_K_M keeps in Q6_K.
bool useMoreBits(int layer, int layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

}  // namespace

void releasePages(const void* p, size_t n) {
  const uintptr_t page = 4096, b = reinterpret_cast<uintptr_t>(p), e = b + n;
  const uintptr_t lo = (b + page - 1) & ~(page - 1), hi = e & ~(page - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

void quantizeModel(Model& m, const std::string& format, int threads, const std::function<bool()>& keepGoing) {
  const auto start = std::chrono::steady_clock::now();
  const bool mix = format == "q4_k";  // Q4_K_M
  const DType base = format == "q8_0"   ? DType::Q8_0
                     : format == "q4_0" ? DType::Q4_0
                     : format == "q6_k" ? DType::Q6_K
                                        : DType::Q4_K;
  // The LM head: Q8_0 beside the 32-wide formats, Q6_K beside the K-quants (llama.cpp's choice for
  // output.weight in its K-quant mixes).
  const DType head = isKQuant(base) ? DType::Q6_K : DType::Q8_0;
  std::vector<Target> targets;
  const int layers = int(m.layers.size());
  for (int i = 0; i < layers; i++) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = m.layers[size_t(i)];
    const DType more = mix && useMoreBits(i, layers) ? DType::Q6_K : base;
    targets.push_back({p + "self_attn.q_proj.weight", &L.q, base});
    targets.push_back({p + "self_attn.k_proj.weight", &L.k, base});
    targets.push_back({p + "self_attn.v_proj.weight", &L.v, more});
    targets.push_back({p + "self_attn.o_proj.weight", &L.o, base});
    targets.push_back({p + "mlp.gate_proj.weight", &L.gate, base});
    targets.push_back({p + "mlp.up_proj.weight", &L.up, base});
    targets.push_back({p + "mlp.down_proj.weight", &L.down, more});
  }
  targets.push_back({m.config.tiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight", &m.lmHead, head});

  // A K-quant matrix not 256k wide falls back to Q8_0, as llama.cpp falls back to a 32-wide format
  // (it picks Q5_0 / Q8_0; depthgate has Q8_0). Every width is checked before any work, so a model
  // that cannot be quantized fails at once.
  for (Target& g : targets) {
    if (isKQuant(g.to) && g.weight->cols % kSuperBlock != 0) g.to = DType::Q8_0;
    if (g.weight->cols % kQuantBlock != 0)
      throw Error(kErrUnsupported,
                  "weights '" + format + "' needs every quantized matrix to be a multiple of 32 columns wide, but '" +
                      g.name + "' has " + std::to_string(g.weight->cols),
                  fileOf(m, g.name));
  }

  ThreadPool pool(threads < 1 ? 1 : threads);
  std::vector<std::vector<unsigned char>> copies;
  std::vector<Weight> quantized;
  copies.reserve(targets.size());
  for (const Target& g : targets) {
    if (keepGoing && !keepGoing()) throw Error(kErrAborted, "model load was aborted");
    Weight q = *g.weight;
    q.dtype = g.to;
    copies.emplace_back(q.bytes());
    if (!quantizeWeight(pool, *g.weight, g.to, copies.back().data()))
      throw Error(kErrFormat,
                  "tensor '" + g.name + "' holds a non-finite value, which " + dtypeName(g.to) + " cannot represent",
                  fileOf(m, g.name));
    q.data = copies.back().data();
    quantized.push_back(q);
  }
  // Nothing can fail from here: swap the views over and account for the bytes.
  std::vector<DType> used;  // the formats made
  for (size_t i = 0; i < targets.size(); i++) {
    Weight& w = *targets[i].weight;
    const bool stillUsed = &w == &m.lmHead && m.config.tiedEmbeddings;  // the embedding table reads it
    m.weightBytes += quantized[i].bytes();
    if (!stillUsed) {
      m.weightBytes -= w.bytes();
      releasePages(w.data, w.bytes());
    }
    w = quantized[i];
    if (std::find(used.begin(), used.end(), targets[i].to) == used.end()) used.push_back(targets[i].to);
  }
  // The layer format first, then the others in a fixed order (Q6_K, then Q8_0).
  auto rank = [&](DType t) { return t == base ? 100 : int(t); };
  std::sort(used.begin(), used.end(), [&](DType a, DType b) { return rank(a) > rank(b); });
  m.quantizedCopies = std::move(copies);
  m.weightFormat = format;
  std::string made;
  for (DType t : used) made += (made.empty() ? "" : "+") + std::string(dtypeName(t));
  m.dtypeSummary = made + " (from " + m.dtypeSummary + ")";
  m.quantizeSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace dg
