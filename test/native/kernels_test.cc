// Standalone checks of the CPU kernels against plain double-precision references on random
// (never zero) inputs. The kernel variant under test is chosen by DEPTHGATE_CPU_KERNELS, so
// scripts/test-kernels.sh runs this binary once per variant the machine supports.
// Prints "N passed, M failed" last and exits non-zero on any failure.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"
#include "penalty_window.h"
#include "tensor.h"
#include "threadpool.h"

using namespace dg;

static int passed = 0, failed = 0;

static void check(bool ok, const std::string& what) {
  if (ok) {
    passed++;
  } else {
    failed++;
    std::printf("FAIL %s\n", what.c_str());
  }
}

static std::mt19937_64 rng(12345);

// Uniform in +-[0.05, 1]: random sign and magnitude, never zero.
static float randomValue() {
  std::uniform_real_distribution<float> mag(0.05f, 1.0f);
  return (rng() & 1) ? mag(rng) : -mag(rng);
}
static std::vector<float> randomVector(size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = randomValue();
  return v;
}

// Independent IEEE half decoder (arithmetic, not bit tricks) used as the reference.
static double halfRef(uint16_t h) {
  int sign = (h >> 15) ? -1 : 1;
  int exponent = (h >> 10) & 0x1f;
  int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(double(mantissa), -24);
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
}

// Independent bf16 decoder for the references (arithmetic, not the bit shift under test).
static double bf16Ref(uint16_t h) {
  int sign = (h >> 15) ? -1 : 1;
  int exponent = (h >> 7) & 0xff;
  int mantissa = h & 0x7f;
  if (exponent == 0) return sign * std::ldexp(double(mantissa), -133);
  if (exponent == 255) return mantissa ? NAN : sign * INFINITY;
  return sign * std::ldexp(1.0 + mantissa / 128.0, exponent - 127);
}

// ---- conversions ---------------------------------------------------------------------------

static void testConversions() {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float got = f16ToF32(uint16_t(h));
    double want = halfRef(uint16_t(h));
    if (std::isnan(want) ? !std::isnan(got) : double(got) != want) bad++;
  }
  check(bad == 0, "f16ToF32 exhaustive (" + std::to_string(bad) + " wrong)");

  // Reference encoder: nearest representable half, ties to the even code. Code 0x7c00 (inf)
  // stands at 65536 in the ladder, which yields exactly IEEE's overflow rounding.
  std::vector<double> ladder(0x7c01);
  for (uint32_t c = 0; c < 0x7c00; c++) ladder[c] = halfRef(uint16_t(c));
  ladder[0x7c00] = 65536.0;
  auto encodeRef = [&](float f) -> uint16_t {
    uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    double a = std::fabs(double(f));
    if (a >= 65536.0) return sign | 0x7c00;
    size_t hi = size_t(std::lower_bound(ladder.begin(), ladder.end(), a) - ladder.begin());
    if (ladder[hi] == a || hi == 0) return uint16_t(sign | hi);
    size_t lo = hi - 1;
    double dl = a - ladder[lo], dh = ladder[hi] - a;
    size_t pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
    return uint16_t(sign | pick);
  };
  bad = 0;
  std::vector<float> probes;
  for (uint32_t h = 0; h < 65536; h++) {  // every half value and the midpoints around it
    double v = halfRef(uint16_t(h));
    if (std::isnan(v) || std::isinf(v)) continue;
    probes.push_back(float(v));
    uint32_t u;
    float f = float(v);
    std::memcpy(&u, &f, 4);
    // Halfway points between normal halves sit 0x1000 f32 ulps away; probe them and 1 ulp
    // either side, where round-to-nearest-even decides.
    for (int d = -2; d <= 2; d++)
      for (int e = -1; e <= 1; e++) {
        uint32_t w = u + uint32_t(d) * 0x1000u + uint32_t(e);
        float g;
        std::memcpy(&g, &w, 4);
        if (std::isfinite(g)) probes.push_back(g);
      }
  }
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; i++) {
    uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isfinite(f)) probes.push_back(f);
  }
  for (float f : {65504.f, 65519.99f, 65520.f, 65536.f, 1e10f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 1e-30f,
                  6.1035156e-5f, 6.1032e-5f})
    probes.push_back(f), probes.push_back(-f);
  for (float f : probes)
    if (f32ToF16(f) != encodeRef(f)) bad++;
  check(bad == 0, "f32ToF16 rounding (" + std::to_string(bad) + " of " + std::to_string(probes.size()) + " wrong)");
  check(f32ToF16(INFINITY) == 0x7c00 && f32ToF16(-INFINITY) == 0xfc00, "f32ToF16 inf");
  uint16_t nanHalf = f32ToF16(NAN);
  check((nanHalf & 0x7c00) == 0x7c00 && (nanHalf & 0x3ff) != 0, "f32ToF16 nan stays nan");
  bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
    if (f32ToF16(f16ToF32(uint16_t(h))) != h) bad++;
  }
  check(bad == 0, "f16 round trip exhaustive");

  // Bulk conversion from unaligned storage at odd offsets and lengths.
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const size_t n = 1000;
    std::vector<unsigned char> storage(n * 4 + 8);
    unsigned char* base = storage.data() + 2;  // deliberately misaligned
    std::vector<float> expect(n);
    for (size_t i = 0; i < n; i++) {
      float f = randomValue() * 100.f;
      if (t == DType::F32)
        std::memcpy(base + 4 * i, &f, 4);
      else {
        uint16_t h = t == DType::F16 ? f32ToF16(f) : f32ToBf16(f);
        std::memcpy(base + 2 * i, &h, 2);
        f = float(t == DType::F16 ? halfRef(h) : bf16Ref(h));
      }
      expect[i] = f;
    }
    for (size_t offset : {size_t(0), size_t(1), size_t(3), size_t(17)})
      for (size_t len : {size_t(1), size_t(7), size_t(8), size_t(15), size_t(16), size_t(33), size_t(983)}) {
        if (offset + len > n) continue;
        std::vector<float> got(len + 1, 123.f);
        toF32(got.data(), base, t, offset, len);
        bool ok = got[len] == 123.f;
        for (size_t i = 0; i < len; i++) ok = ok && got[i] == expect[offset + i];
        check(ok,
              std::string("toF32 ") + dtypeName(t) + " offset " + std::to_string(offset) + " n " + std::to_string(len));
      }
  }
}

