// GGUF files (llama.cpp's format, versions 2 and 3, little-endian). The header (metadata and the
// tensor table) is read with pread() and validated in full before the file is mapped: every
// count, string and array length is checked against the bytes that remain before it is used,
// the header is capped, tensor offsets must be aligned (general.alignment, default 32), in range
// and not overlapping, so a malformed file is refused before any tensor byte is touched. The data
// is memory-mapped like a safetensors file (the same SIGBUS guard, the same regular-file check).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "safetensors.h"

namespace dg {

// Limits on what a header may declare. Real files: a 256k-token vocabulary with its merges is
// under 20 MB of metadata; models have at most a few thousand tensors.
constexpr uint64_t kGgufMaxHeader = 256ull << 20;  // metadata + tensor table
constexpr uint64_t kGgufMaxKeys = 1u << 16;
constexpr uint64_t kGgufMaxTensors = 1u << 20;
constexpr uint64_t kGgufMaxKeyLength = 1u << 16;        // llama.cpp keys are ASCII and short
constexpr uint64_t kGgufMaxStringLength = 64ull << 20;  // a chat template is kilobytes
// Elements of one array: a 256k-token vocabulary, or a few million merges. Also bounds what an
// array of strings costs in memory beyond its bytes (one std::string per element).
constexpr uint64_t kGgufMaxArrayLength = 1u << 22;
constexpr uint32_t kGgufMaxDims = 4;  // GGML_MAX_DIMS

enum class GgufType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
const char* ggufTypeName(GgufType t);

// One metadata value. Scalars are kept widened (u for unsigned and bool, i for signed, f for
// floats); arrays keep their element type and either their strings or their raw little-endian
// elements. Arrays of arrays are refused (llama.cpp's reader refuses them too).
struct GgufValue {
  GgufType type = GgufType::U8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string str;
  GgufType elemType = GgufType::U8;  // arrays
  uint64_t count = 0;                // arrays
  std::vector<std::string> strings;  // arrays of strings
  std::vector<uint8_t> raw;          // arrays of numbers or bools
  bool isInteger() const;
  // The value as an integer when it is one of the integer types (or bool); false otherwise.
  bool asInt(int64_t& out) const;
};

// ggml tensor types: name, elements per block and bytes per block, for every type the format
// defines (so any file's sizes can be checked, whether or not depthgate computes with the type).
struct GgmlTypeInfo {
  uint32_t id;
  const char* name;
  uint32_t blockElements, blockBytes;
};
const GgmlTypeInfo* ggmlTypeInfo(uint32_t id);  // nullptr when unknown

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // dimensions fastest-first, as GGUF stores them
  uint32_t type = 0;
  uint64_t offset = 0, bytes = 0;  // relative to the data section
};

struct GgufHeader {
  uint32_t version = 0;
  uint64_t alignment = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // in file order
  std::map<std::string, size_t> keyIndex;
  std::vector<GgufTensorInfo> tensors;
  uint64_t dataOffset = 0;  // start of the data section in the file
  const GgufValue* find(const std::string& key) const;
};

// True for a path the loader opens as GGUF: it ends in ".gguf", in any case.
bool isGgufPath(const std::string& path);

// Reads n bytes at offset off into dst; false when they cannot be read.
using GgufReadFn = std::function<bool(void* dst, uint64_t off, size_t n)>;

// Parses and validates a header of a file of fileSize bytes. Throws std::runtime_error with the
// reason, naming the key or tensor. Exposed for fuzzing and tests.
GgufHeader parseGgufHeader(const GgufReadFn& read, uint64_t fileSize);

// An open GGUF file: its header, and its tensors mapped (names as the file spells them, shape in
// row-major order, dtype unset until adaptGgufTensors maps it; see gguf_model.h).
class GgufFile : public TensorFile {
 public:
  // Throws dg::Error (kErrIo / kErrFormat) naming `path`. mapData false reads the header only.
  explicit GgufFile(const std::string& path, bool mapData = true);
  ~GgufFile() override;

  const GgufHeader& header() const { return header_; }
  // Tensor data copied out of the mapping (rows reordered on load); freed with the file.
  std::vector<std::unique_ptr<unsigned char[]>>& ownedCopies() { return owned_; }
  bool ownsCopy(const void* p) const override {
    for (const auto& c : owned_)
      if (c && c.get() == p) return true;
    return false;
  }
  bool freeCopy(const void* p) override {
    for (auto& c : owned_)
      if (c && c.get() == p) {
        c.reset();
        return true;
      }
    return false;
  }

 private:
  GgufHeader header_;
  std::vector<std::unique_ptr<unsigned char[]>> owned_;
};

}  // namespace dg
