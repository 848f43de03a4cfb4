// readGgufHeader(path) -> {version, alignment, metadata, tensors}: a GGUF file's header, parsed
// and validated by native/gguf.cc (the same limits, the same parser the loader maps data with),
// for src/gguf/ to build the config and the tokenizer from. Reads the header only (pread).
#pragma once
#include <napi.h>

namespace dg {

Napi::Value ReadGgufHeader(const Napi::CallbackInfo& info);

}  // namespace dg
