// The CPU backend's layouts, made at load: each Q8_0 matrix that decode streams (the decoder
// layers' projections and the LM head) is repacked into Q8_0x16 (tensor.h; why in
// cpu/matmul_repacked.cc), one matrix at a time, and the bytes it replaces are given back at once:
// a quantized-on-load copy is freed, a GGUF row-order copy is freed, mapped file pages are dropped
// from the process (the page cache keeps them). So memory stays near one copy of the weights, and
// every step leaves the model whole: each view points at the old bytes or at the new ones.
// The embedding table keeps its stored layout (rows are looked up by token); with tied embeddings
// the LM head gets its own repacked copy beside it.
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "errors.h"
#include "kernels.h"
#include "model.h"
#include "threadpool.h"

namespace dg {

namespace {

// Frees the bytes at `p` when the model owns them (a quantized-on-load copy, a GGUF row-order
// copy) and drops them from the process when they are mapped file pages; false when neither.
bool giveBack(Model& m, const void* p, size_t n) {
  for (auto& c : m.quantizedCopies)
    if (!c.empty() && c.data() == p) {
      std::vector<unsigned char>().swap(c);
      return true;
    }
  for (const auto& f : m.store.files())
    if (f->freeCopy(p)) return true;
  for (const auto& f : m.store.files())
    if (f->maps(p)) {
      releasePages(p, n);
      return true;
    }
  return false;
}

}  // namespace

void repackForCpu(Model& m, int threads, const std::function<bool()>& keepGoing) {
  if (!cpuRepacksQ8_0()) return;
  const auto start = std::chrono::steady_clock::now();
  std::vector<Weight*> targets;
  for (LayerWeights& L : m.layers)
    for (Weight* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) targets.push_back(w);
  targets.push_back(&m.lmHead);
  std::unique_ptr<ThreadPool> pool;  // made for the first Q8_0 matrix: a bf16 model starts no threads
  for (Weight* w : targets) {
    if (w->dtype != DType::Q8_0 || w->cols % kQuantBlock != 0 || w->rows == 0) continue;
    if (keepGoing && !keepGoing()) throw Error(kErrAborted, "model load was aborted");
    if (!pool) pool = std::make_unique<ThreadPool>(threads < 1 ? 1 : threads);
    Weight r = *w;
    r.dtype = DType::Q8_0x16;
    // 64 bytes of slack so every row starts on a cache line (rows are whole lines): the full chunks'
    // loads are aligned; a row's last, partial chunk is read with unaligned masked loads. Not
    // zero-filled: repackWeight writes every byte of every row.
    m.cpuLayoutCopies.emplace_back(new unsigned char[r.bytes() + 64]);
    unsigned char* raw = m.cpuLayoutCopies.back().get();
    unsigned char* at = raw + (64 - reinterpret_cast<uintptr_t>(raw) % 64) % 64;
    repackWeight(*pool, *w, at);
    r.data = at;
    const bool stillUsed = w == &m.lmHead && m.embed.data == w->data;  // the embedding table reads it
    m.weightBytes += r.bytes();
    if (!stillUsed && giveBack(m, w->data, w->bytes())) m.weightBytes -= w->bytes();
    *w = r;
    m.repackedMatrices++;
  }
  m.repackSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace dg
