// Checks of the block-quantized (Q8_0, Q4_0) kernels, linked into kernels_test (kernels_test.cc
// calls testQuantizedKernels; scripts/test-kernels.sh runs it once per kernel variant).
//  * Layout: blocks built from values that quantize exactly have the bytes of llama.cpp's
//    block_q8_0 / block_q4_0 (ggml-common.h): f16 scale, then codes (Q4_0: byte j = code j low,
//    code j + 16 high).
//  * Round trip: dequantize(quantize(x)) is within the format's step of x.
//  * matmul, matmulMany, gateUpVector: against a float64 reference that decodes the weight blocks
//    itself, on (a) the activations quantized the way the kernel documents (agreement to f32
//    rounding: the integer path is exact) and (b) the f32 activations, within the bound that
//    activation rounding allows: sum_b d_x[b] / 2 * sum_j |w_j|.
//  * Q8_0x16, the CPU's repacked Q8_0 (tensor.h): the bytes of a repacked row follow the documented
//    chunk layout, with a last, partial chunk and the row's padding; it decodes to the Q8_0 row's
//    values; and every matmul case above runs again on repacked copies of the same Q8_0 weights,
//    judged against the same references (the values are the Q8_0 ones).
//  * Widths that are not a multiple of 32 are refused with kErrUnsupported.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "errors.h"
#include "kernels.h"
#include "tensor.h"
#include "threadpool.h"

using namespace dg;

namespace {

using CheckFn = void (*)(bool, const std::string&);
std::mt19937_64 qrng(987654);

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(qrng); }

// IEEE half by arithmetic (independent of the code under test).
double halfValue(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0) return s * std::ldexp(double(m), -24);
  return s * std::ldexp(1.0 + m / 1024.0, e - 15);
}

// The stored weight decoded from its bytes: value[o * k + i].
std::vector<double> decodeBlocks(DType t, const unsigned char* p, int64_t rows, int64_t k) {
  std::vector<double> v(size_t(rows * k));
  const size_t bb = blockBytes(t);
  for (int64_t o = 0; o < rows; o++)
    for (int64_t b = 0; b < k / 32; b++) {
      const unsigned char* blk = p + size_t(o * (k / 32) + b) * bb;
      const double d = halfValue(uint16_t(blk[0] | (blk[1] << 8)));
      for (int j = 0; j < 32; j++) {
        int q;
        if (t == DType::Q8_0)
          q = int8_t(blk[2 + j]);
        else
          q = (j < 16 ? blk[2 + j] & 0x0f : blk[2 + j - 16] >> 4) - 8;
        v[size_t(o * k + b * 32 + j)] = d * q;
      }
    }
  return v;
}

// The activation rounding matmul_quant.cc documents: per block d = max|x| / 127, q = rint(x * 127 / max|x|).
void quantizeActivation(const float* x, int64_t k, std::vector<double>& deq, std::vector<double>& halfStep) {
  deq.assign(size_t(k), 0.0);
  halfStep.assign(size_t(k / 32), 0.0);
  for (int64_t b = 0; b < k / 32; b++) {
    float amax = 0.f;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.f, inv = amax != 0.f ? 127.f / amax : 0.f;
    halfStep[size_t(b)] = d / 2.0;
    for (int j = 0; j < 32; j++) deq[size_t(b * 32 + j)] = double(d) * double(std::lrint(x[b * 32 + j] * inv));
  }
}

struct QuantWeight {
  std::vector<unsigned char> bytes, repacked;
  std::vector<double> value;
  Weight w;
};

