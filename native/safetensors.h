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
  size_t begin = 0, end = 0;   // offsets into the data section
  const void* data = nullptr;  // set once mapped
  int file = 0;                // index into the owning TensorStore's files
};

// A memory-mapped checkpoint file of either format (SafetensorsFile, GgufFile in gguf.h): the
// descriptor stays open while the file is mapped, so that a change to it can be seen.
class TensorFile {
 public:
  virtual ~TensorFile();
  TensorFile(const TensorFile&) = delete;
  TensorFile& operator=(const TensorFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<TensorEntry>& tensors() { return tensors_; }
  size_t fileSize() const { return size_; }
  // Frees the copy of a tensor this file made (GGUF: rows put back in HF order) that starts at p,
  // once its user no longer reads it; false when p is no such copy.
  virtual bool freeCopy(const void* p) {
    (void)p;
    return false;
  }
  // Whether p is the start of such a copy.
  virtual bool ownsCopy(const void* p) const {
    (void)p;
    return false;
  }
  // Whether p points into this file's mapping.
  bool maps(const void* p) const {
    const unsigned char* b = static_cast<const unsigned char*>(map_);
    return b && p >= b && p < b + size_;
  }
  // Why the file we mapped is no longer what was loaded (its size or modification time changed:
  // it was truncated or rewritten in place), or "" when it is unchanged. One statx of the open
  // descriptor: a file replaced by rename, or deleted, is still the unchanged file we hold.
  std::string changeSinceOpen() const;

 protected:
  // Opens `path` without blocking and refuses anything but a regular file (kErrIo).
  explicit TensorFile(const std::string& path);
  // Maps the whole file read-only under the SIGBUS guard (a no-op for an empty file).
  void mapWhole();

  std::string path_;
  int fd_ = -1;
  void* map_ = nullptr;
  size_t size_ = 0;
  int64_t mtimeSec_ = 0;
  uint32_t mtimeNsec_ = 0;
  std::vector<TensorEntry> tensors_;
};

class SafetensorsFile : public TensorFile {
 public:
  // Throws dg::Error (kErrIo / kErrFormat) naming `path`.
  explicit SafetensorsFile(const std::string& path);
};

// Validates a header (the JSON text) against a data section of `dataSize` bytes; exposed for
// fuzzing and tests. Throws std::runtime_error with the reason.
std::vector<TensorEntry> parseSafetensorsHeader(const char* json, size_t len, size_t dataSize);

// All tensors of a checkpoint, across its shards, by name.
class TensorStore {
 public:
  // Opens every file (a path ending in .gguf as GGUF, with its tensors adapted to the names and
  // layout of a Hugging Face checkpoint: gguf_model.h); a tensor present in two files is an error.
  void open(const std::vector<std::string>& paths);
  // Throws kErrIo naming the first file that changed on disk since it was opened.
  void checkUnchanged() const;
  const TensorEntry* find(const std::string& name) const;
  const std::vector<std::unique_ptr<TensorFile>>& files() const { return files_; }
  const std::map<std::string, TensorEntry*>& all() const { return byName_; }

 private:
  std::vector<std::unique_ptr<TensorFile>> files_;
  std::map<std::string, TensorEntry*> byName_;
};

}  // namespace dg
