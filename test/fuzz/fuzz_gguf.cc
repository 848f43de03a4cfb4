// libFuzzer target: a whole GGUF file (magic, metadata, tensor table, alignment padding, data),
// opened as the loader opens one, through a memfd so that mmap is exercised too, then adapted
// to the Hugging Face layout (names, types, the Q/K row order of architecture llama).
#include <cstdint>
#include <string>

#include "errors.h"
#include "gguf.h"
#include "gguf_model.h"
#include "memfd.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = memfdWith(data, size);
  if (fd < 0) return 0;
  std::string path = fdPath(fd);
  try {
    dg::GgufFile f(path);
    // Touch every tensor's first and last byte: offsets must lie inside the mapping.
    volatile unsigned sink = 0;
    auto touch = [&]() {
      for (auto& t : f.tensors())
        if (t.end > t.begin && t.data)
          sink += static_cast<const unsigned char*>(t.data)[0] +
                  static_cast<const unsigned char*>(t.data)[t.end - t.begin - 1];
    };
    touch();
    dg::adaptGgufTensors(f);
    touch();
  } catch (const dg::Error&) {
  }
  close(fd);
  return 0;
}