// Quantizes random f32 weights with quantizeWeight (rawCodes: random bytes and scales instead,
// Q8_0 codes including -128, which the quantizer never writes but a file may hold).
// Q8_0x16: a Q8_0 weight made so, then repacked (at an odd address too); its values are the Q8_0 ones.
QuantWeight makeQuantWeight(ThreadPool& pool, DType t, int64_t n, int64_t k, bool rawCodes) {
  if (t == DType::Q8_0x16) {
    QuantWeight q = makeQuantWeight(pool, DType::Q8_0, n, k, rawCodes);
    q.repacked.resize(size_t(n) * rowBytes(t, k) + 3);
    repackWeight(pool, q.w, q.repacked.data() + 3);
    q.w = Weight{q.repacked.data() + 3, t, n, k};
    return q;
  }
  QuantWeight q;
  q.bytes.resize(size_t(n) * rowBytes(t, k) + 3);
  unsigned char* base = q.bytes.data() + 1;  // odd address: blocks carry no alignment
  if (rawCodes) {
    for (int64_t i = 0; i < n * (k / 32); i++) {
      unsigned char* blk = base + size_t(i) * blockBytes(t);
      const uint16_t h = f32ToF16(uniform(0.001f, 0.02f) * ((qrng() & 1) ? 1.f : -1.f));
      std::memcpy(blk, &h, 2);
      for (size_t j = 2; j < blockBytes(t); j++) blk[j] = uint8_t(qrng());
    }
  } else {
    std::vector<float> src(size_t(n * k));
    for (auto& v : src) v = uniform(-1.f, 1.f);
    const Weight f{src.data(), DType::F32, n, k};
    quantizeWeight(pool, f, t, base);
  }
  q.value = decodeBlocks(t, base, n, k);
  q.w = Weight{base, t, n, k};
  return q;
}

struct Errors {
  double exact = 0, vsFloat = 0;  // (a) relative to sum|terms|; (b) as a fraction of the bound
};

// Judges out[o] for one activation row against references (a) and (b).
void judgeRow(const float* x, int64_t k, const std::vector<double>& w, int64_t n, const float* out, const float* bias,
              const float* prior, Errors& e) {
  std::vector<double> xq, halfStep;
  quantizeActivation(x, k, xq, halfStep);
  for (int64_t o = 0; o < n; o++) {
    double a = bias ? bias[o] : 0.0, scale = std::fabs(a), b = a, bound = 0;
    if (prior) a += prior[o], b += prior[o], scale += std::fabs(prior[o]);
    for (int64_t i = 0; i < k; i++) {
      const double wi = w[size_t(o * k + i)];
      a += wi * xq[size_t(i)];
      scale += std::fabs(wi * xq[size_t(i)]);
      b += wi * x[i];
      bound += std::fabs(wi) * halfStep[size_t(i / 32)];
    }
    const double ea = std::fabs(double(out[o]) - a) / (scale > 0 ? scale : 1);
    const double eb = std::fabs(double(out[o]) - b) / (bound + 1e-6 * scale + 1e-30);
    e.exact = std::isnan(ea) ? INFINITY : std::max(e.exact, ea);
    e.vsFloat = std::isnan(eb) ? INFINITY : std::max(e.vsFloat, eb);
  }
}

Errors worstSeen;  // over every report, printed at the end

void report(CheckFn check, const std::string& what, const Errors& e) {
  worstSeen.exact = std::max(worstSeen.exact, e.exact);
  worstSeen.vsFloat = std::max(worstSeen.vsFloat, e.vsFloat);
  char buf[300];
  std::snprintf(buf, sizeof buf, "%s (rel err vs quantized-x ref %.2e, err / activation bound %.3f)", what.c_str(),
                e.exact, e.vsFloat);
  check(e.exact <= 1e-5 && e.vsFloat <= 1.0, buf);
}

