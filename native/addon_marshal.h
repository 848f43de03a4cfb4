// Marshalling between JavaScript values and the engine's structs: the model config (as
// src/config.ts normalised it), policies (as src/policy.ts normalised them), request fields and
// responses. Every check here is a second line of defence: the TypeScript layer validates first,
// so a failure here is a malformed call from src/ (ERR_DEPTHGATE_INVALID_ARGUMENT, reported as an
// internal error).
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "engine.h"
#include "model.h"
#include "policy.h"

namespace dg {

[[noreturn]] void throwArg(Napi::Env env, const std::string& message);

// config: the NativeConfig object of src/binding.ts.
ModelConfig readConfig(Napi::Env env, Napi::Object o);
// policy: undefined (none) or {type, ...}; absent fields keep PolicySpec's defaults.
PolicySpec readPolicy(Napi::Env env, Napi::Value v);
// A request's own fields (everything but `sequence`): tokens, logits, sample, genIndex.
void readRequestFields(Napi::Env env, Napi::Object o, Request& rq);
// One response as src/binding.ts's NativeResponse.
Napi::Object responseToJs(Napi::Env env, const Request& rq, const Response& rs);

// A flag JS may set at any time (an Int32Array of length >= 1), kept alive by `keep`; null otherwise.
int32_t* flagPointer(Napi::Value v, Napi::Reference<Napi::Value>& keep);
inline bool flagSet(const int32_t* flag) { return flag && __atomic_load_n(flag, __ATOMIC_RELAXED) != 0; }

}  // namespace dg
