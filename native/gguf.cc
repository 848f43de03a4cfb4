#include "gguf.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "errors.h"

namespace dg {

const char* ggufTypeName(GgufType t) {
  static const char* names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                "bool",  "string", "array",  "uint64", "int64",  "float64"};
  uint32_t i = uint32_t(t);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "unknown";
}

bool GgufValue::isInteger() const {
  switch (type) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::U16:
    case GgufType::I16:
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}

bool GgufValue::asInt(int64_t& out) const {
  if (!isInteger()) return false;
  bool isSigned = type == GgufType::I8 || type == GgufType::I16 || type == GgufType::I32 || type == GgufType::I64;
  if (!isSigned && u > uint64_t(INT64_MAX)) return false;
  out = isSigned ? i : int64_t(u);
  return true;
}

// ggml's type table (ggml/src/ggml.c type_traits): ids, block elements, block bytes.
static const GgmlTypeInfo kGgmlTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},   {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},   {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};

const GgmlTypeInfo* ggmlTypeInfo(uint32_t id) {
  for (auto& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

bool isGgufPath(const std::string& p) {
  if (p.size() < 5) return false;
  std::string ext = p.substr(p.size() - 5);
  for (char& c : ext) c = char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return ext == ".gguf";
}

const GgufValue* GgufHeader::find(const std::string& key) const {
  auto it = keyIndex.find(key);
  return it == keyIndex.end() ? nullptr : &metadata[it->second].second;
}

namespace {

// Sequential reads of the header through `read`, buffered, never past the file or the header cap.
class HeaderReader {
 public:
  HeaderReader(const GgufReadFn& read, uint64_t fileSize)
      : read_(read), limit_(std::min(fileSize, kGgufMaxHeader)), fileSize_(fileSize) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return limit_ - pos_; }
  // Pointer to the next n bytes, consumed.
  const uint8_t* take(uint64_t n, const std::string& what) {
    if (n > remaining()) {
      if (n <= fileSize_ - pos_)
        throw std::runtime_error(what + " runs past the " + std::to_string(kGgufMaxHeader >> 20) +
                                 " MiB that depthgate reads of a GGUF header");
      throw std::runtime_error(what + " runs past the end of the file (" + std::to_string(fileSize_) + " bytes)");
    }
    uint64_t end = pos_ + n;
    if (end > buf_.size()) {
      // Grow by doubling (at least 64 KiB), never past the limit.
      uint64_t want = std::min<uint64_t>(limit_, std::max<uint64_t>({end, buf_.size() * 2, 65536}));
      size_t old = buf_.size();
      buf_.resize(size_t(want));
      if (!read_(buf_.data() + old, old, size_t(want - old))) throw std::runtime_error("cannot read the header");
    }
    const uint8_t* p = buf_.data() + pos_;
    pos_ = end;
    return p;
  }
  template <class T>
  T scalar(const std::string& what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string string(uint64_t maxLen, const std::string& what) {
    uint64_t n = scalar<uint64_t>(what + " length");
    if (n > maxLen)
      throw std::runtime_error(what + " is " + std::to_string(n) + " bytes long, more than the limit of " +
                               std::to_string(maxLen));
    const uint8_t* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), size_t(n));
  }

 private:
  const GgufReadFn& read_;
  uint64_t limit_, fileSize_;
  uint64_t pos_ = 0;
  std::vector<uint8_t> buf_;
};

size_t scalarSize(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::BOOL:
      return 1;
    case GgufType::U16:
    case GgufType::I16:
      return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32:
      return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64:
      return 8;
    default:
      return 0;
  }
}

void readScalar(HeaderReader& r, GgufType t, GgufValue& v, const std::string& what) {
  v.type = t;
  const uint8_t* p = r.take(scalarSize(t), what);
  switch (t) {
    case GgufType::U8:
      v.u = p[0];
      break;
    case GgufType::I8:
      v.i = int8_t(p[0]);
      break;
    case GgufType::BOOL:
      if (p[0] > 1) throw std::runtime_error(what + " is a bool with value " + std::to_string(p[0]));
      v.u = p[0];
      break;
    case GgufType::U16: {
      uint16_t x;
      std::memcpy(&x, p, 2);
      v.u = x;
      break;
    }
    case GgufType::I16: {
      int16_t x;
      std::memcpy(&x, p, 2);
      v.i = x;
      break;
    }
    case GgufType::U32: {
      uint32_t x;
      std::memcpy(&x, p, 4);
      v.u = x;
      break;
    }
    case GgufType::I32: {
      int32_t x;
      std::memcpy(&x, p, 4);
      v.i = x;
      break;
    }
    case GgufType::F32: {
      float x;
      std::memcpy(&x, p, 4);
      v.f = x;
      break;
    }
    case GgufType::U64:
      std::memcpy(&v.u, p, 8);
      break;
    case GgufType::I64:
      std::memcpy(&v.i, p, 8);
      break;
    case GgufType::F64:
      std::memcpy(&v.f, p, 8);
      break;
    default:
      break;
  }
  if (t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64)
    v.u = uint64_t(v.i);
  else if (t != GgufType::F32 && t != GgufType::F64)
    v.i = int64_t(v.u);
}