void testLayout(CheckFn check) {
  // Values that quantize exactly (d = 1): the bytes are fully determined by the format.
  float x[32];
  for (int j = 0; j < 32; j++) x[j] = float((j * 37) % 255 - 127);
  x[5] = 127.f;
  unsigned char blk[34];
  quantizeRow(DType::Q8_0, x, blk, 32);
  bool ok = blk[0] == 0x00 && blk[1] == 0x3c;  // f16 1.0, little-endian
  for (int j = 0; j < 32; j++) ok = ok && int8_t(blk[2 + j]) == int(x[j]);
  check(ok, "Q8_0 block layout: f16 scale then 32 int8 codes");

  for (int j = 0; j < 32; j++) x[j] = float((j * 5) % 16 - 8);
  x[0] = -8.f;  // the largest magnitude is negative, so d = -8 / -8 = 1
  unsigned char b4[18];
  quantizeRow(DType::Q4_0, x, b4, 32);
  ok = b4[0] == 0x00 && b4[1] == 0x3c;
  for (int j = 0; j < 16; j++) ok = ok && b4[2 + j] == ((int(x[j]) + 8) | ((int(x[j + 16]) + 8) << 4));
  check(ok, "Q4_0 block layout: f16 scale then nibbles (low = weight j, high = weight j + 16), code = q + 8");
  float back[32];
  dequantizeRow(DType::Q4_0, b4, back, 32);
  ok = true;
  for (int j = 0; j < 32; j++) ok = ok && back[j] == x[j];
  check(ok, "Q4_0 dequantize of an exact block");

  // Q8_0x16: 33 blocks (3 chunks, the last holding one block) of random Q8_0 codes, repacked.
  {
    const int64_t k = 33 * 32;
    std::vector<unsigned char> src(rowBytes(DType::Q8_0, k)), dst(rowBytes(DType::Q8_0x16, k));
    for (auto& b : src) b = uint8_t(qrng());
    for (int64_t b = 0; b < 33; b++) src[size_t(b) * 34 + 1] = uint8_t(0x20 + b % 8);  // finite scales
    ThreadPool one(1, ThreadPool::Mode::Fixed);
    const Weight w{src.data(), DType::Q8_0, 1, k};
    repackWeight(one, w, dst.data());
    // 2 full chunks of 16 blocks and a last one of 1; 33 * 34 = 1122 bytes, padded to 1152.
    bool layout = dst.size() == 1152;
    for (int64_t b = 0; b < 33; b++) {
      const int64_t c = b / 16, i = b % 16, n = c < 2 ? 16 : 1;
      for (int h = 0; h < 2; h++) layout = layout && dst[size_t(32 * 33 + 2 * b + h)] == src[size_t(b) * 34 + h];
      for (int j = 0; j < 32; j++)
        layout = layout &&
                 dst[size_t(c * 512 + (j / 4) * 4 * n + 4 * i + j % 4)] == int8_t(src[size_t(b) * 34 + 2 + j]) + 128;
    }
    for (size_t p = 1122; p < dst.size(); p++) layout = layout && dst[p] == 0;
    check(layout,
          "Q8_0x16 layout: chunk c's group g holds code 4g + j of block i (+128) at 512c + 4ng + 4i + j "
          "(n blocks in the chunk), then the 33 scales, then zeros to a multiple of 64 bytes");
    std::vector<float> a(static_cast<size_t>(k)), b(static_cast<size_t>(k));
    dequantizeRow(DType::Q8_0, src.data(), a.data(), k);
    dequantizeRow(DType::Q8_0x16, dst.data(), b.data(), k);
    check(a == b, "Q8_0x16 decodes to the Q8_0 row's values");
    try {
      repackWeight(one, Weight{src.data(), DType::Q4_0, 1, k}, dst.data());
      check(false, "repackWeight refuses a Q4_0 weight");
    } catch (const Error& e) {
      check(e.code == kErrUnsupported, std::string("repackWeight refuses a Q4_0 weight: ") + e.what());
    }
  }

  // Round trip on random values: Q8_0 within half a step, Q4_0 within one step (the positive end is
  // clamped to code 15), each plus the f16 rounding of the scale.
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    std::vector<float> v(4096), r(4096);
    for (auto& e : v) e = uniform(-3.f, 3.f);
    std::vector<unsigned char> q(rowBytes(t, 4096));
    quantizeRow(t, v.data(), q.data(), 4096);
    dequantizeRow(t, q.data(), r.data(), 4096);
    double worst = 0;
    for (int b = 0; b < 128; b++) {
      const double d = halfValue(uint16_t(q[size_t(b) * blockBytes(t)] | (q[size_t(b) * blockBytes(t) + 1] << 8)));
      // Rounding to a code, plus the f16 rounding of the scale (relative 2^-11) times the largest code.
      const double step = std::fabs(d) * (t == DType::Q8_0 ? 0.5 + 127.0 / 2048 : 1.0 + 8.0 / 2048);
      for (int j = 0; j < 32; j++) worst = std::max(worst, std::fabs(r[b * 32 + j] - v[b * 32 + j]) / step);
    }
    check(worst <= 1.0,
          std::string(dtypeName(t)) + " round trip within its step (worst " + std::to_string(worst) + ")");
  }
}

