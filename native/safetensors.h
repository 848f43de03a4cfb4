// Memory-mapped safetensors files. The header is read with pread() and validated in full
// (lengths, JSON, dtypes, shapes against byte counts, offsets in range and not overlapping)
// before the file is mapped, so a malformed file is refused before any tensor byte is touched.
// Only regular files are opened (a FIFO or a device is refused without blocking).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace dg {

struct TensorEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // offsets into the data section
  const void* data = nullptr;  // set once mapped
  int file = 0;                // index into the owning TensorStore's files
};

class SafetensorsFile {
 public:
  // Throws dg::Error (kErrIo / kErrFormat) naming `path`.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<TensorEntry>& tensors() { return tensors_; }
  size_t fileSize() const { return size_; }
  // Why the file we mapped is no longer what was loaded (its size or modification time changed:
  // it was truncated or rewritten in place), or "" when it is unchanged. One statx of the open
  // descriptor: a file replaced by rename, or deleted, is still the unchanged file we hold.
  std::string changeSinceOpen() const;

 private:
  std::string path_;
  int fd_ = -1;  // open while mapped, for changeSinceOpen()
  void* map_ = nullptr;
  size_t size_ = 0;
  int64_t mtimeSec_ = 0;
  uint32_t mtimeNsec_ = 0;
  std::vector<TensorEntry> tensors_;
};

// Validates a header (the JSON text) against a data section of `dataSize` bytes; exposed for
// fuzzing and tests. Throws std::runtime_error with the reason.
std::vector<TensorEntry> parseSafetensorsHeader(const char* json, size_t len, size_t dataSize);

// All tensors of a checkpoint, across its shards, by name.
class TensorStore {
 public:
  // Opens every file; a tensor present in two files is an error.
  void open(const std::vector<std::string>& paths);
  // Throws kErrIo naming the first file that changed on disk since it was opened.
  void checkUnchanged() const;
  const TensorEntry* find(const std::string& name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::map<std::string, TensorEntry*>& all() const { return byName_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorEntry*> byName_;
};

}  // namespace dg
