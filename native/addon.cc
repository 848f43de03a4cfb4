// The N-API entry point: registers the addon's classes and functions. What they do lives in
// addon_model.cc (NativeModel, NativeSequence and their jobs), addon_marshal.cc (JS values to the
// engine's structs and back), addon_dispatcher.cc (each model's own thread) and addon_kernels.cc
// (kernels exposed to tests and microbenchmarks).
#include <napi.h>

#include "addon_gguf.h"
#include "addon_kernels.h"
#include "addon_model.h"
#include "cuda_loader.h"
#include "kernels.h"
#include "threadpool.h"

namespace dg {

namespace {

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  const CpuFeatures& f = cpuFeatures();
  Napi::Array feats = Napi::Array::New(env);
  uint32_t k = 0;
  if (f.avx2) feats.Set(k++, "avx2");
  if (f.fma) feats.Set(k++, "fma");
  if (f.f16c) feats.Set(k++, "f16c");
  if (f.avx512f) feats.Set(k++, "avx512f");
  if (f.avx512bw) feats.Set(k++, "avx512bw");
  o.Set("cpuFeatures", feats);
  o.Set("cpuKernels", Napi::String::New(env, cpuKernelVariant()));
  o.Set("cpuPrefetch", Napi::String::New(env, cpuPrefetchLevel()));
  o.Set("usableProcessors", Napi::Number::New(env, usableProcessors()));
  CudaProbe cuda = probeCuda();
  Napi::Array backends = Napi::Array::New(env);
  backends.Set(0u, "cpu");
  if (cuda.libraryFound) backends.Set(1u, "cuda");
  o.Set("backends", backends);
  Napi::Object c = Napi::Object::New(env);
  c.Set("libraryFound", Napi::Boolean::New(env, cuda.libraryFound));
  c.Set("libraryPath", Napi::String::New(env, cuda.libraryPath));
  c.Set("error", Napi::String::New(env, cuda.error));
  c.Set("probe", Napi::String::New(env, cuda.probeJson));
  o.Set("cuda", c);
  o.Set("napiVersion", Napi::Number::New(env, NAPI_VERSION));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  initModelClasses(env, exports);
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("readGgufHeader", Napi::Function::New(env, ReadGgufHeader));
  exports.Set("kernels", makeKernels(env));
  return exports;
}

}  // namespace

}  // namespace dg

static Napi::Object InitDepthgate(Napi::Env env, Napi::Object exports) { return dg::Init(env, exports); }

NODE_API_MODULE(depthgate, InitDepthgate)
