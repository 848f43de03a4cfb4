// The compute ops of CudaOps: each builds its record and submits it to the step state machine
// (backend.cu); execute() turns a record into launches on the stream, eagerly or under capture.
#include <algorithm>

#include "cuda_ops.h"

namespace dg {
namespace cuda {

const char* opName(OpKind k) {
  switch (k) {
    case OpKind::Upload:
      return "upload";
    case OpKind::Download:
      return "download";
    case OpKind::Copy:
      return "copy";
    case OpKind::Embed:
      return "embed";
    case OpKind::Rmsnorm:
      return "rmsnorm";
    case OpKind::Matmul:
      return "matmul";
    case OpKind::Matmul2:
      return "matmul2";
    case OpKind::GateUp:
      return "matmulGateUp";
    case OpKind::KvWriteRope:
      return "kvWriteRope";
    case OpKind::RopeRows:
      return "ropeRows";
    case OpKind::Attention:
      return "attention";
    case OpKind::Tanh:
      return "tanhRows";
    case OpKind::RouteThreshold:
      return "routeThreshold";
    case OpKind::RouteArgmax:
      return "routeArgmax";
    case OpKind::Compact:
      return "compact";
    case OpKind::Sample:
      return "sample";
  }
  return "?";
}

// Scratch buffers grow (never during a capture: the same records ran eagerly just before, so
// they are already big enough) and a growth invalidates every graph, whose kernels hold the old
// pointer. The old buffer is freed in stream order, after the ops that use it.
void* CudaOps::scratch(ScratchSlot slot, size_t bytes, bool capturing) {
  Scratch& s = scratch_[slot];
  if (bytes <= s.bytes) return s.p;
  if (capturing) throw Error(kErrArg, "a scratch buffer would grow during graph capture");
  const size_t want = std::max(bytes, s.bytes * 2);
  void* p = heap_.alloc(want, "scratch");
  heap_.free(s.p);
  s.p = p;
  s.bytes = want;
  invalidateGraphs();
  return p;
}

void CudaOps::execute(const Rec& r, bool capturing) {
  switch (r.kind) {
    case OpKind::Upload: {  // replaying a matched step, or captured: the bytes are in stepIn_
      const auto a = r.as<UploadA>();
      CUDA_CHECK(cudaMemcpyAsync(a.dst, stepIn_.data() + a.offset, a.bytes, cudaMemcpyHostToDevice, stream_));
      break;
    }
    case OpKind::Download: {  // only captured (the last record of a step)
      const auto a = r.as<DownloadA>();
      CUDA_CHECK(cudaMemcpyAsync(stepOut_.data(), a.src, a.bytes, cudaMemcpyDeviceToHost, stream_));
      break;
    }
    case OpKind::Copy: {
      const auto a = r.as<CopyA>();
      CUDA_CHECK(cudaMemcpyAsync(a.dst, a.src, a.bytes, cudaMemcpyDeviceToDevice, stream_));
      break;
    }
    case OpKind::Embed: {
      const auto a = r.as<EmbedA>();
      launchEmbed(dev_, a.x, a.tokens, a.rows, a.table.get());
      break;
    }
    case OpKind::Rmsnorm: {
      const auto a = r.as<RmsnormA>();
      float* tmp = rmsnormNeedsScratch(a.out, a.x, a.rows)
                       ? static_cast<float*>(scratch(kScratchNorm, size_t(a.rows.max) * size_t(a.dim) * 4, capturing))
                       : nullptr;
      launchRmsnorm(dev_, a.out, a.x, a.rows, a.dim, a.w, bitsFloat(a.eps), tmp);
      break;
    }
    case OpKind::Matmul: {
      const auto a = r.as<MatmulA>();
      launchMatmul(dev_, a.out, a.ldo, a.x, a.ldx, a.rows, a.W.get(), a.bias, a.ep.get());
      break;
    }
    case OpKind::Matmul2: {
      const auto a = r.as<Matmul2A>();
      launchMatmul2(dev_, a.out0, a.ldo0, a.out1, a.ldo1, a.x, a.ldx, a.rows, a.W0.get(), a.b0, a.W1.get(), a.b1);
      break;
    }
    case OpKind::GateUp: {
      const auto a = r.as<GateUpA>();
      const Weight g = a.Wg.get(), u = a.Wu.get();
      float* up = gateUpNeedsScratch(g, u) && a.rows.max > 0
                      ? static_cast<float*>(scratch(kScratchGateUp, size_t(a.rows.max) * size_t(u.rows) * 4, capturing))
                      : nullptr;
      launchGateUp(dev_, a.out, a.ldo, a.x, a.ldx, a.rows, g, a.bg, u, a.bu, up);
      break;
    }
    case OpKind::KvWriteRope: {
      const auto a = r.as<KvWriteRopeA>();
      launchKvWriteRope(dev_, a.k, a.v, a.step, int(a.layer), a.a.get(), a.invFreq);
      break;
    }
    case OpKind::RopeRows: {
      const auto a = r.as<RopeRowsA>();
      launchRopeRows(dev_, a.q, a.ldq, a.rows, a.step, int(a.nHeads), int(a.headDim), a.invFreq);
      break;
    }
    case OpKind::Attention: {
      const auto a = r.as<AttentionA>();
      const AttnShape sh = a.a.get();
      const size_t bytes = attentionScratchBytes(dev_, a.rows, sh);
      void* p = bytes ? scratch(kScratchAttention, bytes, capturing) : nullptr;
      launchAttention(dev_, a.out, a.q, a.rows, a.step, int(a.layer), sh, p);
      break;
    }
    case OpKind::Tanh: {
      const auto a = r.as<TanhA>();
      launchTanhRows(dev_, a.x, a.rows, a.dim);
      break;
    }
    case OpKind::RouteThreshold: {
      const auto a = r.as<RouteThresholdA>();
      launchRouteThreshold(dev_, a.runAttn, a.runMlp, a.weight, a.logits, a.rows, bitsFloat(a.threshold));
      break;
    }
    case OpKind::RouteArgmax: {
      const auto a = r.as<RouteArgmaxA>();
      launchRouteArgmax(dev_, a.run, a.logits, a.rows);
      break;
    }
    case OpKind::Compact: {
      const auto a = r.as<CompactA>();
      launchCompact(dev_, a.flags, a.rows, a.runIdx, a.runCount, a.skipIdx, a.skipCount);
      break;
    }
    case OpKind::Sample: {
      const auto a = r.as<SampleA>();
      const size_t bytes = sampleScratchBytes(a.rows, a.vocab);
      void* p = bytes ? scratch(kScratchSample, bytes, capturing) : nullptr;
      launchSample(dev_, a.tokens, a.logits, a.rows, a.vocab, a.params, a.penalties, p);
      break;
    }
  }
}

// ---- the op table -------------------------------------------------------------------------

#define DG_OP(kind, Args, ...)           \
  std::lock_guard<std::mutex> lock(mu_); \
  use();                                 \
  guardedSubmit(Rec::of(OpKind::kind, Args{__VA_ARGS__}))

void CudaOps::embed(float* x, const int32_t* tokens, int64_t rows, const Weight& table) {
  DG_OP(Embed, EmbedA, x, tokens, rows, WeightA::of(table));
}
void CudaOps::rmsnorm(float* out, const float* x, RowSet rows, int64_t dim, const float* weight, float eps) {
  DG_OP(Rmsnorm, RmsnormA, out, x, rows, dim, weight, floatBits(eps));
}
void CudaOps::matmul(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W,
                     const float* bias, Epilogue ep) {
  DG_OP(Matmul, MatmulA, out, ldo, x, ldx, rows, WeightA::of(W), bias, EpilogueA::of(ep));
}
void CudaOps::matmul2(float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx, RowSet rows,
                      const Weight& W0, const float* b0, const Weight& W1, const float* b1) {
  DG_OP(Matmul2, Matmul2A, out0, ldo0, out1, ldo1, x, ldx, rows, WeightA::of(W0), b0, WeightA::of(W1), b1);
}
void CudaOps::matmulGateUp(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                           const float* bg, const Weight& Wu, const float* bu) {
  DG_OP(GateUp, GateUpA, out, ldo, x, ldx, rows, WeightA::of(Wg), bg, WeightA::of(Wu), bu);
}
void CudaOps::kvWriteRope(float* k, const float* v, const StepRows& step, int layer, const AttnShape& a,
                          const float* invFreq) {
  DG_OP(KvWriteRope, KvWriteRopeA, k, v, step, layer, AttnA::of(a), invFreq);
}
void CudaOps::ropeRows(float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                       const float* invFreq) {
  DG_OP(RopeRows, RopeRowsA, q, ldq, rows, step, nHeads, headDim, invFreq);
}
void CudaOps::attention(float* out, const float* q, RowSet rows, const StepRows& step, int layer, const AttnShape& a) {
  DG_OP(Attention, AttentionA, out, q, rows, step, layer, AttnA::of(a));
}
void CudaOps::tanhRows(float* x, RowSet rows, int64_t dim) { DG_OP(Tanh, TanhA, x, rows, dim); }
void CudaOps::routeThreshold(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits, int64_t rows,
                             float threshold) {
  DG_OP(RouteThreshold, RouteThresholdA, runAttn, runMlp, weight, logits, rows, floatBits(threshold));
}
void CudaOps::routeArgmax(uint8_t* run, const float* logits, int64_t rows) {
  DG_OP(RouteArgmax, RouteArgmaxA, run, logits, rows);
}
void CudaOps::compact(const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
                      int32_t* skipCount) {
  DG_OP(Compact, CompactA, flags, rows, runIdx, runCount, skipIdx, skipCount);
}
void CudaOps::sample(int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
                     const PenaltyToken* penalties) {
  DG_OP(Sample, SampleA, tokens, logits, rows, vocab, params, penalties);
}

#undef DG_OP

}  // namespace cuda
}  // namespace dg
