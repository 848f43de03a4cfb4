// Op records: every stream op the backend is asked for (compute ops, device copies, the step's
// upload and download) as a fixed-size value. The backend executes a record at once, keeps the
// records of a step to capture them into a CUDA graph, and compares later steps against a
// graph's records before replaying it. A record holds every argument that shapes the work (all
// device pointers, sizes, scalars), so equal records issue identical launches; host pointers are
// not in them (an upload's bytes are copied when it is called; a download's destination is
// written after the step).
//
// Argument structs are made only of 8-byte fields, checked by has_unique_object_representations
// (no padding, no floating-point members: floats are kept as their bits), so records compare
// with memcmp.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "backend.h"

namespace dg {
namespace cuda {

enum class OpKind : uint32_t {
  Upload = 1,
  Download,
  Copy,
  Embed,
  Rmsnorm,
  Matmul,
  Matmul2,
  GateUp,
  KvWriteRope,
  RopeRows,
  Attention,
  Tanh,
  RouteThreshold,
  RouteArgmax,
  Compact,
  Sample
};
const char* opName(OpKind k);

inline uint64_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bitsFloat(uint64_t b) {
  const uint32_t u = uint32_t(b);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct WeightA {
  const void* data;
  int64_t dtype, rows, cols;
  static WeightA of(const Weight& w) { return WeightA{w.data, int64_t(w.dtype), w.rows, w.cols}; }
  Weight get() const {
    Weight w;
    w.data = data;
    w.dtype = DType(dtype);
    w.rows = rows;
    w.cols = cols;
    return w;
  }
};
struct EpilogueA {
  int64_t mode;
  const int32_t* dst;
  int64_t scaleMode;
  const float* scale;
  static EpilogueA of(const Epilogue& e) { return EpilogueA{e.mode, e.dst, e.scaleMode, e.scale}; }
  Epilogue get() const { return Epilogue{Epilogue::Mode(mode), dst, Epilogue::Scale(scaleMode), scale}; }
};
struct AttnA {
  int64_t nHeads, nKv, headDim, window, kv;
  static AttnA of(const AttnShape& a) { return AttnA{a.nHeads, a.nKv, a.headDim, a.window, int64_t(a.kv)}; }
  AttnShape get() const {
    AttnShape a;
    a.nHeads = int(nHeads);
    a.nKv = int(nKv);
    a.headDim = int(headDim);
    a.window = int(window);
    a.kv = DType(kv);
    return a;
  }
};

struct UploadA {
  void* dst;
  uint64_t bytes;
  uint64_t offset;
};  // offset in the step's upload area
struct DownloadA {
  const void* src;
  uint64_t bytes;
};
struct CopyA {
  void* dst;
  const void* src;
  uint64_t bytes;
};
struct EmbedA {
  float* x;
  const int32_t* tokens;
  int64_t rows;
  WeightA table;
};
struct RmsnormA {
  float* out;
  const float* x;
  RowSet rows;
  int64_t dim;
  const float* w;
  uint64_t eps;
};
struct MatmulA {
  float* out;
  int64_t ldo;
  const float* x;
  int64_t ldx;
  RowSet rows;
  WeightA W;
  const float* bias;
  EpilogueA ep;
};
struct Matmul2A {
  float* out0;
  int64_t ldo0;
  float* out1;
  int64_t ldo1;
  const float* x;
  int64_t ldx;
  RowSet rows;
  WeightA W0;
  const float* b0;
  WeightA W1;
  const float* b1;
};
struct GateUpA {
  float* out;
  int64_t ldo;
  const float* x;
  int64_t ldx;
  RowSet rows;
  WeightA Wg;
  const float* bg;
  WeightA Wu;
  const float* bu;
};
struct KvWriteRopeA {
  float* k;
  const float* v;
  StepRows step;
  int64_t layer;
  AttnA a;
  const float* invFreq;
};
struct RopeRowsA {
  float* q;
  int64_t ldq;
  RowSet rows;
  StepRows step;
  int64_t nHeads, headDim;
  const float* invFreq;
};
struct AttentionA {
  float* out;
  const float* q;
  RowSet rows;
  StepRows step;
  int64_t layer;
  AttnA a;
};
struct TanhA {
  float* x;
  RowSet rows;
  int64_t dim;
};
struct RouteThresholdA {
  uint8_t* runAttn;
  uint8_t* runMlp;
  float* weight;
  const float* logits;
  int64_t rows;
  uint64_t threshold;
};
struct RouteArgmaxA {
  uint8_t* run;
  const float* logits;
  int64_t rows;
};
struct CompactA {
  const uint8_t* flags;
  int64_t rows;
  int32_t* runIdx;
  int32_t* runCount;
  int32_t* skipIdx;
  int32_t* skipCount;
};
struct SampleA {
  int32_t* tokens;
  float* logits;
  int64_t rows, vocab;
  SampleRow* params;
  const PenaltyToken* penalties;
};

struct Rec {
  static constexpr size_t kBytes = 160;
  OpKind kind = OpKind::Upload;
  uint32_t zero = 0;
  alignas(8) unsigned char b[kBytes] = {};

  template <class A>
  static Rec of(OpKind k, const A& a) {
    static_assert(std::has_unique_object_representations_v<A>, "record arguments must have no padding");
    static_assert(sizeof(A) <= kBytes, "record arguments too large");
    Rec r;
    r.kind = k;
    std::memcpy(r.b, &a, sizeof(A));
    return r;
  }
  template <class A>
  A as() const {
    A a;
    std::memcpy(&a, b, sizeof(A));
    return a;
  }
  bool operator==(const Rec& o) const { return kind == o.kind && std::memcmp(b, o.b, kBytes) == 0; }
  bool operator!=(const Rec& o) const { return !(*this == o); }
};

// FNV-1a over the records (a lookup key; equality is always checked in full).
inline uint64_t hashRecs(const Rec* r, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&r[i]);
    for (size_t j = 0; j < sizeof(Rec); j++) h = (h ^ p[j]) * 1099511628211ull;
  }
  return h;
}

}  // namespace cuda
}  // namespace dg
