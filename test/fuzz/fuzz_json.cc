// libFuzzer target: the JSON reader behind every safetensors header.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    dg::JsonValue v = dg::parseJson(reinterpret_cast<const char*>(data), size);
    int64_t n;
    (void)v.asUint(n);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