// ---- matmul ----------------------------------------------------------------------------------

struct StoredWeight {
  std::vector<unsigned char> storage;
  std::vector<double> decoded;  // what the stored values mean, for the reference
  Weight w;
};

static StoredWeight makeWeight(DType t, int64_t rows, int64_t cols) {
  StoredWeight s;
  size_t n = size_t(rows * cols), es = dtypeSize(t);
  s.storage.resize(n * es + 16);
  unsigned char* base = s.storage.data() + 2;  // 2 bytes past an aligned start
  s.decoded.resize(n);
  for (size_t i = 0; i < n; i++) {
    float f = randomValue();
    if (t == DType::F32) {
      std::memcpy(base + 4 * i, &f, 4);
      s.decoded[i] = f;
    } else if (t == DType::F16) {
      uint16_t h = f32ToF16(f);
      std::memcpy(base + 2 * i, &h, 2);
      s.decoded[i] = halfRef(h);
    } else {
      uint16_t h = f32ToBf16(f);
      std::memcpy(base + 2 * i, &h, 2);
      s.decoded[i] = bf16Ref(h);
    }
  }
  s.w = Weight{base, t, rows, cols};
  return s;
}

static void testMatmulCase(ThreadPool& pool, DType t, int64_t rows, int64_t k, int64_t n, bool withBias, int64_t ldxPad,
                           int64_t ldoPad, bool accumulate = false) {
  StoredWeight sw = makeWeight(t, n, k);
  const int64_t ldx = k + ldxPad, ldo = n + ldoPad;
  std::vector<float> x(size_t(rows * ldx));
  for (auto& v : x) v = randomValue();
  std::vector<float> bias = randomVector(size_t(n));
  const float sentinel = 1234.5f;
  std::vector<float> out(size_t(rows * ldo), sentinel);
  // accumulate: out starts with values of its own, which the product is added to.
  std::vector<float> prior = randomVector(size_t(rows * ldo));
  if (accumulate)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t o = 0; o < n; o++) out[size_t(r * ldo + o)] = prior[size_t(r * ldo + o)];
  matmul(pool, out.data(), ldo, x.data(), ldx, rows, sw.w, withBias ? bias.data() : nullptr, accumulate);

  // Error is judged against the sum of |terms|: that is the scale f32 rounding works on, and
  // random signs make the result itself arbitrarily small by cancellation.
  double worst = 0;
  bool paddingIntact = true;
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t o = 0; o < n; o++) {
      double sum = withBias ? bias[size_t(o)] : 0.0, scale = std::fabs(sum);
      for (int64_t i = 0; i < k; i++) {
        double term = double(x[size_t(r * ldx + i)]) * sw.decoded[size_t(o * k + i)];
        sum += term;
        scale += std::fabs(term);
      }
      if (accumulate) {
        sum += prior[size_t(r * ldo + o)];
        scale += std::fabs(prior[size_t(r * ldo + o)]);
      }
      double err = std::fabs(double(out[size_t(r * ldo + o)]) - sum) / scale;
      if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
    }
    for (int64_t o = n; o < ldo; o++) paddingIntact = paddingIntact && out[size_t(r * ldo + o)] == sentinel;
  }
  char name[200];
  std::snprintf(name, sizeof name,
                "matmul%s %s rows=%lld k=%lld n=%lld bias=%d ldx+%lld ldo+%lld threads=%d (rel err %.2e)",
                accumulate ? " accumulate" : "", dtypeName(t), (long long)rows, (long long)k, (long long)n,
                int(withBias), (long long)ldxPad, (long long)ldoPad, pool.size(), worst);
  check(worst <= 1e-5 && paddingIntact, name);
}