GgufValue readValue(HeaderReader& r, const std::string& key) {
  std::string what = "metadata '" + key + "'";
  uint32_t t = r.scalar<uint32_t>(what + " type");
  if (t > uint32_t(GgufType::F64)) throw std::runtime_error(what + " has unknown value type " + std::to_string(t));
  GgufValue v;
  GgufType type = GgufType(t);
  if (type == GgufType::STRING) {
    v.type = type;
    v.str = r.string(kGgufMaxStringLength, what);
    return v;
  }
  if (type != GgufType::ARRAY) {
    readScalar(r, type, v, what);
    return v;
  }
  v.type = type;
  uint32_t et = r.scalar<uint32_t>(what + " element type");
  if (et > uint32_t(GgufType::F64))
    throw std::runtime_error(what + " is an array of unknown type " + std::to_string(et));
  v.elemType = GgufType(et);
  if (v.elemType == GgufType::ARRAY)
    throw std::runtime_error(what + " is an array of arrays, which GGUF readers do not support");
  v.count = r.scalar<uint64_t>(what + " array length");
  // Every element takes at least one byte (a string at least its 8-byte length): a count that
  // cannot fit in what remains of the header is refused before anything is allocated for it.
  if (v.count > kGgufMaxArrayLength)
    throw std::runtime_error(what + " has " + std::to_string(v.count) + " elements, more than the limit of " +
                             std::to_string(kGgufMaxArrayLength));
  uint64_t minBytes = v.elemType == GgufType::STRING ? 8 : scalarSize(v.elemType);
  if (v.count > r.remaining() / minBytes)
    throw std::runtime_error(what + " declares " + std::to_string(v.count) + " elements, more than the header holds");
  if (v.elemType == GgufType::STRING) {
    v.strings.reserve(size_t(v.count));
    for (uint64_t k = 0; k < v.count; k++)
      v.strings.push_back(r.string(kGgufMaxStringLength, what + " element " + std::to_string(k)));
  } else {
    uint64_t n = v.count * scalarSize(v.elemType);
    const uint8_t* p = r.take(n, what);
    v.raw.assign(p, p + n);
    if (v.elemType == GgufType::BOOL)
      for (uint64_t k = 0; k < v.count; k++)
        if (v.raw[size_t(k)] > 1) throw std::runtime_error(what + " element " + std::to_string(k) + " is not a bool");
  }
  return v;
}

}  // namespace

