#include "graphs.h"

#include "common.cuh"

namespace dg {
namespace cuda {

StepGraph::~StepGraph() {
  // An exec still running is freed when it completes (cudaGraphExecDestroy does not wait).
  for (auto& c : chunks)
    if (c.exec) cudaGraphExecDestroy(c.exec);
}

std::vector<std::pair<size_t, size_t>> chunkRanges(size_t n) {
  static const size_t first[] = {4, 12, 32, 64};
  std::vector<std::pair<size_t, size_t>> out;
  size_t at = 0;
  for (size_t i = 0; at < n; i++) {
    const size_t len = i < 4 ? first[i] : 96;
    const size_t end = at + len < n ? at + len : n;
    out.push_back({at, end});
    at = end;
  }
  return out;
}

std::unique_ptr<StepGraph> captureStep(cudaStream_t stream, const std::vector<Rec>& recs,
                                       const std::function<void(const Rec&)>& issue, uint64_t generation,
                                       std::string* why) {
  auto g = std::make_unique<StepGraph>();
  g->recs = recs;
  g->generation = generation;
  for (const auto& range : chunkRanges(recs.size())) {
    cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
      cudaGetLastError();
      *why = std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e);
      return nullptr;
    }
    std::string failed;
    try {
      for (size_t i = range.first; i < range.second; i++) issue(recs[i]);
    } catch (const std::exception& ex) {
      failed = ex.what();
    }
    cudaGraph_t graph = nullptr;
    e = cudaStreamEndCapture(stream, &graph);
    if (!failed.empty() || e != cudaSuccess || !graph) {
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();  // capture errors are not sticky
      *why = !failed.empty() ? failed : std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
      return nullptr;
    }
    GraphChunk c;
    c.begin = range.first;
    c.end = range.second;
    e = cudaGraphInstantiate(&c.exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
      cudaGetLastError();
      *why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
      return nullptr;
    }
    g->chunks.push_back(c);
  }
  return g;
}

StepCounter::Entry* StepCounter::find(const std::vector<Rec>& recs, uint64_t h) {
  auto range = seen_.equal_range(h);
  for (auto it = range.first; it != range.second; ++it)
    if (it->second.recs == recs) return &it->second;
  return nullptr;
}

int StepCounter::note(const std::vector<Rec>& recs) {
  const uint64_t h = hashRecs(recs.data(), recs.size());
  if (Entry* e = find(recs, h)) {
    if (e->count >= 0) e->count++;
    return e->count;
  }
  if (seen_.size() >= 64) seen_.clear();
  seen_.emplace(h, Entry{recs, 1});
  return 1;
}

void StepCounter::markFailed(const std::vector<Rec>& recs) {
  if (Entry* e = find(recs, hashRecs(recs.data(), recs.size()))) e->count = -1;
}

}  // namespace cuda
}  // namespace dg