static void testMatmul(ThreadPool& pool1, ThreadPool& pool2, ThreadPool& pool3) {
  struct Shape {
    int64_t rows, k, n;
  };
  const Shape shapes[] = {
      {1, 7, 1},    {1, 7, 5},       {1, 1, 9},       {2, 7, 3},      {3, 33, 65},   {3, 65, 33},
      {1, 33, 65},  {4, 16, 8},      {5, 513, 31},    {17, 130, 257}, {1, 130, 257}, {64, 256, 96},
      {9, 300, 50}, {1, 1024, 4096}, {1, 4096, 1024}, {70, 1024, 48}, {7, 8200, 13}};  // > 4096 columns: several K
                                                                                       // blocks in the prefill path
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    int i = 0;
    for (const Shape& s : shapes) {
      ThreadPool& pool = i % 3 == 0 ? pool1 : i % 3 == 1 ? pool2 : pool3;
      testMatmulCase(pool, t, s.rows, s.k, s.n, i % 2 == 0, 0, 0);
      testMatmulCase(pool, t, s.rows, s.k, s.n, i % 2 == 1, 3, 5);
      testMatmulCase(pool, t, s.rows, s.k, s.n, i % 2 == 1, 1, 2, true);
      i++;
    }
  }
}

// Several matrix-vector products in one loop, and SwiGLU in one loop, against double references.
static void testFusedVector(ThreadPool& pool) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int64_t k : {7, 64, 130, 1024}) {
      const int64_t n0 = 33, n1 = 8, n2 = 257;
      StoredWeight w0 = makeWeight(t, n0, k), w1 = makeWeight(t, n1, k), w2 = makeWeight(t, n2, k);
      std::vector<float> x = randomVector(size_t(k)), b0 = randomVector(size_t(n0)), prior = randomVector(size_t(n2));
      std::vector<float> o0(static_cast<size_t>(n0)), o1(static_cast<size_t>(n1)), o2 = prior;
      const GemvJob jobs[3] = {
          {o0.data(), &w0.w, b0.data(), false}, {o1.data(), &w1.w, nullptr, false}, {o2.data(), &w2.w, nullptr, true}};
      matmulMany(pool, x.data(), jobs, 3);
      double worst = 0;
      auto judge = [&](const StoredWeight& w, int64_t n, const float* got, const float* bias, const float* before) {
        for (int64_t o = 0; o < n; o++) {
          double sum = (bias ? bias[o] : 0) + (before ? before[o] : 0), scale = std::fabs(sum);
          for (int64_t i = 0; i < k; i++) {
            double term = double(x[size_t(i)]) * w.decoded[size_t(o * k + i)];
            sum += term;
            scale += std::fabs(term);
          }
          worst = std::max(worst, std::fabs(got[o] - sum) / scale);
        }
      };
      judge(w0, n0, o0.data(), b0.data(), nullptr);
      judge(w1, n1, o1.data(), nullptr, nullptr);
      judge(w2, n2, o2.data(), nullptr, prior.data());
      check(worst <= 1e-5, std::string("matmulMany ") + dtypeName(t) + " k=" + std::to_string(k) +
                               " threads=" + std::to_string(pool.size()) + " (rel err " + std::to_string(worst) + ")");

      StoredWeight g = makeWeight(t, n2, k), u = makeWeight(t, n2, k);
      std::vector<float> bg = randomVector(size_t(n2)), out(static_cast<size_t>(n2));
      gateUpVector(pool, out.data(), x.data(), g.w, bg.data(), u.w, nullptr);
      double worstGu = 0;
      for (int64_t o = 0; o < n2; o++) {
        double gs = bg[size_t(o)], us = 0, scale = std::fabs(bg[size_t(o)]) + 1e-30;
        for (int64_t i = 0; i < k; i++) {
          gs += double(x[size_t(i)]) * g.decoded[size_t(o * k + i)];
          us += double(x[size_t(i)]) * u.decoded[size_t(o * k + i)];
          scale += std::fabs(double(x[size_t(i)]) * g.decoded[size_t(o * k + i)]) +
                   std::fabs(double(x[size_t(i)]) * u.decoded[size_t(o * k + i)]);
        }
        const double want = gs / (1.0 + std::exp(-gs)) * us;
        // silu is 1-Lipschitz-ish in scale: judge against the terms' magnitude squared.
        worstGu = std::max(worstGu, std::fabs(out[size_t(o)] - want) / (scale * scale + 1e-30));
      }
      check(worstGu <= 1e-5, std::string("gateUpVector ") + dtypeName(t) + " k=" + std::to_string(k) + " threads=" +
                                 std::to_string(pool.size()) + " (rel err " + std::to_string(worstGu) + ")");
    }
}