GgufHeader parseGgufHeader(const GgufReadFn& read, uint64_t fileSize) {
  HeaderReader r(read, fileSize);
  GgufHeader h;
  const uint8_t* magic = r.take(4, "the GGUF magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) throw std::runtime_error("not a GGUF file (no GGUF magic)");
  h.version = r.scalar<uint32_t>("the version");
  if (h.version == 1) throw std::runtime_error("GGUF version 1 is not supported (versions 2 and 3 are)");
  if (h.version != 2 && h.version != 3) {
    uint32_t swapped = __builtin_bswap32(h.version);
    throw std::runtime_error(
        "GGUF version " + std::to_string(h.version) + " is not supported" +
        (swapped == 2 || swapped == 3 ? " (the file is big-endian; only little-endian files are)" : ""));
  }
  uint64_t nTensors = r.scalar<uint64_t>("the tensor count");
  uint64_t nKeys = r.scalar<uint64_t>("the metadata count");
  if (nTensors > kGgufMaxTensors)
    throw std::runtime_error("the tensor count " + std::to_string(nTensors) + " exceeds the limit of " +
                             std::to_string(kGgufMaxTensors));
  if (nKeys > kGgufMaxKeys)
    throw std::runtime_error("the metadata count " + std::to_string(nKeys) + " exceeds the limit of " +
                             std::to_string(kGgufMaxKeys));
  for (uint64_t k = 0; k < nKeys; k++) {
    std::string key = r.string(kGgufMaxKeyLength, "metadata key " + std::to_string(k));
    if (key.empty()) throw std::runtime_error("metadata key " + std::to_string(k) + " is empty");
    if (h.keyIndex.count(key)) throw std::runtime_error("metadata '" + key + "' appears twice");
    GgufValue v = readValue(r, key);
    h.keyIndex[key] = h.metadata.size();
    h.metadata.emplace_back(key, std::move(v));
  }
  if (const GgufValue* a = h.find("general.alignment")) {
    if (a->type != GgufType::U32) throw std::runtime_error("metadata 'general.alignment' must be a uint32");
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      throw std::runtime_error("metadata 'general.alignment' is " + std::to_string(a->u) + ", not a power of two");
    h.alignment = a->u;
  }
  std::map<std::string, size_t> names;
  for (uint64_t k = 0; k < nTensors; k++) {
    GgufTensorInfo t;
    t.name = r.string(kGgufMaxKeyLength, "tensor name " + std::to_string(k));
    std::string what = "tensor '" + t.name + "'";
    if (t.name.empty()) throw std::runtime_error("tensor " + std::to_string(k) + " has an empty name");
    if (names.count(t.name)) throw std::runtime_error(what + " appears twice");
    uint32_t nd = r.scalar<uint32_t>(what + " dimension count");
    if (nd > kGgufMaxDims)
      throw std::runtime_error(what + " has " + std::to_string(nd) + " dimensions (at most " +
                               std::to_string(kGgufMaxDims) + ")");
    // Element count with overflow checks: each dimension < 2^40, product < 2^48 elements.
    uint64_t count = 1;
    for (uint32_t d = 0; d < nd; d++) {
      uint64_t n = r.scalar<uint64_t>(what + " dimensions");
      if (n >= (uint64_t(1) << 40)) throw std::runtime_error(what + " has an invalid dimension " + std::to_string(n));
      if (n != 0 && count > (uint64_t(1) << 48) / n) throw std::runtime_error(what + " is too large");
      count *= n;
      t.ne.push_back(int64_t(n));
    }
    t.type = r.scalar<uint32_t>(what + " type");
    const GgmlTypeInfo* ti = ggmlTypeInfo(t.type);
    if (!ti) throw std::runtime_error(what + " has unknown ggml type " + std::to_string(t.type));
    if (ti->blockElements > 1 && (t.ne.empty() || t.ne[0] % ti->blockElements != 0))
      throw std::runtime_error(what + " of type " + ti->name +
                               " has a first dimension that is not a multiple of its block of " +
                               std::to_string(ti->blockElements));
    t.bytes = count / ti->blockElements * ti->blockBytes;
    t.offset = r.scalar<uint64_t>(what + " offset");
    if (t.offset % h.alignment != 0)
      throw std::runtime_error(what + " offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                               std::to_string(h.alignment));
    names[t.name] = h.tensors.size();
    h.tensors.push_back(std::move(t));
  }
  uint64_t end = r.pos();
  uint64_t pad = (h.alignment - end % h.alignment) % h.alignment;
  // A file with no tensor data may end right after its header, without the padding.
  h.dataOffset = end + pad > fileSize ? fileSize : end + pad;
  uint64_t dataSize = fileSize - h.dataOffset;
  for (auto& t : h.tensors) {
    if (t.offset > dataSize || t.bytes > dataSize - t.offset)
      throw std::runtime_error("tensor '" + t.name + "' (" + std::to_string(t.bytes) + " bytes at offset " +
                               std::to_string(t.offset) + ") runs past the end of the data (" +
                               std::to_string(dataSize) + " bytes)");
  }
  // Overlap check over non-empty tensors sorted by start (as in safetensors.cc).
  std::vector<const GgufTensorInfo*> sorted;
  for (auto& t : h.tensors)
    if (t.bytes > 0) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const GgufTensorInfo* a, const GgufTensorInfo* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->bytes < b->bytes;
  });
  const GgufTensorInfo* furthest = nullptr;
  for (const GgufTensorInfo* t : sorted) {
    if (furthest && t->offset < furthest->offset + furthest->bytes)
      throw std::runtime_error("tensors '" + furthest->name + "' and '" + t->name + "' overlap");
    if (!furthest || t->offset + t->bytes > furthest->offset + furthest->bytes) furthest = t;
  }
  return h;
}

GgufFile::GgufFile(const std::string& path, bool mapData) : TensorFile(path) {
  int fd = fd_;
  GgufReadFn read = [fd](void* dst, uint64_t off, size_t n) {
    size_t got = 0;
    while (got < n) {
      ssize_t r = pread(fd, static_cast<char*>(dst) + got, n - got, off_t(off + got));
      if (r <= 0) return false;
      got += size_t(r);
    }
    return true;
  };
  try {
    header_ = parseGgufHeader(read, size_);
  } catch (const std::runtime_error& e) {
    throw Error(kErrFormat, std::string("invalid GGUF header: ") + e.what(), path);
  }
  if (!mapData) return;
  if (size_ > header_.dataOffset) mapWhole();
  // No mapping (a file that ends where its data would begin, so every tensor is empty): no base
  // either, since an offset from a null pointer is undefined (the fuzzer found this).
  const char* base = map_ ? static_cast<const char*>(map_) + header_.dataOffset : nullptr;
  for (auto& g : header_.tensors) {
    TensorEntry e;
    e.name = g.name;
    e.shape.assign(g.ne.rbegin(), g.ne.rend());  // row-major: slowest dimension first
    e.begin = size_t(g.offset);
    e.end = size_t(g.offset + g.bytes);
    e.data = map_ && g.bytes ? base + g.offset : nullptr;
    tensors_.push_back(std::move(e));
  }
}

GgufFile::~GgufFile() = default;

}  // namespace dg
