// libFuzzer target: a fuzzed checkpoint bound to a fixed tiny config (the shapes the test models
// use, with FlexiDepth and SkipLayer routers allowed), so the tensor binding, shape checks,
// router validation and prefault all see hostile tables.
#include <cstdint>
#include <string>

#include "errors.h"
#include "memfd.h"
#include "model.h"
#include "tiny_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = memfdWith(data, size);
  if (fd < 0) return 0;
  dg::ModelConfig c = tinyTestConfig();
  try {
    auto m = dg::loadModel(c, {fdPath(fd)}, true, nullptr);
  } catch (const dg::Error&) {
  }
  close(fd);
  return 0;
}