// ---- rmsnorm / rope / siluMul ------------------------------------------------------------

static void testRmsnorm(ThreadPool& pool) {
  for (int64_t dim : {1, 7, 64, 4096}) {
    for (int64_t rows : {1, 5, 40}) {
      std::vector<float> x = randomVector(size_t(rows * dim)), w = randomVector(size_t(dim));
      std::vector<float> out(x.size());
      const float eps = 1e-5f;
      rmsnorm(pool, out.data(), x.data(), rows, dim, w.data(), eps);
      double worst = 0;
      for (int64_t r = 0; r < rows; r++) {
        double ms = 0;
        for (int64_t i = 0; i < dim; i++) ms += double(x[size_t(r * dim + i)]) * x[size_t(r * dim + i)];
        double inv = 1.0 / std::sqrt(ms / double(dim) + double(eps));
        for (int64_t i = 0; i < dim; i++) {
          double want = double(x[size_t(r * dim + i)]) * inv * w[size_t(i)];
          worst = std::max(worst, std::fabs(out[size_t(r * dim + i)] - want) / std::fabs(want));
        }
      }
      check(worst <= 1e-5, "rmsnorm rows=" + std::to_string(rows) + " dim=" + std::to_string(dim) + " (rel err " +
                               std::to_string(worst) + ")");
    }
  }
}

static void testRope(ThreadPool& pool) {
  for (int headDim : {2, 16, 64, 128}) {
    const int nHeads = 3, half = headDim / 2;
    const int64_t rows = 6, ldx = int64_t(nHeads) * headDim + 4;
    std::vector<float> invFreq(static_cast<size_t>(half));
    for (int i = 0; i < half; i++) invFreq[size_t(i)] = float(1.0 / std::pow(500000.0, 2.0 * i / headDim));
    std::vector<int32_t> positions = {0, 1, 7, 1000, 31999, 131071};
    std::vector<float> x = randomVector(size_t(rows * ldx)), before = x;
    rope(pool, x.data(), ldx, rows, positions.data(), nHeads, headDim, invFreq.data());
    double worst = 0;
    bool paddingIntact = true;
    for (int64_t r = 0; r < rows; r++) {
      for (int h = 0; h < nHeads; h++) {
        for (int i = 0; i < half; i++) {
          size_t lo = size_t(r * ldx + h * headDim + i), hi = lo + size_t(half);
          double angle = double(positions[size_t(r)]) * double(invFreq[size_t(i)]);
          double c = std::cos(angle), s = std::sin(angle), a = before[lo], b = before[hi];
          double scale = std::fabs(a) + std::fabs(b);
          worst = std::max(worst, std::fabs(x[lo] - (a * c - b * s)) / scale);
          worst = std::max(worst, std::fabs(x[hi] - (b * c + a * s)) / scale);
        }
      }
      for (int64_t i = int64_t(nHeads) * headDim; i < ldx; i++)
        paddingIntact = paddingIntact && x[size_t(r * ldx + i)] == before[size_t(r * ldx + i)];
    }
    check(worst <= 1e-5 && paddingIntact,
          "rope headDim=" + std::to_string(headDim) + " (rel err " + std::to_string(worst) + ")");
  }
}

static void testSiluMul(ThreadPool& pool) {
  for (int64_t n : {1, 7, 300, 5000}) {
    for (int64_t rows : {1, 3}) {
      const int64_t ldg = n + 2, ldu = n + 5;
      std::vector<float> g(size_t(rows * ldg)), u = randomVector(size_t(rows * ldu));
      for (auto& v : g) v = randomValue() * 12.f;
      std::vector<float> before = g;
      siluMul(pool, g.data(), ldg, u.data(), ldu, rows, n);
      double worst = 0;
      bool paddingIntact = true;
      for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < n; i++) {
          double gv = before[size_t(r * ldg + i)];
          double want = gv / (1.0 + std::exp(-gv)) * u[size_t(r * ldu + i)];
          worst = std::max(worst, std::fabs(g[size_t(r * ldg + i)] - want) / std::fabs(want));
        }
        for (int64_t i = n; i < ldg; i++)
          paddingIntact = paddingIntact && g[size_t(r * ldg + i)] == before[size_t(r * ldg + i)];
      }
      check(worst <= 1e-5 && paddingIntact, "siluMul rows=" + std::to_string(rows) + " n=" + std::to_string(n) +
                                                " (rel err " + std::to_string(worst) + ")");
    }
  }
  std::vector<float> g = {-200.f, -89.f, 100.f}, u = {1.f, 1.f, 2.f};
  siluMul(pool, g.data(), 3, u.data(), 3, 1, 3);
  check(std::fabs(g[0]) < 1e-30f && std::fabs(g[1]) < 1e-30f && g[2] == 200.f, "siluMul extremes");
}

// ---- attention -------------------------------------------------------------------------------

