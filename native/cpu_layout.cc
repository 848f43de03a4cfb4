// The CPU backend's layouts, made at load. Every matrix that decode streams (the decoder layers'
// projections and the LM head) gets a copy in one WeightArena (weight_arena.h), front to back in
// the order decode reads them:
//   - a Q8_0 matrix is repacked into Q8_0x16 (tensor.h; why in cpu/matmul_repacked.cc) when
//     cpuRepacksQ8_0();
//   - any other matrix is copied as it is when the arena gets transparent huge pages (why in
//     weight_arena.h), unless DEPTHGATE_CPU_HUGEPAGES=0; without huge pages a copy gains nothing.
// All of it within copyLimit(): a model that fits only as mapped pages stays mapped.
// One matrix at a time, and the bytes each copy replaces are given back at once: a quantized-on-load
// copy is freed, a GGUF row-order copy is freed, mapped file pages are dropped from the process
// (the page cache keeps them). So memory stays near one copy of the weights (the arena is virtual
// until written), and every step leaves the model whole: each view points at the old bytes or at
// the new ones. A matrix whose bytes cannot be given back is not copied.
// The embedding table keeps its stored layout and place (rows are looked up by token), except that
// with tied embeddings a copied LM head takes the table with it (they are one tensor); a repacked
// LM head gets its own copy beside the table.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "errors.h"
#include "kernels.h"
#include "model.h"
#include "threadpool.h"
#include "weight_arena.h"

