// A CPU op table in a child process, reached through a socket: the harness's second backend on a
// machine without a GPU. The child is this same executable started again with
// DEPTHGATE_CPU_KERNELS set (the kernel variant is chosen once per process, so a second variant
// needs a second process) and its own thread count.
//
// It also behaves like a device: its memory is a separate address space. Every pointer it hands
// out lies in a range that the parent has reserved with no access, so a host-side read or write
// of backend memory (which on a GPU would be a crash or garbage) faults at once here; and the
// child checks that every pointer an op receives lies inside one of its live allocations, so
// host memory passed where backend memory belongs (a missing upload) is an error that names the
// op and the argument.
#pragma once
#include <sys/types.h>

#include <string>

#include "backend.h"

namespace parity {

class ChildOps final : public dg::Ops {
 public:
  // Starts `exe` as the child with the kernel variant (scalar, avx2, avx512) and thread count.
  ChildOps(const std::string& exe, const std::string& variant, int threads);
  ~ChildOps() override;
  const char* name() const override { return "cpu-child"; }

  void* alloc(size_t bytes) override;
  void release(void* p) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void upload(void* dst, const void* host, size_t bytes) override;
  void download(void* host, const void* src, size_t bytes) override;
  void sync() override;
  dg::Weight prepareWeight(const dg::Weight& hostView) override;

  void embed(float* x, const int32_t* tokens, int64_t rows, const dg::Weight& table) override;
  void rmsnorm(float* out, const float* x, dg::RowSet rows, int64_t dim, const float* weight, float eps) override;
  void matmul(float* out, int64_t ldo, const float* x, int64_t ldx, dg::RowSet rows, const dg::Weight& W,
              const float* bias, dg::Epilogue ep) override;
  void matmul2(float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx, dg::RowSet rows,
               const dg::Weight& W0, const float* b0, const dg::Weight& W1, const float* b1) override;
  void matmulGateUp(float* out, int64_t ldo, const float* x, int64_t ldx, dg::RowSet rows, const dg::Weight& Wg,
                    const float* bg, const dg::Weight& Wu, const float* bu) override;
  void kvWriteRope(float* k, const float* v, const dg::StepRows& step, int layer, const dg::AttnShape& a,
                   const float* invFreq) override;
  void ropeRows(float* q, int64_t ldq, dg::RowSet rows, const dg::StepRows& step, int nHeads, int headDim,
                const float* invFreq) override;
  void attention(float* out, const float* q, dg::RowSet rows, const dg::StepRows& step, int layer,
                 const dg::AttnShape& a) override;
  void tanhRows(float* x, dg::RowSet rows, int64_t dim) override;
  void routeThreshold(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits, int64_t rows,
                      float threshold) override;
  void routeArgmax(uint8_t* run, const float* logits, int64_t rows) override;
  void compact(const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
               int32_t* skipCount) override;
  void sample(int32_t* tokens, float* logits, int64_t rows, int64_t vocab, dg::SampleRow* params,
              const dg::PenaltyToken* penalties) override;

  // Frees the weights prepared so far (the harness calls it after each case).
  void forgetWeights();
  // What the child reports: its kernel variant and its live allocations (weights excluded).
  std::string variant();
  size_t liveAllocations();

 private:
  void call(uint32_t op, const void* args, size_t argBytes, const void* extra, size_t extraBytes, void* reply,
            size_t replyBytes);
  int fd_ = -1;
  pid_t pid_ = -1;
  void* reserved_ = nullptr;
  size_t reservedBytes_ = 0;
  bool dead_ = false;
  std::string deathReason_;
};

// The child's side: serves requests on `fd` until the parent closes it. Returns the exit status.
// argv: exe --parity-child FD ARENA_ADDRESS ARENA_BYTES THREADS
int childMain(int argc, char** argv);

}  // namespace parity