// A KV cache in one of the cache dtypes, with the values a reference should see.
struct TestCache {
  DType t;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<double> seen;  // decoded independently
  TestCache(DType dtype, const std::vector<float>& v) : t(dtype), f32(v) {
    seen.resize(v.size());
    if (t == DType::F32) {
      for (size_t i = 0; i < v.size(); i++) seen[i] = v[i];
      return;
    }
    half.resize(v.size());
    for (size_t i = 0; i < v.size(); i++) {
      half[i] = t == DType::BF16 ? f32ToBf16(v[i]) : f32ToF16(v[i]);
      seen[i] = t == DType::BF16 ? bf16Ref(half[i]) : halfRef(half[i]);
    }
  }
  const void* data() const { return t == DType::F32 ? static_cast<const void*>(f32.data()) : half.data(); }
};

static void testAttention(ThreadPool& pool) {
  struct Config {
    int nHeads, nKv, headDim, window;
  };
  const Config configs[] = {{4, 2, 16, 0}, {8, 2, 64, 0}, {4, 4, 20, 3}, {6, 1, 128, 5}, {2, 2, 7, 0}, {8, 1, 24, 0}};
  for (DType kvType : {DType::F32, DType::F16, DType::BF16})
    for (const Config& c : configs) {
      const int ctx = 40;
      const int64_t kvWidth = int64_t(c.nKv) * c.headDim, qWidth = int64_t(c.nHeads) * c.headDim;
      // Two sequences; rows 1..3 are a prefill of sequence 1, row 0 a decode of sequence 0.
      const TestCache kCache[2] = {TestCache(kvType, randomVector(size_t(ctx * kvWidth))),
                                   TestCache(kvType, randomVector(size_t(ctx * kvWidth)))};
      const TestCache vCache[2] = {TestCache(kvType, randomVector(size_t(ctx * kvWidth))),
                                   TestCache(kvType, randomVector(size_t(ctx * kvWidth)))};
      const int seqOf[] = {0, 1, 1, 1, 0};
      const int32_t posOf[] = {39, 0, 1, 17, 5};
      const int nRows = 5;
      std::vector<float> q = randomVector(size_t(nRows * qWidth)), out(size_t(nRows * qWidth), 99.f);
      std::vector<AttentionRow> rows(nRows);
      for (int r = 0; r < nRows; r++)
        rows[size_t(r)] = {q.data() + r * qWidth, kCache[seqOf[r]].data(), vCache[seqOf[r]].data(),
                           out.data() + r * qWidth, posOf[r]};
      const float scale = 1.0f / std::sqrt(float(c.headDim));
      attention(pool, rows.data(), nRows, c.nHeads, c.nKv, c.headDim, c.window, scale, kvType);

      double worst = 0;
      for (int r = 0; r < nRows; r++) {
        const double* K = kCache[seqOf[r]].seen.data();
        const double* V = vCache[seqOf[r]].seen.data();
        for (int h = 0; h < c.nHeads; h++) {
          const int kvh = h / (c.nHeads / c.nKv);
          const int pos = posOf[r];
          const int first = c.window > 0 ? std::max(0, pos - c.window + 1) : 0;
          std::vector<double> p;
          double maxS = -INFINITY;
          for (int t = first; t <= pos; t++) {
            double s = 0;
            for (int i = 0; i < c.headDim; i++)
              s += double(q[size_t(r * qWidth + h * c.headDim + i)]) * K[size_t(t * kvWidth + kvh * c.headDim + i)];
            p.push_back(s * scale);
            maxS = std::max(maxS, s * scale);
          }
          double total = 0;
          for (auto& v : p) total += (v = std::exp(v - maxS));
          for (int i = 0; i < c.headDim; i++) {
            double want = 0, mag = 0;
            for (int t = first; t <= pos; t++) {
              double vv = V[size_t(t * kvWidth + kvh * c.headDim + i)];
              want += p[size_t(t - first)] / total * vv;
              mag += p[size_t(t - first)] / total * std::fabs(vv);
            }
            double got = out[size_t(r * qWidth + h * c.headDim + i)];
            worst = std::max(worst, std::fabs(got - want) / mag);
          }
        }
      }
      check(worst <= 1e-5, std::string("attention kv=") + dtypeName(kvType) + " heads=" + std::to_string(c.nHeads) +
                               " kvHeads=" + std::to_string(c.nKv) + " dim=" + std::to_string(c.headDim) +
                               " window=" + std::to_string(c.window) + " (rel err " + std::to_string(worst) + ")");
    }
  // NaN in a key passes through to that group's outputs, as torch does.
  {
    const int nHeads = 2, nKv = 1, headDim = 8, ctx = 4;
    std::vector<float> k = randomVector(size_t(ctx * headDim)), v = randomVector(size_t(ctx * headDim));
    k[size_t(1 * headDim + 3)] = NAN;
    std::vector<float> q = randomVector(size_t(nHeads * headDim)), out(size_t(nHeads * headDim), 0.f);
    AttentionRow row{q.data(), k.data(), v.data(), out.data(), 3};
    attention(pool, &row, 1, nHeads, nKv, headDim, 0, 0.3f, DType::F32);
    bool allNan = true;
    for (float x : out) allNan = allNan && std::isnan(x);
    check(allNan, "attention: a NaN key makes the outputs NaN");
  }
}

