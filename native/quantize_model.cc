// Quantization on load: the `weights` load option. The checkpoint stays mapped as it is; the
// matrices that decode streams every token get block-quantized copies owned by the Model, and
// their Weight views are pointed at those copies. Which matrices, and why, is in model.h.
#include <sys/mman.h>

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

// Drops the mapped pages wholly inside [p, p + n) from this process: the copy replaced them, and
// the file's pages stay in the page cache for whoever else reads them. Pages shared with a
// neighbouring tensor are kept (they are refaulted on use anyway, so this is only about memory).
void releasePages(const void* p, size_t n) {
  const uintptr_t page = 4096, b = reinterpret_cast<uintptr_t>(p), e = b + n;
  const uintptr_t lo = (b + page - 1) & ~(page - 1), hi = e & ~(page - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace

void quantizeModel(Model& m, DType t, int threads, const std::function<bool()>& keepGoing) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<Target> targets;
  for (size_t i = 0; i < m.layers.size(); i++) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = m.layers[i];
    targets.push_back({p + "self_attn.q_proj.weight", &L.q, t});
    targets.push_back({p + "self_attn.k_proj.weight", &L.k, t});
    targets.push_back({p + "self_attn.v_proj.weight", &L.v, t});
    targets.push_back({p + "self_attn.o_proj.weight", &L.o, t});
    targets.push_back({p + "mlp.gate_proj.weight", &L.gate, t});
    targets.push_back({p + "mlp.up_proj.weight", &L.up, t});
    targets.push_back({p + "mlp.down_proj.weight", &L.down, t});
  }
  targets.push_back({m.config.tiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight", &m.lmHead, DType::Q8_0});

  // Every width is checked before any work, so a model that cannot be quantized fails at once.
  for (const Target& g : targets)
    if (g.weight->cols % kQuantBlock != 0)
      throw Error(kErrUnsupported,
                  std::string("weights '") + (t == DType::Q8_0 ? "q8_0" : "q4_0") +
                      "' needs every quantized matrix to be a " + "multiple of 32 columns wide, but '" + g.name +
                      "' has " + std::to_string(g.weight->cols),
                  fileOf(m, g.name));

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
  for (size_t i = 0; i < targets.size(); i++) {
    Weight& w = *targets[i].weight;
    const bool stillUsed = &w == &m.lmHead && m.config.tiedEmbeddings;  // the embedding table reads it
    m.weightBytes += quantized[i].bytes();
    if (!stillUsed) {
      m.weightBytes -= w.bytes();
      releasePages(w.data, w.bytes());
    }
    w = quantized[i];
  }
  m.quantizedCopies = std::move(copies);
  m.weightFormat = t == DType::Q8_0 ? "q8_0" : "q4_0";
  m.dtypeSummary = std::string(dtypeName(t)) + (t == DType::Q8_0 ? "" : "+Q8_0") + " (from " + m.dtypeSummary + ")";
  m.quantizeSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace dg
