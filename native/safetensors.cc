#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "errors.h"
#include "gguf.h"
#include "gguf_model.h"
#include "json.h"
#include "mapguard.h"

namespace dg {

// The reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeader = 100ull << 20;

static bool dtypeFromName(const std::string& s, DType& t) {
  if (s == "F32")
    t = DType::F32;
  else if (s == "F16")
    t = DType::F16;
  else if (s == "BF16")
    t = DType::BF16;
  else
    return false;
  return true;
}

static bool knownSafetensorsDtype(const std::string& s) {
  static const char* names[] = {"F64",  "I64",     "U64",     "I32",     "U32", "I16",     "U16",     "I8", "U8",
                                "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};
  for (auto n : names)
    if (s == n) return true;
  return false;
}

std::vector<TensorEntry> parseSafetensorsHeader(const char* json, size_t len, size_t dataSize) {
  JsonValue root;
  try {
    root = parseJson(json, len);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("header is not valid JSON: ") + e.what());
  }
  if (root.kind != JsonValue::Object) throw std::runtime_error("header is not a JSON object");
  std::vector<TensorEntry> out;
  for (auto& m : root.members) {
    const std::string& name = m.first;
    const JsonValue& v = m.second;
    if (name == "__metadata__") {
      if (v.kind != JsonValue::Object) throw std::runtime_error("__metadata__ is not an object");
      for (auto& kv : v.members)
        if (kv.second.kind != JsonValue::String)
          throw std::runtime_error("__metadata__ value '" + kv.first + "' is not a string");
      continue;
    }
    if (v.kind != JsonValue::Object) throw std::runtime_error("tensor '" + name + "' is not an object");
    const JsonValue* dt = v.find("dtype");
    const JsonValue* shape = v.find("shape");
    const JsonValue* offs = v.find("data_offsets");
    if (!dt || dt->kind != JsonValue::String) throw std::runtime_error("tensor '" + name + "' has no dtype string");
    if (!shape || shape->kind != JsonValue::Array) throw std::runtime_error("tensor '" + name + "' has no shape array");
    if (!offs || offs->kind != JsonValue::Array || offs->items.size() != 2)
      throw std::runtime_error("tensor '" + name + "' has no data_offsets [begin, end]");
    TensorEntry e;
    e.name = name;
    if (!dtypeFromName(dt->text, e.dtype)) {
      if (knownSafetensorsDtype(dt->text))
        throw std::runtime_error("tensor '" + name + "' has dtype " + dt->text +
                                 ", which depthgate does not support (F32, F16, BF16 only)");
      throw std::runtime_error("tensor '" + name + "' has unknown dtype '" + dt->text + "'");
    }
    if (shape->items.size() > 8) throw std::runtime_error("tensor '" + name + "' has too many dimensions");
    // Element count with overflow checks: each dimension < 2^40, product < 2^48 elements.
    uint64_t count = 1;
    for (auto& d : shape->items) {
      int64_t n;
      if (!d.asUint(n) || n >= (int64_t(1) << 40))
        throw std::runtime_error("tensor '" + name + "' has an invalid shape dimension");
      e.shape.push_back(n);
      if (n != 0 && count > (uint64_t(1) << 48) / uint64_t(n))
        throw std::runtime_error("tensor '" + name + "' is too large");
      count *= uint64_t(n);
    }
    int64_t b, en;
    if (!offs->items[0].asUint(b) || !offs->items[1].asUint(en))
      throw std::runtime_error("tensor '" + name + "' has invalid data_offsets");
    if (b > en) throw std::runtime_error("tensor '" + name + "' has data_offsets with begin > end");
    if (uint64_t(en) > dataSize)
      throw std::runtime_error("tensor '" + name + "' data_offsets end " + std::to_string(en) +
                               " is past the end of the data (" + std::to_string(dataSize) + " bytes)");
    uint64_t want = count * dtypeSize(e.dtype);
    if (uint64_t(en - b) != want)
      throw std::runtime_error("tensor '" + name + "' shape needs " + std::to_string(want) +
                               " bytes but data_offsets cover " + std::to_string(en - b));
    e.begin = size_t(b);
    e.end = size_t(en);
    out.push_back(std::move(e));
  }
  // Overlap check over non-empty tensors sorted by start, against the furthest end seen so far
  // (an empty tensor must not hide an overlap between its neighbours).
  std::vector<const TensorEntry*> sorted;
  for (auto& e : out)
    if (e.end > e.begin) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorEntry* furthest = nullptr;
  for (const TensorEntry* t : sorted) {
    if (furthest && t->begin < furthest->end)
      throw std::runtime_error("tensors '" + furthest->name + "' and '" + t->name + "' overlap");
    if (!furthest || t->end > furthest->end) furthest = t;
  }
  return out;
}

TensorFile::TensorFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; the type is checked
  // right after, on the descriptor itself, and anything but a regular file is refused. For a
  // regular file the flag changes nothing.
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) throw Error(kErrIo, "cannot open: " + std::string(std::strerror(errno)), path);
  // A throw below leaves no derived object, so this constructor closes what it opened.
  struct Closer {
    int& fd;
    bool keep = false;
    ~Closer() {
      if (!keep) ::close(fd), fd = -1;
    }
  } closer{fd_};
  // statx rather than fstat: fstat is a GLIBC_2.33 symbol, statx keeps the prebuilt binary
  // loadable on glibc 2.28+.
  struct statx st;
  if (statx(fd_, "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE | STATX_MTIME, &st) != 0)
    throw Error(kErrIo, "cannot stat: " + std::string(std::strerror(errno)), path);
  if (!S_ISREG(st.stx_mode)) throw Error(kErrIo, "not a regular file", path);
  size_ = size_t(st.stx_size);
  mtimeSec_ = st.stx_mtime.tv_sec;
  mtimeNsec_ = st.stx_mtime.tv_nsec;
  closer.keep = true;
}

void TensorFile::mapWhole() {
  if (size_ == 0) return;
  map_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(kErrIo, "cannot memory-map: " + std::string(std::strerror(errno)), path_);
  }
  guardMapping(map_, size_, path_);
}

