// The JavaScript classes of the addon: NativeModel (a loaded model: its engine and the thread
// that runs its load and passes) and NativeSequence (a KV cache), with the jobs that run on the
// model's thread (native/addon_dispatcher.h). JS objects own native ones through shared_ptr, so
// dispose() during a pass is safe: the pass holds its own references and finishes first.
#pragma once
#include <napi.h>

namespace dg {

// Registers the NativeModel and NativeSequence classes on `exports`.
void initModelClasses(Napi::Env env, Napi::Object exports);
// loadModel({files, config, threads, prefault, backend, kvCacheType}, onProgress?, abortFlag?)
//   -> Promise<NativeModel>: loads on a new model thread, which then runs the model's passes.
Napi::Value LoadModel(const Napi::CallbackInfo& info);

}  // namespace dg
