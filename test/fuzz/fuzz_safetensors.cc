// libFuzzer target: a whole safetensors file (length prefix, header, tensor table, data), opened
// the way the loader opens a checkpoint, through a memfd so that mmap is exercised too.
#include <cstdint>
#include <string>

#include "errors.h"
#include "memfd.h"
#include "safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = memfdWith(data, size);
  if (fd < 0) return 0;
  std::string path = fdPath(fd);
  try {
    dg::SafetensorsFile f(path);
    // Touch every tensor's first and last byte: offsets must lie inside the mapping.
    volatile unsigned sink = 0;
    for (auto& t : f.tensors())
      if (t.end > t.begin) sink += static_cast<const unsigned char*>(t.data)[0] +
                                   static_cast<const unsigned char*>(t.data)[t.end - t.begin - 1];
  } catch (const dg::Error&) {
  }
  close(fd);
  return 0;
}