// ---- sampling --------------------------------------------------------------------------------

static void testSampling() {
  std::vector<float> logits = randomVector(1000);
  logits[417] = 5.f;
  uint64_t state = 7;
  SamplingParams greedy;
  check(sampleToken(logits.data(), 1000, greedy, state) == 417 && state == 7, "greedy argmax");
  logits[12] = 5.f;
  check(sampleToken(logits.data(), 1000, greedy, state) == 12, "greedy ties pick lowest id");
  logits[3] = NAN;
  check(sampleToken(logits.data(), 1000, greedy, state) == 12, "greedy skips NaN");

  SamplingParams warm;
  warm.temperature = 1.f;
  std::vector<float> vocab128k = randomVector(128256);
  for (auto& v : vocab128k) v *= 8.f;
  vocab128k[100] = NAN;
  vocab128k[101] = -INFINITY;
  {
    uint64_t a = 42, b = 42;
    bool same = true;
    for (int i = 0; i < 50; i++)
      same = same && sampleToken(vocab128k.data(), 128256, warm, a) == sampleToken(vocab128k.data(), 128256, warm, b);
    check(same, "same seed gives the same tokens");
  }
  {
    SamplingParams k1 = warm;
    k1.topK = 1;
    uint64_t s = 9;
    int32_t g = sampleToken(vocab128k.data(), 128256, greedy, s);
    bool ok = true;
    for (int i = 0; i < 20; i++) ok = ok && sampleToken(vocab128k.data(), 128256, k1, s) == g;
    check(ok, "topK=1 equals greedy");
    SamplingParams pTiny = warm;
    pTiny.topP = 1e-6f;
    ok = true;
    for (int i = 0; i < 20; i++) ok = ok && sampleToken(vocab128k.data(), 128256, pTiny, s) == g;
    check(ok, "tiny topP equals greedy");
    SamplingParams cold = warm;
    cold.temperature = 1e-3f;
    std::vector<float> clearWinner = vocab128k;
    clearWinner[size_t(g)] += 0.05f;  // 50 units at this temperature: e^-50 for the runner-up
    ok = true;
    for (int i = 0; i < 20; i++) ok = ok && sampleToken(clearWinner.data(), 128256, cold, s) == g;
    check(ok, "near-zero temperature equals greedy");
  }
  {
    // Empirical distribution at temperature 1 against the softmax.
    std::vector<float> small = {1.0f, 0.5f, -0.3f, 2.0f, 0.1f, -1.0f, 0.7f, 1.5f};
    const int n = int(small.size()), draws = 20000;
    std::vector<double> prob(static_cast<size_t>(n));
    double total = 0;
    for (int i = 0; i < n; i++) total += (prob[size_t(i)] = std::exp(double(small[size_t(i)])));
    std::vector<int> counts(static_cast<size_t>(n));
    uint64_t s = 2024;
    for (int i = 0; i < draws; i++) counts[size_t(sampleToken(small.data(), n, warm, s))]++;
    double worst = 0;
    for (int i = 0; i < n; i++)
      worst = std::max(worst, std::fabs(counts[size_t(i)] / double(draws) - prob[size_t(i)] / total));
    check(worst < 0.015, "sampling matches softmax (max abs freq diff " + std::to_string(worst) + ")");

    // Temperature 2 flattens: compare against softmax(logits / 2).
    SamplingParams t2 = warm;
    t2.temperature = 2.f;
    total = 0;
    for (int i = 0; i < n; i++) total += (prob[size_t(i)] = std::exp(double(small[size_t(i)]) / 2));
    std::fill(counts.begin(), counts.end(), 0);
    for (int i = 0; i < draws; i++) counts[size_t(sampleToken(small.data(), n, t2, s))]++;
    worst = 0;
    for (int i = 0; i < n; i++)
      worst = std::max(worst, std::fabs(counts[size_t(i)] / double(draws) - prob[size_t(i)] / total));
    check(worst < 0.015, "sampling at temperature 2 (max abs freq diff " + std::to_string(worst) + ")");
  }
  {
    // probs 0.5, 0.3, 0.15, 0.05: topP 0.7 keeps ids 0 and 1 in ratio 5:3; topK 3 drops id 3.
    std::vector<float> l = {float(std::log(0.5)), float(std::log(0.3)), float(std::log(0.15)), float(std::log(0.05))};
    SamplingParams nucleus = warm;
    nucleus.topP = 0.7f;
    std::vector<int> counts(4);
    uint64_t s = 5;
    for (int i = 0; i < 20000; i++) counts[size_t(sampleToken(l.data(), 4, nucleus, s))]++;
    check(counts[2] == 0 && counts[3] == 0 && std::fabs(counts[0] / 20000.0 - 0.625) < 0.015,
          "topP nucleus keeps the right set, renormalised");
    SamplingParams topk = warm;
    topk.topK = 3;
    std::fill(counts.begin(), counts.end(), 0);
    for (int i = 0; i < 20000; i++) counts[size_t(sampleToken(l.data(), 4, topk, s))]++;
    check(counts[3] == 0 && std::fabs(counts[0] / 20000.0 - 0.5 / 0.95) < 0.015, "topK keeps the k best, renormalised");
  }
  {
    std::vector<float> bad = {NAN, NAN, NAN};
    uint64_t s = 1;
    check(sampleToken(bad.data(), 3, warm, s) == 0 && sampleToken(bad.data(), 3, greedy, s) == 0,
          "all-NaN logits give 0");
    std::vector<float> ninf = {-INFINITY, -INFINITY};
    check(sampleToken(ninf.data(), 2, warm, s) == 0, "all -inf logits give 0");
    std::vector<float> mixed = {NAN, -INFINITY, 0.5f, NAN};
    bool ok = true;
    for (int i = 0; i < 100; i++) ok = ok && sampleToken(mixed.data(), 4, warm, s) == 2;
    check(ok, "NaN and -inf are never drawn");
    std::vector<float> inf = {1.f, INFINITY, 3.f, INFINITY};
    ok = true;
    for (int i = 0; i < 100; i++) {
      int32_t t = sampleToken(inf.data(), 4, warm, s);
      ok = ok && (t == 1 || t == 3);
    }
    check(ok, "+inf logits take all the mass");
  }
  {
    // Speed at Llama-3 vocabulary size; reported, not asserted.
    SamplingParams k40 = warm;
    k40.topK = 40;
    k40.topP = 0.9f;
    SamplingParams pOnly = warm;
    pOnly.topP = 0.9f;
    uint64_t s = 3;
    auto time = [&](const SamplingParams& sp) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 20; i++) sampleToken(vocab128k.data(), 128256, sp, s);
      return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 20;
    };
    std::printf(
        "sampling 128k vocab, flat logits: greedy %.0f us, temp %.0f us, topK40+topP %.0f us, topP only %.0f us\n",
        time(greedy), time(warm), time(k40), time(pOnly));
    for (auto& v : vocab128k) v *= 3.f;  // peakier, closer to a trained model's logits
    std::printf("sampling 128k vocab, peaky logits: topP only %.0f us\n", time(pOnly));
  }
}