TensorFile::~TensorFile() {
  if (map_) {
    unguardMapping(map_);
    munmap(map_, size_);
  }
  if (fd_ >= 0) ::close(fd_);
}

SafetensorsFile::SafetensorsFile(const std::string& path) : TensorFile(path) {
  int fd = fd_;
  if (size_ < 8)
    throw Error(kErrFormat,
                "file is truncated: " + std::to_string(size_) + " bytes, shorter than the 8-byte header length", path);
  unsigned char lenBytes[8];
  if (pread(fd, lenBytes, 8, 0) != 8) throw Error(kErrIo, "cannot read the header length", path);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenBytes[i];
  if (hlen > size_ - 8)
    throw Error(kErrFormat,
                "header length " + std::to_string(hlen) + " runs past the end of the file (" + std::to_string(size_) +
                    " bytes)",
                path);
  if (hlen > kMaxHeader) throw Error(kErrFormat, "header length " + std::to_string(hlen) + " exceeds 100 MB", path);
  if (hlen < 2) throw Error(kErrFormat, "header is empty", path);
  std::string header(size_t(hlen), '\0');
  size_t got = 0;
  while (got < hlen) {
    ssize_t r = pread(fd, &header[got], size_t(hlen) - got, off_t(8 + got));
    if (r <= 0) throw Error(kErrIo, "cannot read the header", path);
    got += size_t(r);
  }
  size_t dataStart = 8 + size_t(hlen);
  try {
    tensors_ = parseSafetensorsHeader(header.data(), header.size(), size_ - dataStart);
  } catch (const std::runtime_error& e) {
    throw Error(kErrFormat, std::string("invalid safetensors header: ") + e.what(), path);
  }
  if (size_ > dataStart) mapWhole();
  const char* base = static_cast<const char*>(map_) + dataStart;
  for (auto& t : tensors_) t.data = map_ ? base + t.begin : nullptr;
}

std::string TensorFile::changeSinceOpen() const {
  struct statx st;
  if (statx(fd_, "", AT_EMPTY_PATH, STATX_SIZE | STATX_MTIME, &st) != 0)
    return "cannot be checked: " + std::string(std::strerror(errno));
  if (size_t(st.stx_size) != size_)
    return "changed size on disk (" + std::to_string(size_) + " bytes when loaded, " + std::to_string(st.stx_size) +
           " now)";
  if (st.stx_mtime.tv_sec != mtimeSec_ || st.stx_mtime.tv_nsec != mtimeNsec_)
    return "was modified on disk since it was loaded";
  return "";
}

static std::unique_ptr<TensorFile> openTensorFile(const std::string& path) {
  if (!isGgufPath(path)) return std::make_unique<SafetensorsFile>(path);
  auto g = std::make_unique<GgufFile>(path);
  adaptGgufTensors(*g);
  return g;
}

void TensorStore::open(const std::vector<std::string>& paths) {
  for (size_t i = 0; i < paths.size(); i++) {
    files_.push_back(openTensorFile(paths[i]));
    for (auto& t : files_.back()->tensors()) {
      t.file = int(i);
      auto it = byName_.find(t.name);
      if (it != byName_.end())
        throw Error(kErrFormat,
                    "tensor '" + t.name + "' appears in both " + files_[it->second->file]->path() + " and " + paths[i],
                    paths[i]);
      byName_[t.name] = &t;
    }
  }
}

void TensorStore::checkUnchanged() const {
  for (auto& f : files_) {
    std::string why = f->changeSinceOpen();
    if (!why.empty())
      throw Error(
          kErrIo,
          why +
              ": the loaded model would compute with a mixture of old and new weights, so it refuses to run. "
              "Load the model again; replace checkpoints by writing a new file and renaming it over the old one",
          f->path());
  }
}

const TensorEntry* TensorStore::find(const std::string& name) const {
  auto it = byName_.find(name);
  return it == byName_.end() ? nullptr : it->second;
}

}  // namespace dg
