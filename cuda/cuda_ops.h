// The CUDA op table (dg::Ops over device memory): one stream per table, every op stream-ordered
// and asynchronous except download() and sync().
//
// Each op becomes a record (records.h) that is executed at once, and, between a step's upload
// and its download, kept for graph capture. The step state machine (backend.cu):
//   Idle       no step in progress: ops run eagerly.
//   Recording  ops run eagerly and are recorded; at the download the step's records are counted
//              and, the second time the same records are seen, captured into a graph.
//   Matching   the step's records so far equal a graph's: nothing runs yet except the graph
//              chunks whose records have all matched. A record that differs "flushes": the
//              matched records not yet launched run eagerly and the step goes on Recording.
// A graph replays only when every record of the step, and the backend generation (bumped when
// any buffer baked into graphs moves), are equal to the graph's. DEPTHGATE_CUDA_GRAPHS=0 turns
// graphs off; DEPTHGATE_CUDA_SYNC=1 turns them off too and synchronises and checks after every
// op, naming the op that failed.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "common.cuh"
#include "graphs.h"
#include "memory.h"
#include "records.h"

namespace dg {
namespace cuda {

class CudaOps final : public Ops {
 public:
  explicit CudaOps(int device);
  ~CudaOps() override;
  const char* name() const override { return "cuda"; }

  // backend.cu
  void* alloc(size_t bytes) override;
  void release(void* p) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void upload(void* dst, const void* host, size_t bytes) override;
  void download(void* host, const void* src, size_t bytes) override;
  void sync() override;
  Weight prepareWeight(const Weight& hostView) override;

  // ops.cu: each builds its record and submits it
  void embed(float* x, const int32_t* tokens, int64_t rows, const Weight& table) override;
  void rmsnorm(float* out, const float* x, RowSet rows, int64_t dim, const float* weight, float eps) override;
  void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W, const float* bias,
              Epilogue ep) override;
  void matmul2(float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx, RowSet rows,
               const Weight& W0, const float* b0, const Weight& W1, const float* b1) override;
  void matmulGateUp(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                    const float* bg, const Weight& Wu, const float* bu) override;
  void kvWriteRope(float* k, const float* v, const StepRows& step, int layer, const AttnShape& a,
                   const float* invFreq) override;
  void ropeRows(float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                const float* invFreq) override;
  void attention(float* out, const float* q, RowSet rows, const StepRows& step, int layer, const AttnShape& a) override;
  void tanhRows(float* x, RowSet rows, int64_t dim) override;
  void routeThreshold(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits, int64_t rows,
                      float threshold) override;
  void routeArgmax(uint8_t* run, const float* logits, int64_t rows) override;
  void compact(const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
               int32_t* skipCount) override;
  void sample(int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
              const PenaltyToken* penalties) override;

 private:
  enum class Seg { Idle, Recording, Matching };
  enum ScratchSlot { kScratchAttention = 0, kScratchSample, kScratchNorm, kScratchGateUp, kScratchSlots };

  // backend.cu: the step state machine
  void use();                            // makes this table's device current on the calling thread
  void submit(const Rec& r);             // a compute op or device copy
  void guardedSubmit(const Rec& r);      // submit; on an error, leaves the step first
  bool matchNext(const Rec& r);          // Matching: keeps the candidates whose next record is r
  void launchReady();                    // Matching: launches the fully matched chunks
  void flush();                          // Matching -> Recording, running what the graph did not
  void endStep();                        // back to Idle; frees what was released during the step
  void abandonStep();                    // a non-stream call (alloc, sync, ...) inside a step
  void recordStep(const Rec& download);  // counts a recorded step and captures it the second time
  void invalidateGraphs();               // a buffer baked into graphs moved
  // ops.cu
  void execute(const Rec& r, bool capturing);  // issues one record on the stream
  void checkAfter(const Rec& r);               // DEPTHGATE_CUDA_SYNC=1
  void* scratch(ScratchSlot slot, size_t bytes, bool capturing);

  int device_;
  Dev dev_;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;      // every method; download() drops it while it waits
  std::mutex downMu_;  // one download at a time (the bounce buffer)
  DeviceHeap heap_;
  StagingRing ring_;
  PinnedBuffer stepIn_;   // graphs' upload source: the step's uploaded bytes at their offsets
  PinnedBuffer stepOut_;  // graphs' download target
  PinnedBuffer bounce_;   // eager downloads
  cudaEvent_t stepInFree_ = nullptr, downDone_ = nullptr;
  struct Scratch {
    void* p = nullptr;
    size_t bytes = 0;
  } scratch_[kScratchSlots];
  uint64_t generation_ = 1;
  bool graphsOn_ = true, syncEach_ = false;

  Seg seg_ = Seg::Idle;
  std::vector<Rec> recs_;  // this step's records
  uint64_t stepUploadBytes_ = 0;
  std::vector<StepGraph*> cands_;  // Matching: graphs equal to the step so far
  size_t launchedChunks_ = 0, launchedRecs_ = 0;
  std::vector<std::unique_ptr<StepGraph>> graphs_;
  StepCounter counter_;
  uint64_t clock_ = 0;
  std::vector<void*> deferred_;  // released during a step

  std::map<std::pair<const void*, size_t>, void*> weights_;  // host view -> device copy
};

}  // namespace cuda
}  // namespace dg
