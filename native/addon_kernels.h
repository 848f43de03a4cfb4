// native().kernels: the CPU kernels callable from JavaScript, for tests and microbenchmarks.
#pragma once
#include <napi.h>

namespace dg {

Napi::Object makeKernels(Napi::Env env);

}  // namespace dg
