// CudaOps: memory, transfers and the step state machine that records, captures and replays
// steps as CUDA graphs (cuda_ops.h explains the states). The ops themselves are in ops.cu.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_ops.h"

namespace dg {
namespace cuda {

namespace {

constexpr size_t kMaxBounce = size_t(64) << 20;         // eager downloads above this go straight to the host
constexpr size_t kMaxGraphDownload = size_t(64) << 20;  // steps downloading more are not captured
constexpr size_t kMaxGraphUpload = size_t(16) << 20;
constexpr size_t kMaxGraphs = 32;

bool envIs(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, value) == 0;
}

// Errors after which the context is unusable: every later call fails with the same code.
bool sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
      return true;
    default:
      return false;
  }
}

}  // namespace

void throwCuda(cudaError_t e, const char* what, const char* file, int line) {
  cudaGetLastError();  // clears a non-sticky error so the table stays usable (e.g. after an OOM)
  std::string msg = std::string("CUDA error: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ") in " + what +
                    " at " + file + ":" + std::to_string(line);
  if (sticky(e)) msg += "; the GPU context is unusable from here on (a kernel faulted): dispose the model";
  throw Error(e == cudaErrorMemoryAllocation ? kErrMemory : kErrCuda, msg);
}

CudaOps::CudaOps(int device) : device_(device) {
  CUDA_CHECK(cudaSetDevice(device_));
  syncEach_ = envIs("DEPTHGATE_CUDA_SYNC", "1");
  graphsOn_ = !syncEach_ && !envIs("DEPTHGATE_CUDA_GRAPHS", "0");
  int sms = 1;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  dev_.stream = stream_;
  dev_.sms = sms;
  try {
    heap_.init(device_, stream_);
    ring_.init();
    CUDA_CHECK(cudaEventCreateWithFlags(&stepInFree_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&downDone_, cudaEventDisableTiming));
  } catch (...) {
    if (stepInFree_) cudaEventDestroy(stepInFree_);
    ring_.reset();
    heap_.destroy();
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaOps::~CudaOps() {
  std::lock_guard<std::mutex> lock(mu_);
  try {
    use();
    abandonStep();
  } catch (...) {
  }
  cands_.clear();
  graphs_.clear();
  cudaStreamSynchronize(stream_);
  for (auto& w : weights_) heap_.free(w.second);
  weights_.clear();
  for (auto& s : scratch_) heap_.free(s.p), s = Scratch{};
  for (void* p : deferred_) heap_.free(p);
  deferred_.clear();
  cudaStreamSynchronize(stream_);
  heap_.destroy();
  ring_.reset();
  stepIn_.reset();
  stepOut_.reset();
  bounce_.reset();
  cudaEventDestroy(stepInFree_);
  cudaEventDestroy(downDone_);
  cudaStreamDestroy(stream_);
  cudaGetLastError();
}

// The runtime's current device is per host thread and ops arrive on several threads (loader,
// workers, the JS thread for releases): ask the runtime instead of caching it, so the answer
// cannot go stale when anything else calls cudaSetDevice.
void CudaOps::use() {
  int cur = -1;
  if (cudaGetDevice(&cur) != cudaSuccess || cur != device_) {
    cudaGetLastError();
    CUDA_CHECK(cudaSetDevice(device_));
  }
}

// ---- the step state machine ------------------------------------------------------------

bool CudaOps::matchNext(const Rec& r) {
  const size_t k = recs_.size();
  cands_.erase(std::remove_if(cands_.begin(), cands_.end(),
                              [&](StepGraph* g) { return g->recs.size() <= k || g->recs[k] != r; }),
               cands_.end());
  return !cands_.empty();
}

void CudaOps::launchReady() {
  if (cands_.size() != 1) return;
  StepGraph* g = cands_[0];
  while (launchedChunks_ < g->chunks.size() && g->chunks[launchedChunks_].end <= recs_.size()) {
    CUDA_CHECK(cudaGraphLaunch(g->chunks[launchedChunks_].exec, stream_));
    launchedRecs_ = g->chunks[launchedChunks_].end;
    launchedChunks_++;
  }
}

void CudaOps::flush() {
  cands_.clear();
  seg_ = Seg::Recording;
  for (size_t k = launchedRecs_; k < recs_.size(); k++) {
    execute(recs_[k], false);
    checkAfter(recs_[k]);
  }
  launchedChunks_ = 0;
  launchedRecs_ = recs_.size();
}

void CudaOps::endStep() {
  if (seg_ != Seg::Idle) {
    const cudaError_t e = cudaEventRecord(stepInFree_, stream_);  // after every reader of stepIn_
    seg_ = Seg::Idle;
    recs_.clear();
    cands_.clear();
    launchedChunks_ = launchedRecs_ = 0;
    stepUploadBytes_ = 0;
    if (e != cudaSuccess) throwCuda(e, "cudaEventRecord", __FILE__, __LINE__);
  }
  for (void* p : deferred_) heap_.free(p);
  deferred_.clear();
}

void CudaOps::abandonStep() {
  if (seg_ == Seg::Matching) {
    try {
      flush();
    } catch (...) {
      seg_ = Seg::Recording;
      endStep();
      throw;
    }
  }
  endStep();
}

void CudaOps::invalidateGraphs() {
  generation_++;
  cands_.clear();
  graphs_.clear();
  counter_ = StepCounter();
}

void CudaOps::recordStep(const Rec& download) {
  if (!graphsOn_ || recs_.size() < 3) return;
  const DownloadA d = download.as<DownloadA>();
  if (d.bytes > kMaxGraphDownload || stepUploadBytes_ > kMaxGraphUpload) return;
  if (counter_.note(recs_) < 2) return;
  // The buffers a graph bakes in; moving either invalidates every graph. This step may still be
  // reading stepIn_ (when it began by matching a graph): let it finish before the buffer moves.
  if (stepIn_.capacity() < stepUploadBytes_ || stepOut_.capacity() < d.bytes)
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  bool moved = stepIn_.ensure(stepUploadBytes_);
  moved = stepOut_.ensure(d.bytes) || moved;
  if (moved) invalidateGraphs();
  std::string why;
  auto g = captureStep(
      stream_, recs_, [this](const Rec& x) { execute(x, true); }, generation_, &why);
  if (!g) {
    counter_.markFailed(recs_);
    if (std::getenv("DEPTHGATE_CUDA_DEBUG"))
      std::fprintf(stderr, "depthgate cuda: step not captured: %s\n", why.c_str());
    return;
  }
  g->lastUse = ++clock_;
  if (graphs_.size() >= kMaxGraphs) {
    auto oldest = std::min_element(graphs_.begin(), graphs_.end(),
                                   [](const auto& a, const auto& b) { return a->lastUse < b->lastUse; });
    graphs_.erase(oldest);
  }
  graphs_.push_back(std::move(g));
}

void CudaOps::submit(const Rec& r) {
  if (seg_ == Seg::Matching) {
    if (matchNext(r)) {
      recs_.push_back(r);
      launchReady();
      return;
    }
    flush();
  }
  execute(r, false);
  checkAfter(r);
  if (seg_ == Seg::Recording) recs_.push_back(r);
}

void CudaOps::guardedSubmit(const Rec& r) {
  try {
    submit(r);
  } catch (...) {
    try {
      abandonStep();
    } catch (...) {
    }
    throw;
  }
}

void CudaOps::checkAfter(const Rec& r) {
  if (!syncEach_) return;
  cudaError_t e = cudaStreamSynchronize(stream_);
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e != cudaSuccess) throwCuda(e, (std::string("op '") + opName(r.kind) + "'").c_str(), __FILE__, __LINE__);
}

// ---- memory and transfers -----------------------------------------------------------------

void* CudaOps::alloc(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  use();
  abandonStep();
  return heap_.alloc(bytes, "a buffer");
}

void CudaOps::release(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  try {
    use();
  } catch (...) {
    return;  // the device is gone; nothing to free into
  }
  if (seg_ != Seg::Idle)
    deferred_.push_back(p);  // after the step's ops are issued
  else
    heap_.free(p);
}

void CudaOps::copy(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  std::lock_guard<std::mutex> lock(mu_);
  use();
  guardedSubmit(Rec::of(OpKind::Copy, CopyA{dst, src, bytes}));
}

void CudaOps::upload(void* dst, const void* host, size_t bytes) {
  if (!bytes) return;
  std::lock_guard<std::mutex> lock(mu_);
  use();
  try {
    if (seg_ == Seg::Idle && graphsOn_) {  // a step begins
      seg_ = Seg::Recording;
      recs_.clear();
      stepUploadBytes_ = 0;
      launchedChunks_ = launchedRecs_ = 0;
      cands_.clear();
      for (auto& g : graphs_)
        if (g->generation == generation_) cands_.push_back(g.get());
      if (!cands_.empty()) {
        seg_ = Seg::Matching;
        CUDA_CHECK(cudaEventSynchronize(stepInFree_));  // the last step's graph has read stepIn_
      }
    }
    if (seg_ == Seg::Idle) {
      ring_.upload(stream_, dst, host, bytes);
      checkAfter(Rec::of(OpKind::Upload, UploadA{dst, bytes, 0}));
      return;
    }
    const UploadA a{dst, bytes, stepUploadBytes_};
    const Rec r = Rec::of(OpKind::Upload, a);
    stepUploadBytes_ += (bytes + 255) & ~uint64_t(255);
    if (seg_ == Seg::Matching) {
      if (matchNext(r) && a.offset + bytes <= stepIn_.capacity()) {
        std::memcpy(stepIn_.data() + a.offset, host, bytes);
        recs_.push_back(r);
        launchReady();
        return;
      }
      flush();
    }
    ring_.upload(stream_, dst, host, bytes);
    checkAfter(r);
    recs_.push_back(r);
  } catch (...) {
    try {
      abandonStep();
    } catch (...) {
    }
    throw;
  }
}

void CudaOps::download(void* host, const void* src, size_t bytes) {
  std::lock_guard<std::mutex> one(downMu_);
  std::unique_lock<std::mutex> lock(mu_);
  use();
  const char* from = nullptr;  // pinned copy to read after the wait (null: copied to host directly)
  try {
    if (!bytes) {
      abandonStep();
      return;
    }
    const Rec r = Rec::of(OpKind::Download, DownloadA{src, bytes});
    bool replayed = false;
    if (seg_ == Seg::Matching) {
      if (matchNext(r) && cands_.size() == 1 && cands_[0]->recs.size() == recs_.size() + 1) {
        recs_.push_back(r);
        launchReady();  // the rest, ending with the copy into stepOut_
        cands_[0]->lastUse = ++clock_;
        from = stepOut_.data();
        replayed = true;
      } else {
        flush();
      }
    }
    if (!replayed) {
      if (bytes <= kMaxBounce) {
        bounce_.ensure(bytes);
        CUDA_CHECK(cudaMemcpyAsync(bounce_.data(), src, bytes, cudaMemcpyDeviceToHost, stream_));
        from = bounce_.data();
      } else {
        CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream_));
      }
    }
    CUDA_CHECK(cudaEventRecord(downDone_, stream_));
    // Capturing costs host time only: do it while the GPU runs this step.
    if (!replayed && seg_ == Seg::Recording) {
      recs_.push_back(r);
      try {
        recordStep(r);
      } catch (...) {
        // A failed capture never fails the step; the step just stays uncaptured.
        cudaGetLastError();
      }
    }
    endStep();
  } catch (...) {
    try {
      abandonStep();
    } catch (...) {
    }
    throw;
  }
  lock.unlock();
  const cudaError_t e = cudaEventSynchronize(downDone_);
  if (e != cudaSuccess) throwCuda(e, "download (an earlier op failed)", __FILE__, __LINE__);
  if (from) std::memcpy(host, from, bytes);
}