// ---- repetition penalties ------------------------------------------------------------------------

// The formulas in float64, written from their sources: transformers'
// RepetitionPenaltyLogitsProcessor (score < 0 ? score * r : score / r) and OpenAI's
// mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence.
static double refRepetition(double l, double r) { return l < 0 ? l * r : l / r; }
static double refOpenAi(double l, int c, double f, double p) { return l - c * f - (c > 0 ? p : 0.0); }

static void testPenalties() {
  // Hand-made logits: positive, negative, zero, large, tiny, and the infinities.
  const std::vector<float> base = {2.5f, -1.75f, 0.f, 31.f, 1e-3f, -7.125f, 4.f, -0.5f, INFINITY, -INFINITY};
  const int64_t V = int64_t(base.size());
  const std::vector<PenaltyToken> list = {{0, 1}, {1, 2}, {2, 1}, {3, 5},
                                          {4, 1}, {5, 3}, {8, 1}, {9, 2}};  // 6, 7 absent
  auto within = [](float got, double want) {
    if (std::isinf(want)) return got == float(want);
    return std::fabs(double(got) - want) <= 1e-6 * std::max(1.0, std::fabs(want));
  };
  struct Case {
    const char* what;
    float r, f, p;
  };
  for (const Case& k : {Case{"repetition 1.3", 1.3f, 0.f, 0.f}, Case{"repetition 0.8 (encourages)", 0.8f, 0.f, 0.f},
                        Case{"frequency 0.5", 1.f, 0.5f, 0.f}, Case{"frequency -0.25", 1.f, -0.25f, 0.f},
                        Case{"presence 0.75", 1.f, 0.f, 0.75f}, Case{"all three", 1.2f, 0.3f, 0.6f}}) {
    std::vector<float> l = base;
    applyPenalties(l.data(), V, list.data(), int64_t(list.size()), k.r, k.f, k.p);
    int bad = 0;
    std::vector<int> count(size_t(V), 0);
    for (auto& t : list) count[size_t(t.id)] = t.count;
    for (int64_t i = 0; i < V; i++) {
      const double b = double(base[size_t(i)]);
      const double want = count[size_t(i)] ? refOpenAi(refRepetition(b, k.r), count[size_t(i)], k.f, k.p) : b;
      if (!within(l[size_t(i)], want)) bad++;
    }
    check(bad == 0,
          std::string("penalties: ") + k.what + " matches the float64 reference (" + std::to_string(bad) + " wrong)");
  }
  {  // The two sign cases of the repetition penalty, by hand: 2.5 / 2 and -1.75 * 2; zero stays zero.
    std::vector<float> l = base;
    applyPenalties(l.data(), V, list.data(), 3, 2.f, 0.f, 0.f);
    check(l[0] == 1.25f && l[1] == -3.5f && l[2] == 0.f && l[3] == 31.f,
          "penalties: repetition divides positive, multiplies negative");
    l = base;
    applyPenalties(l.data(), V, list.data(), int64_t(list.size()), 1.f, 1.f, 0.f);
    check(l[1] == -1.75f - 2.f && l[3] == 31.f - 5.f && l[6] == 4.f,
          "penalties: frequency counts every occurrence, absent ids untouched");
    l = base;
    applyPenalties(l.data(), V, list.data(), int64_t(list.size()), 1.f, 0.f, 1.f);
    check(l[1] == -2.75f && l[3] == 30.f && l[7] == -0.5f, "penalties: presence once whatever the count");
  }
  {  // A greedy loop breaks: the repeated winner loses to the runner-up.
    std::vector<float> l = {1.f, 3.f, 2.9f};
    const PenaltyToken seen{1, 4};
    applyPenalties(l.data(), 3, &seen, 1, 1.1f, 0.f, 0.f);
    uint64_t st = 0;
    check(sampleToken(l.data(), 3, SamplingParams{}, st) == 2,
          "penalties: a penalised argmax gives way to the runner-up");
  }
}

