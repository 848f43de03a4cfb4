// The op-level parity harness's common parts: the two op tables under test, buffers in backend
// memory, random inputs, the per-dtype tolerances and the report. See ops_parity_test.cc.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend.h"
#include "errors.h"

namespace parity {

using dg::DType;
using dg::Ops;

// One op table under test.
struct Side {
  Ops* ops = nullptr;
  std::string label;  // e.g. "cpu avx512, 2 threads"
  // The backend promises f32 arithmetic on exactly widened inputs (the CPU backends): it is held
  // to the f32 tolerance whatever the weight or cache dtype.
  bool f32Exact = false;
};

// A buffer in one backend's memory; released when it goes out of scope.
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(Ops& o, size_t bytes) : ops_(&o), bytes_(bytes) { p_ = o.alloc(bytes ? bytes : 1); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : ops_(o.ops_), p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      reset();
      ops_ = o.ops_, p_ = o.p_, bytes_ = o.bytes_;
      o.p_ = nullptr;
    }
    return *this;
  }
  ~DevBuf() { reset(); }
  void reset() {
    if (p_) ops_->release(p_);
    p_ = nullptr;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  void* get() const { return p_; }
  size_t bytes() const { return bytes_; }
  void put(const void* host, size_t n, size_t offset = 0) { ops_->upload(static_cast<char*>(p_) + offset, host, n); }
  template <class T>
  std::vector<T> fetch(size_t count) const {
    std::vector<T> v(count);
    if (count) ops_->download(v.data(), p_, count * sizeof(T));
    return v;
  }

 private:
  Ops* ops_ = nullptr;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// A buffer holding `v`, in o's memory.
template <class T>
DevBuf upload(Ops& o, const std::vector<T>& v) {
  DevBuf b(o, v.size() * sizeof(T));
  if (!v.empty()) b.put(v.data(), v.size() * sizeof(T));
  return b;
}

// Poison: quiet NaNs with a payload no computation produces, so an element left unwritten
// fails the comparison and an element written where nothing should be is seen bit for bit.
inline float poisonF32() {
  const uint32_t u = 0x7fe5a5a5u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
constexpr uint16_t kPoisonBF16 = 0x7fe5;  // quiet NaN
constexpr uint16_t kPoisonF16 = 0x7e5a;   // quiet NaN
constexpr int32_t kPoisonI32 = 0x5a5a5a5a;
constexpr uint8_t kPoisonU8 = 0xa5;
// Index entries past a set's count: no correct kernel reads them; one that does reads far
// outside every buffer.
constexpr int32_t kUnreadIndex = 0x40000000;

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t next() { return g_(); }
  int64_t below(int64_t n) { return n <= 0 ? 0 : int64_t(g_() % uint64_t(n)); }
  int64_t range(int64_t lo, int64_t hi) { return lo + below(hi - lo + 1); }  // inclusive
  double unit() { return double(g_() >> 11) * 0x1.0p-53; }
  // Random sign and magnitude in [0.05, 1] * scale: never zero.
  float value(float scale = 1.f) {
    const float m = float(0.05 + 0.95 * unit()) * scale;
    return (g_() & 1) ? m : -m;
  }
  float normal() { return float(std::normal_distribution<double>(0.0, 1.0)(g_)); }
  std::vector<float> values(size_t n, float scale = 1.f) {
    std::vector<float> v(n);
    for (auto& x : v) x = value(scale);
    return v;
  }
  template <class T>
  T pick(const std::vector<T>& v) {
    return v[size_t(below(int64_t(v.size())))];
  }
  // `n` distinct values from [0, m), in random order.
  std::vector<int32_t> distinct(int64_t n, int64_t m);

 private:
  std::mt19937_64 g_;
};

// Values of a dtype: the stored bits and their exact value.
uint16_t toBits(float f, DType t);  // round to nearest even (f32: unused)
double widen(const void* data, DType t, size_t i);

// A weight in host memory, in its stored dtype, with the exact values for the reference.
// `misalign` bytes of offset make the view unaligned (safetensors data may be).
struct HostWeight {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  std::vector<unsigned char> storage;
  size_t offset = 0;
  std::vector<double> exact;  // [rows * cols]
  dg::Weight view() const { return dg::Weight{storage.data() + offset, dtype, rows, cols}; }
  double at(int64_t r, int64_t c) const { return exact[size_t(r * cols + c)]; }
};
HostWeight makeWeight(Rng& rng, DType t, int64_t rows, int64_t cols, float scale, size_t misalign);

// A row set as the host describes it; `on(side)` makes its count and indices in that
// backend's memory.
struct RowSpec {
  enum Kind { Dense, Counted, Indexed, HostIndexed } kind = Dense;
  int64_t max = 0, count = 0;  // count <= max: the rows the op must process
  std::vector<int32_t> idx;    // [max]: entries past count are kUnreadIndex
  int64_t rowOf(int64_t i) const { return idx.empty() ? i : idx[size_t(i)]; }
  std::string describe() const;
};
// A set of kind k over `max` rows; Indexed/HostIndexed pick distinct rows of [0, inputRows).
RowSpec makeRows(Rng& rng, RowSpec::Kind k, int64_t max, int64_t count, int64_t inputRows);
// The set kinds every op over active rows is run with, for one max: dense; device count equal
// to max, below max, zero; device count with indices (equal, below); indices with a host count.
std::vector<RowSpec> rowVariants(Rng& rng, int64_t max, int64_t inputRows);

struct RowsOnSide {
  DevBuf count, idx;
  dg::RowSet set;
};
RowsOnSide placeRows(Ops& o, const RowSpec& s);

// The tolerances, normwise per output row (||got - ref||_2 / ||ref||_2 against the float64
// reference, the reference computed from the exact stored values of every input). For products
// the denominator is no less than ||a||_2 / sqrt(K), a = |W| |x| termwise (reference.h rowScale):
// a row whose few outputs happen to cancel is judged by the size of its terms, as a length-K dot
// product of them typically is, not by the accident of its sum.
// - f32 arithmetic in any summation order on exactly widened inputs: rounding errors of
//   about sqrt(K) * 2^-24 (2e-6 at K = 4100), bounded here by 2e-5. Every backend is held to it
//   for f32 weights and caches; the CPU backends, which widen every dtype exactly into f32, for
//   every dtype.
// - f16 / bf16 weights or caches on a device backend: the error of rounding the f32 operand
//   (the activation, query or probability) once to the dtype so its matrix units can be used:
//   unit roundoff u = 2^-11 (f16), 2^-8 (bf16); random rounding errors give about u / sqrt(3)
//   normwise; the tolerance is 2u (9.8e-4, 7.8e-3).
// A missing or doubled term in a length-K dot product moves a row by about 1 / sqrt(K), 1.6e-2
// at the largest K here (4100), and a wrong row, position or scale by O(1): all above every
// tolerance.
struct Tol {
  static constexpr double kF32 = 2e-5;
  static constexpr double kF16 = 2 * 0x1p-11;
  static constexpr double kBF16 = 2 * 0x1p-8;
  // RMSNorm: the mean of up to 4100 positive squares summed in f32 (a serial sum drifts by up to
  // K * 2^-24 in the worst case; typical orders stay under 1e-5).
  static constexpr double kNorm = 3e-5;
  // RoPE: HF forms the angle pos * inv_freq in f32; at positions up to 1023 that angle is off by
  // up to 1023 * 2^-24 = 6.1e-5 rad, which moves each rotated pair by as much.
  static constexpr double kRope = 1e-4;
  // tanh / sigmoid / silu in f32: a few ulp (1e-5 forbids the 2^-11 hardware approximations,
  // which would move router decisions).
  static constexpr double kActivation = 1e-5;
  // Attention: softmax (exp, a sum, a division) on top of the f32 dot products.
  static constexpr double kAttentionF32 = 3e-5;
  static double forDtype(DType t, const Side& s, double f32Bound = kF32) {
    if (s.f32Exact || t == DType::F32) return f32Bound;
    return t == DType::F16 ? kF16 : kBF16;
  }
  // Rounding a value to the cache dtype (kvWriteRope's K): half an ulp, relative.
  static double rounding(DType t) { return t == DType::F32 ? 0.0 : t == DType::F16 ? 0x1p-11 : 0x1p-8; }
};

// ---- the report ---------------------------------------------------------------------------
struct Check {
  std::string group;  // e.g. "matmul bf16": one row of the summary table
  std::string what;   // the case and the output compared
  int side = 0;       // 0 = A, 1 = B
  double err = 0, tol = 0;
  bool pass = true;
  std::string detail;
};

class Report {
 public:
  void add(Check c);
  int failures() const { return failed_; }
  int passes() const { return passed_; }
  int failuresIn(const std::string& groupPrefix) const;
  void printSummary(const std::string& a, const std::string& b) const;
  std::string json(const std::string& a, const std::string& b, const std::string& extra) const;
  size_t mark() const { return checks_.size(); }
  void truncate(size_t m);  // forget the checks after mark m (mutant runs)

 private:
  struct Group {
    int cases = 0, failed = 0;
    double maxErr[2] = {0, 0};
    double tol[2] = {0, 0};
  };
  std::vector<Check> checks_;
  int passed_ = 0, failed_ = 0;
};

// The run's context: both sides, the generator, the report, and the size of the case set.
struct Ctx {
  Side side[2];
  Rng rng{1};
  Report report;
  bool quick = false;  // a reduced case set (mutant runs, memcheck)
  // Called when an op throws: records a failing check for that side.
  void opFailed(int s, const std::string& group, const std::string& what, const std::exception& e);
  // Consecutive cases in which side B threw: after many, B is taken as dead and skipped.
  int bConsecutiveErrors = 0;
  bool bDead = false;
  // Called after every case, when its buffers are released (the child backend forgets the
  // case's weights there).
  std::function<void()> afterCase;
  void endCase() {
    if (afterCase) afterCase();
  }
};

// Compares a float output downloaded from one side against the reference.
//   got, init: the whole buffer after the op and as uploaded; ref: expected values where
//   written[i] (others must be bit-identical to init); rowLen: elements per row for the normwise
//   error; denom: the per-row norm to divide by (null: the norm of ref over the row's written
//   elements).
void compareF32(Ctx& c, int s, const std::string& group, const std::string& what, const std::vector<float>& got,
                const std::vector<float>& init, const std::vector<double>& ref, const std::vector<uint8_t>& written,
                int64_t rowLen, double tol, const std::vector<double>* denom = nullptr);
// Integer outputs: written elements must equal ref exactly, the others init.
template <class T>
void compareExact(Ctx& c, int s, const std::string& group, const std::string& what, const std::vector<T>& got,
                  const std::vector<T>& init, const std::vector<T>& ref, const std::vector<uint8_t>& written) {
  size_t bad = 0, first = size_t(-1), untouchedBad = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const bool ok = written[i] ? got[i] == ref[i] : std::memcmp(&got[i], &init[i], sizeof(T)) == 0;
    if (!ok) {
      if (first == size_t(-1)) first = i;
      bad++;
      if (!written[i]) untouchedBad++;
    }
  }
  Check k{group, what, s, double(bad), 0, bad == 0, ""};
  if (bad)
    k.detail = std::to_string(bad) + " elements differ (" + std::to_string(untouchedBad) +
               " outside what the op may write); first at " + std::to_string(first) + ": got " +
               std::to_string(int64_t(got[first])) + ", want " +
               std::to_string(int64_t(written[first] ? ref[first] : init[first]));
  c.report.add(k);
}

// Runs f(sideIndex) for A and B; an exception on one side becomes a failing check for it.
void onBoth(Ctx& c, const std::string& group, const std::string& what, const std::function<void(int)>& f);

// The op groups (cases_*.cc). Each draws fresh inputs for every case.
void runMemoryCases(Ctx& c);
void runEmbedCases(Ctx& c);
void runRmsnormCases(Ctx& c);
void runMatmulCases(Ctx& c);
void runMatmul2Cases(Ctx& c);
void runGateUpCases(Ctx& c);
void runTanhCases(Ctx& c);
void runKvWriteCases(Ctx& c);
void runRopeCases(Ctx& c);
void runAttentionCases(Ctx& c);
void runRoutingCases(Ctx& c);
void runCompactCases(Ctx& c);
void runSampleCases(Ctx& c);

// A side's weight prepared from a host weight (the CPU: the host view itself; a device: a copy).
dg::Weight prepared(Ops& o, const HostWeight& w);

std::string dtypeLabel(DType t);

}  // namespace parity