void CudaOps::sync() {
  std::unique_lock<std::mutex> lock(mu_);
  use();
  abandonStep();
  lock.unlock();
  const cudaError_t e = cudaStreamSynchronize(stream_);
  if (e != cudaSuccess) throwCuda(e, "sync (an earlier op failed)", __FILE__, __LINE__);
}

// Weights go to the device once, in their stored dtype, through the pinned staging ring on the
// backend's stream (the mmap'd source is pageable). Block-quantized weights are refused. The same host bytes prepared
// twice (tied embeddings: embed and lm_head views of one tensor) share one device copy.
Weight CudaOps::prepareWeight(const Weight& w) {
  // The CUDA kernels read element types only; block formats (Q8_0, Q4_0, Q4_K, Q6_K) are a CPU feature for now.
  if (isBlockQuantized(w.dtype))
    throw Error(kErrUnsupported, std::string("the CUDA backend does not run ") + dtypeName(w.dtype) +
                                     " weights; load the model with backend 'cpu' to use them");
  std::lock_guard<std::mutex> lock(mu_);
  use();
  abandonStep();
  Weight d = w;
  if (!w.data || w.bytes() == 0) {
    d.data = nullptr;
    return d;
  }
  const auto key = std::make_pair(w.data, w.bytes());
  auto it = weights_.find(key);
  if (it != weights_.end()) {
    d.data = it->second;
    return d;
  }
  void* p = heap_.alloc(w.bytes(), "a weight");
  try {
    ring_.upload(stream_, p, w.data, w.bytes());
  } catch (...) {
    heap_.free(p);
    throw;
  }
  weights_[key] = p;
  d.data = p;
  return d;
}

}  // namespace cuda
}  // namespace dg