// The window's counts, moved along incrementally, equal a fresh count of the window every step.
static void testPenaltyWindow() {
  std::mt19937 g(11);
  int bad = 0;
  for (int64_t window : {int64_t(0), int64_t(1), int64_t(4), int64_t(37)}) {
    PenaltyWindow w;
    std::vector<int32_t> ctx;
    for (int step = 0; step < 300; step++) {
      const int add = step % 17 == 0 ? 20 : 1;  // now and then a prompt-sized chunk
      for (int j = 0; j < add; j++) ctx.push_back(int32_t(g() % 9));
      if (step % 50 == 49) {  // a truncation, then new tokens where the old ones were
        ctx.resize(ctx.size() / 2);
        w.invalidate(int64_t(ctx.size()));
        ctx.push_back(int32_t(g() % 9));
      }
      w.advance(ctx, int64_t(ctx.size()), window);
      std::vector<PenaltyToken> got;
      w.appendTo(got);
      std::vector<int32_t> want(9, 0);
      const int64_t from = window > 0 ? std::max<int64_t>(0, int64_t(ctx.size()) - window) : 0;
      for (int64_t p = from; p < int64_t(ctx.size()); p++) want[size_t(ctx[size_t(p)])]++;
      std::vector<int32_t> have(9, 0);
      for (auto& t : got) have[size_t(t.id)] += t.count;
      bool distinct = true;
      for (size_t a = 0; a < got.size(); a++)
        for (size_t b = a + 1; b < got.size(); b++) distinct = distinct && got[a].id != got[b].id;
      for (auto& t : got) distinct = distinct && t.count >= 1;
      if (have != want || !distinct) bad++;
    }
  }
  check(bad == 0, "penalty window: incremental counts equal a recount (" + std::to_string(bad) + " steps wrong)");
}
// kernels_quant_test.cc: the Q8_0 / Q4_0 kernels.
void testQuantizedKernels(ThreadPool& pool1, ThreadPool& pool2, ThreadPool& pool3,
                          void (*check)(bool, const std::string&));
// kernels_kquant_test.cc: the Q4_K / Q6_K formats and kernels.
void testKQuantKernels(ThreadPool& pool1, ThreadPool& pool2, ThreadPool& pool3,
                       void (*check)(bool, const std::string&));

int main() {
  std::printf("kernel variant: %s\n", cpuKernelVariant());
  // Fixed pools: every worker takes part whatever the machine, so 2- and 3-way splits are tested.
  ThreadPool pool1(1), pool2(2, ThreadPool::Mode::Fixed), pool3(3, ThreadPool::Mode::Fixed);
  testConversions();
  testMatmul(pool1, pool2, pool3);
  testFusedVector(pool1);
  testFusedVector(pool2);
  testFusedVector(pool3);
  testRmsnorm(pool2);
  testRmsnorm(pool3);
  testRope(pool2);
  testSiluMul(pool2);
  testSiluMul(pool3);
  testAttention(pool1);
  testAttention(pool3);
  testSampling();
  testQuantizedKernels(pool1, pool2, pool3, check);
  testKQuantKernels(pool1, pool2, pool3, check);
  testPenalties();
  testPenaltyWindow();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