void testMatmulCase(CheckFn check, ThreadPool& pool, DType t, int64_t rows, int64_t k, int64_t n, bool bias,
                    bool accumulate, bool rawCodes) {
  QuantWeight q = makeQuantWeight(pool, t, n, k, rawCodes);
  const int64_t ldx = k + 3, ldo = n + 2;
  std::vector<float> x(static_cast<size_t>(rows * ldx)), b(static_cast<size_t>(n)),
      prior(static_cast<size_t>(rows * ldo));
  for (auto& v : x) v = uniform(-2.f, 2.f);
  for (auto& v : b) v = uniform(-1.f, 1.f);
  for (auto& v : prior) v = uniform(-1.f, 1.f);
  std::vector<float> out = accumulate ? prior : std::vector<float>(size_t(rows * ldo), 1234.5f);
  matmul(pool, out.data(), ldo, x.data(), ldx, rows, q.w, bias ? b.data() : nullptr, accumulate);
  Errors e;
  bool padding = true;
  for (int64_t r = 0; r < rows; r++) {
    judgeRow(x.data() + r * ldx, k, q.value, n, out.data() + r * ldo, bias ? b.data() : nullptr,
             accumulate ? prior.data() + r * ldo : nullptr, e);
    for (int64_t o = n; o < ldo; o++)
      padding = padding && out[size_t(r * ldo + o)] == (accumulate ? prior[size_t(r * ldo + o)] : 1234.5f);
  }
  char name[200];
  std::snprintf(name, sizeof name, "matmul %s%s rows=%lld k=%lld n=%lld bias=%d acc=%d threads=%d", dtypeName(t),
                rawCodes ? " (raw codes)" : "", (long long)rows, (long long)k, (long long)n, int(bias), int(accumulate),
                pool.size());
  check(padding, std::string(name) + ": padding untouched");
  report(check, name, e);
}

