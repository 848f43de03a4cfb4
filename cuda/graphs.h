// CUDA graphs of whole steps (see cuda/README.md, "Graphs"): a step is the ops from an upload
// to the next download. A step whose records have been seen twice is captured into graph
// chunks; a later step replays them only if every one of its records equals the graph's,
// checked as the ops arrive, each chunk launched as soon as all of its records have matched.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "records.h"

namespace dg {
namespace cuda {

struct GraphChunk {
  size_t begin = 0, end = 0;  // records [begin, end)
  cudaGraphExec_t exec = nullptr;
};

struct StepGraph {
  std::vector<Rec> recs;  // the step, upload first, download last
  std::vector<GraphChunk> chunks;
  uint64_t generation = 0;  // the backend state its pointers belong to (see CudaOps::generation_)
  uint64_t lastUse = 0;
  ~StepGraph();
};

// Chunk boundaries for n records: small first chunks so the GPU starts early, then 96 records.
std::vector<std::pair<size_t, size_t>> chunkRanges(size_t n);

// Captures `recs` chunk by chunk on `stream` (thread-local capture mode), issuing each record
// with `issue`. Returns null and says why when a capture or instantiation fails; the stream is
// left out of capture mode either way.
std::unique_ptr<StepGraph> captureStep(cudaStream_t stream, const std::vector<Rec>& recs,
                                       const std::function<void(const Rec&)>& issue, uint64_t generation,
                                       std::string* why);

// How often each step's record sequence has been seen (bounded; forgets everything when full).
class StepCounter {
 public:
  // Counts one more sighting of `recs`, returns the count (-1 once marked uncapturable).
  int note(const std::vector<Rec>& recs);
  void markFailed(const std::vector<Rec>& recs);

 private:
  struct Entry {
    std::vector<Rec> recs;
    int count;
  };
  Entry* find(const std::vector<Rec>& recs, uint64_t h);
  std::unordered_multimap<uint64_t, Entry> seen_;
};

}  // namespace cuda
}  // namespace dg