namespace dg {

namespace {

// What holds the bytes at p, if the model can give them back: a quantized-on-load copy, a file's
// own copy (GGUF rows put back in HF order), or a file's mapping; all null when none of them.
struct Holder {
  std::vector<unsigned char>* quantized = nullptr;
  TensorFile* copyOf = nullptr;
  TensorFile* mapping = nullptr;
  explicit operator bool() const { return quantized || copyOf || mapping; }
};

Holder holderOf(Model& m, const void* p) {
  Holder h;
  for (auto& c : m.quantizedCopies)
    if (!c.empty() && c.data() == p) h.quantized = &c;
  for (const auto& f : m.store.files()) {
    if (f->ownsCopy(p)) h.copyOf = f.get();
    if (f->maps(p)) h.mapping = f.get();
  }
  return h;
}

// Frees the n bytes at p when the model owns them and drops them from the process when they are
// mapped file pages (the page cache keeps them); false when the model holds them in neither way.
bool giveBack(Model& m, const void* p, size_t n) {
  const Holder h = holderOf(m, p);
  if (h.quantized)
    std::vector<unsigned char>().swap(*h.quantized);
  else if (h.copyOf)
    h.copyOf->freeCopy(p);
  else if (h.mapping)
    releasePages(p, n);
  return bool(h);
}

// memcpy in 1 MB pieces across the pool: the arena's first touch (a page fault that clears each
// page) and the read of the source take about as long as the copy itself.
void copyBytes(ThreadPool& pool, void* dst, const void* src, size_t n) {
  constexpr size_t kPiece = size_t(1) << 20;
  pool.parallelFor(int64_t((n + kPiece - 1) / kPiece), [&](int64_t b, int64_t e, int) {
    const size_t lo = size_t(b) * kPiece, hi = std::min(n, size_t(e) * kPiece);
    std::memcpy(static_cast<unsigned char*>(dst) + lo, static_cast<const unsigned char*>(src) + lo, hi - lo);
  });
}

enum class Layout { Keep, Repack, Copy };

// The most bytes the copies may take: DEPTHGATE_CPU_COPY_LIMIT (bytes) when it is a number, else
// the memory still available less 1 GiB. Mapped file pages can be dropped and read again when
// memory runs short, a copy cannot (without swap): a model that only fits mapped stays mapped.
size_t copyLimit() {
  const char* v = std::getenv("DEPTHGATE_CPU_COPY_LIMIT");
  if (v && *v >= '0' && *v <= '9') {  // digits only: strtoull would wrap "-1" round
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (end != v && *end == 0) return size_t(n);
  }
  const size_t avail = availableMemoryBytes();
  if (avail == 0) return SIZE_MAX;  // unknown: no limit
  constexpr size_t kMargin = size_t(1) << 30;
  return avail > kMargin ? avail - kMargin : 0;
}

bool hugePagesWanted() {
  const char* v = std::getenv("DEPTHGATE_CPU_HUGEPAGES");
  return !(v && std::strcmp(v, "0") == 0) && transparentHugePagesOn();
}

}  // namespace

void layOutForCpu(Model& m, int threads, const std::function<bool()>& keepGoing) {
  const auto start = std::chrono::steady_clock::now();
  const bool repack = cpuRepacksQ8_0(), copy = hugePagesWanted();
  std::vector<Weight*> targets;
  for (LayerWeights& L : m.layers)
    for (Weight* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) targets.push_back(w);
  targets.push_back(&m.lmHead);
  const bool tied = m.lmHead.data == m.embed.data;
  std::vector<Layout> plan;
  size_t repackBytes = 0, copyBytesTotal = 0;
  for (Weight* w : targets) {
    Layout l = Layout::Keep;
    if (w->rows == 0 || w->cols == 0)
      l = Layout::Keep;
    else if (repack && w->dtype == DType::Q8_0 && w->cols % kQuantBlock == 0)
      l = Layout::Repack;
    else if (copy && holderOf(m, w->data))
      l = Layout::Copy;
    plan.push_back(l);
    if (l == Layout::Repack) repackBytes += WeightArena::footprint(w->rows * rowBytes(DType::Q8_0x16, w->cols));
    if (l == Layout::Copy) copyBytesTotal += WeightArena::footprint(w->bytes());
  }
  // Within the limit, the repacks first (they change the kernel), then the copies; all of a kind or
  // none of it.
  const size_t limit = copyLimit();
  const bool repackFits = repackBytes <= limit, copyFits = repackFits && copyBytesTotal <= limit - repackBytes;
  for (Layout& l : plan)
    if ((l == Layout::Repack && !repackFits) || (l == Layout::Copy && !copyFits)) l = Layout::Keep;
  const size_t capacity = (repackFits ? repackBytes : 0) + (copyFits ? copyBytesTotal : 0);
  if (capacity == 0) return;
  // The reason names the switch that makes the copy smaller.
  m.cpuArena = std::make_unique<WeightArena>(
      capacity, copy,
      copy ? "the CPU backend's copy of the weights (DEPTHGATE_CPU_HUGEPAGES=0 copies Q8_0 only)"
           : "the CPU backend's repacked Q8_0 weights (DEPTHGATE_CPU_REPACK=0 keeps them as stored)");
  m.cpuHugePages = m.cpuArena->hugePages();
  // The threads repack and copy; made here, so a model with nothing to copy starts none.
  ThreadPool pool(threads < 1 ? 1 : threads);
  for (size_t i = 0; i < targets.size(); i++) {
    Weight* w = targets[i];
    if (plan[i] == Layout::Keep) continue;
    if (keepGoing && !keepGoing()) throw Error(kErrAborted, "model load was aborted");
    Weight r = *w;
    if (plan[i] == Layout::Repack) {
      r.dtype = DType::Q8_0x16;
      // Rows are whole cache lines and the arena's pieces start on one, so the full chunks'
      // loads are aligned; a row's last, partial chunk is read with unaligned masked loads. Not
      // zero-filled: repackWeight writes every byte of every row.
      r.data = m.cpuArena->take(r.bytes());
      repackWeight(pool, *w, static_cast<unsigned char*>(const_cast<void*>(r.data)));
      m.repackedMatrices++;
    } else {
      r.data = m.cpuArena->take(r.bytes());
      copyBytes(pool, const_cast<void*>(r.data), w->data, w->bytes());
      m.placedMatrices++;
    }
    // With tied embeddings the table reads the old bytes: a repacked head leaves them in place,
    // a copied one takes the table along.
    const bool tableToo = w == &m.lmHead && tied;
    const bool stillUsed = tableToo && plan[i] == Layout::Repack;
    m.weightBytes += r.bytes();
    if (!stillUsed && giveBack(m, w->data, w->bytes())) m.weightBytes -= w->bytes();
    if (tableToo && !stillUsed) m.embed.data = r.data;
    *w = r;
  }
  m.cpuLayoutSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace dg