void testFused(CheckFn check, ThreadPool& pool, DType t) {
  const int64_t k = 288, n1 = 70, n2 = 33, n3 = 5;
  QuantWeight a = makeQuantWeight(pool, t, n1, k, false), b = makeQuantWeight(pool, t, n2, k, false),
              c = makeQuantWeight(pool, t, n3, k, true);
  std::vector<float> x(static_cast<size_t>(k)), bias(static_cast<size_t>(n1));
  for (auto& v : x) v = uniform(-1.f, 1.f);
  for (auto& v : bias) v = uniform(-1.f, 1.f);
  std::vector<float> o1(static_cast<size_t>(n1)), o2(static_cast<size_t>(n2)), o3(static_cast<size_t>(n3), 0.5f);
  const GemvJob jobs[3] = {
      {o1.data(), &a.w, bias.data(), false}, {o2.data(), &b.w, nullptr, false}, {o3.data(), &c.w, nullptr, true}};
  matmulMany(pool, x.data(), jobs, 3);
  Errors e;
  const std::vector<float> half(size_t(n3), 0.5f);
  judgeRow(x.data(), k, a.value, n1, o1.data(), bias.data(), nullptr, e);
  judgeRow(x.data(), k, b.value, n2, o2.data(), nullptr, nullptr, e);
  judgeRow(x.data(), k, c.value, n3, o3.data(), nullptr, half.data(), e);
  report(check, std::string("matmulMany ") + dtypeName(t) + " threads=" + std::to_string(pool.size()), e);

  // gateUpVector: silu(g) * u, judged through references for g and u computed the same way.
  const int64_t m = 301, d = 1024;
  QuantWeight g = makeQuantWeight(pool, t, m, d, false), u = makeQuantWeight(pool, t, m, d, false);
  const size_t ms = size_t(m);
  std::vector<float> xv(static_cast<size_t>(d)), out(ms), gRef(ms), uRef(ms), gBias(ms);
  for (auto& v : xv) v = uniform(-1.f, 1.f);
  for (auto& v : gBias) v = uniform(-1.f, 1.f);
  gateUpVector(pool, out.data(), xv.data(), g.w, gBias.data(), u.w, nullptr);
  matmul(pool, gRef.data(), m, xv.data(), d, 1, g.w, gBias.data(), false);
  matmul(pool, uRef.data(), m, xv.data(), d, 1, u.w, nullptr, false);
  Errors eg, eu;
  judgeRow(xv.data(), d, g.value, m, gRef.data(), gBias.data(), nullptr, eg);
  judgeRow(xv.data(), d, u.value, m, uRef.data(), nullptr, nullptr, eu);
  double worst = 0;
  for (int64_t o = 0; o < m; o++) {
    const double gv = gRef[size_t(o)], want = gv / (1 + std::exp(-gv)) * uRef[size_t(o)];
    worst = std::max(worst, std::fabs(out[size_t(o)] - want) / (std::fabs(want) + 1e-3));
  }
  report(check, std::string("gateUpVector gate ") + dtypeName(t), eg);
  report(check, std::string("gateUpVector up ") + dtypeName(t), eu);
  check(worst <= 1e-4,
        std::string("gateUpVector ") + dtypeName(t) + " = silu(matmul) * matmul (rel " + std::to_string(worst) + ")");
}

void testRefusals(CheckFn check, ThreadPool& pool) {
  std::vector<unsigned char> bytes(34 * 8);
  const Weight w{bytes.data(), DType::Q8_0, 4, 48};  // 48 columns: not whole blocks
  std::vector<float> x(48), out(4);
  try {
    matmul(pool, out.data(), 4, x.data(), 48, 1, w, nullptr, false);
    check(false, "Q8_0 matmul with 48 columns is refused");
  } catch (const Error& e) {
    check(e.code == kErrUnsupported && std::string(e.what()).find("multiple of 32") != std::string::npos,
          std::string("Q8_0 matmul with 48 columns is refused: ") + e.what());
  }
}

}  // namespace

void testQuantizedKernels(ThreadPool& pool1, ThreadPool& pool2, ThreadPool& pool3, CheckFn check) {
  std::printf("quantized kernel variant: %s\n", quantKernelVariant());
  testLayout(check);
  struct Shape {
    int64_t rows, k, n;
  };
  // n not a multiple of 4 (leftover rows), k from one block up; rows > 1 is the prefill path.
  const Shape shapes[] = {{1, 32, 1},   {1, 64, 7},    {2, 96, 5},     {1, 1024, 257},
                          {3, 160, 33}, {5, 4128, 13}, {17, 512, 130}, {1, 2816, 1023}};
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q8_0x16}) {
    int i = 0;
    for (const Shape& s : shapes) {
      ThreadPool& pool = i % 3 == 0 ? pool1 : i % 3 == 1 ? pool2 : pool3;
      testMatmulCase(check, pool, t, s.rows, s.k, s.n, i % 2 == 0, false, false);
      testMatmulCase(check, pool, t, s.rows, s.k, s.n, i % 2 == 1, true, i % 4 == 1);
      i++;
    }
    testFused(check, pool2, t);
    testFused(check, pool3, t);
  }
  testRefusals(check, pool1);
  std::printf("the loader repacks Q8_0 for this variant: %s\n", cpuRepacksQ8_0() ? "yes" : "no");
  std::printf("quantized matmuls: worst rel err vs quantized-x reference %.2e, worst err / activation bound %.3f\n",
              worstSeen.exact, worstSeen.vsFloat);
}
