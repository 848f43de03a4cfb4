// Checks of the K-quant (Q4_K, Q6_K) formats and kernels, linked into kernels_test (kernels_test.cc
// calls testKQuantKernels; scripts/test-kernels.sh runs it once per kernel variant).
//  * Layout: bytes of blocks whose llama.cpp encoding can be worked out by hand (see each case),
//    and hand-made blocks decoded by dequantizeRow against a decoder written here from the spec
//    (ggml-common.h block_q4_K / block_q6_K, dequantize_row_q4_K / _q6_K).
//  * Round trip: dequantize(quantize(x)) within a step of each sub-block.
//  * matmul (decode and prefill), matmulMany (K-quants mixed, and mixed with Q8_0), gateUpVector:
//    against a float64 reference that decodes the weight blocks itself, on (a) the activations
//    quantized the way matmul_kquant.cc documents (256-wide blocks; agreement to f32 rounding) and
//    (b) the f32 activations, within the bound activation rounding allows.
//  * Widths that are not a multiple of 256 are refused with kErrUnsupported.
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
std::mt19937_64 krng(424242);

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(krng); }

double halfValue(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0) return s * std::ldexp(double(m), -24);
  return s * std::ldexp(1.0 + m / 1024.0, e - 15);
}
double halfAt(const unsigned char* p) { return halfValue(uint16_t(p[0] | (p[1] << 8))); }

// ---- a decoder written from the spec -------------------------------------------------------

// Q4_K sub-block j's 6-bit scale and min: j < 4 in the low 6 bits of bytes j and j + 4; j >= 4 low
// nibble / high nibble of byte j + 4, with the top 2 bits in the high 2 bits of bytes j - 4 / j.
void specScaleMin(const unsigned char* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 0x3f;
    m = s[j + 4] & 0x3f;
  } else {
    sc = (s[j + 4] & 0x0f) + 16 * (s[j - 4] >> 6);
    m = (s[j + 4] >> 4) + 16 * (s[j] >> 6);
  }
}

// Weight i (0..255) of a block, in float64.
double specWeight(DType t, const unsigned char* blk, int i) {
  if (t == DType::Q4_K) {
    const int j = i / 32, c = i / 64, l = i % 32;
    const unsigned char byte = blk[16 + 32 * c + l];
    const int q = (j % 2 == 0) ? (byte & 0x0f) : (byte >> 4);
    int sc, m;
    specScaleMin(blk + 4, j, sc, m);
    return halfAt(blk) * sc * q - halfAt(blk + 2) * m;
  }
  // Q6_K: half h = i / 128; within it quarter g = (i % 128) / 32 and l = i % 32. Low 4 bits: byte
  // ql[64h + l] (g = 0 low nibble, g = 2 high) or ql[64h + 32 + l] (g = 1 low, g = 3 high); high 2
  // bits: bits 2g..2g+1 of qh[32h + l]; scale: int8 scales[i / 16]; value d * scale * (q - 32).
  const int h = i / 128, g = (i % 128) / 32, l = i % 32;
  const unsigned char lowByte = blk[64 * h + (g % 2) * 32 + l];
  const int low = g < 2 ? (lowByte & 0x0f) : (lowByte >> 4);
  const int high = (blk[128 + 32 * h + l] >> (2 * g)) & 3;
  const int q = low + 16 * high;
  return halfAt(blk + 208) * int8_t(blk[192 + i / 16]) * (q - 32);
}

std::vector<double> decodeRows(DType t, const unsigned char* p, int64_t rows, int64_t k) {
  std::vector<double> v(static_cast<size_t>(rows * k));
  const size_t bb = blockBytes(t);
  for (int64_t o = 0; o < rows; o++)
    for (int64_t b = 0; b < k / 256; b++)
      for (int i = 0; i < 256; i++)
        v[size_t(o * k + b * 256 + i)] = specWeight(t, p + size_t(o * (k / 256) + b) * bb, i);
  return v;
}

// ---- layout -------------------------------------------------------------------------------

void testLayout(CheckFn check) {
  // Q4_K, x = i % 16 (each sub-block 0..15 twice): the fit is exact with scale 1, min 0 (error 0,
  // which no candidate grid beats), so every sub-block's 6-bit scale is 63 (its own over the largest,
  // times 63) and min 0; d = f16(1/63), dmin = 0; the codes are the values. Scales bytes: 0..3 hold
  // 63 | (63 >> 4) << 6 = 0xff, 4..7 the mins 0, 8..11 (63 & 15) | 0 = 0x0f.
  float x[256];
  for (int i = 0; i < 256; i++) x[i] = float(i % 16);
  unsigned char b4[144];
  quantizeRow(DType::Q4_K, x, b4, 256);
  const uint16_t d63 = f32ToF16(1.f / 63.f);
  bool ok = b4[0] == (d63 & 0xff) && b4[1] == (d63 >> 8) && b4[2] == 0 && b4[3] == 0;
  for (int j = 0; j < 4; j++) ok = ok && b4[4 + j] == 0xff && b4[8 + j] == 0x00 && b4[12 + j] == 0x0f;
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) ok = ok && b4[16 + 32 * c + l] == ((l % 16) | ((l % 16) << 4));
  check(ok, "Q4_K block layout: d, dmin, 6-bit scales (63) and mins (0), nibbles = weights 64c + l | 64c + 32 + l");
  // Shifted by -4: min 4 too, coded 63 against dmin = f16(4/63): all 12 scale bytes 0xff.
  for (int i = 0; i < 256; i++) x[i] = float(i % 16) - 4.f;
  quantizeRow(DType::Q4_K, x, b4, 256);
  const uint16_t m63 = f32ToF16(4.f / 63.f);
  ok = b4[2] == (m63 & 0xff) && b4[3] == (m63 >> 8);
  for (int j = 0; j < 12; j++) ok = ok && b4[4 + j] == 0xff;
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 32; l++) ok = ok && b4[16 + 32 * c + l] == ((l % 16) | ((l % 16) << 4));
  float back[256];
  dequantizeRow(DType::Q4_K, b4, back, 256);
  for (int i = 0; i < 256; i++) ok = ok && std::fabs(back[i] - x[i]) < 0.01f;
  check(ok, "Q4_K block with a min: every scale and min at 63, codes = x + 4, decodes back to x");

  // Q6_K, x = 1 everywhere: make_qx_quants codes the largest magnitude at -32 with scale -1/32 (no
  // other grid fits better: every one is exact), so the super-scale is -128 / -1/32 = 4096, d =
  // 1/4096 (f16 0x0c00), every int8 scale -128, every code 0 (value 0 - 32): ql, qh all zero.
  for (int i = 0; i < 256; i++) x[i] = 1.f;
  unsigned char b6[210];
  quantizeRow(DType::Q6_K, x, b6, 256);
  ok = b6[208] == 0x00 && b6[209] == 0x0c;
  for (int i = 0; i < 192; i++) ok = ok && b6[i] == 0;
  for (int i = 192; i < 208; i++) ok = ok && b6[i] == 0x80;
  dequantizeRow(DType::Q6_K, b6, back, 256);
  for (int i = 0; i < 256; i++) ok = ok && back[i] == 1.f;
  check(ok, "Q6_K block layout: ql, qh, int8 scales, f16 d; the largest magnitude coded at -32");

  // Hand-made blocks of random bytes: dequantizeRow equals the spec decoder above.
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    std::vector<unsigned char> blk(blockBytes(t) * 3);
    for (auto& c : blk) c = uint8_t(krng());
    for (int b = 0; b < 3; b++) {  // finite scales
      const uint16_t h = f32ToF16(uniform(-0.05f, 0.05f)), h2 = f32ToF16(uniform(0.f, 0.05f));
      unsigned char* p = blk.data() + size_t(b) * blockBytes(t);
      std::memcpy(t == DType::Q4_K ? p : p + 208, &h, 2);
      if (t == DType::Q4_K) std::memcpy(p + 2, &h2, 2);
    }
    std::vector<float> got(768);
    dequantizeRow(t, blk.data(), got.data(), 768);
    const std::vector<double> want = decodeRows(t, blk.data(), 1, 768);
    double worst = 0, range = 0;
    for (int i = 0; i < 768; i++) range = std::max(range, std::fabs(want[size_t(i)]));
    // Relative to the largest value: Q4_K's d sc q - dmin m may cancel, leaving f32 rounding alone.
    for (int i = 0; i < 768; i++) worst = std::max(worst, std::fabs(got[size_t(i)] - want[size_t(i)]) / range);
    check(worst < 1e-6, std::string(dtypeName(t)) + " dequantizeRow of random blocks = the spec decoder (rel " +
                            std::to_string(worst) + ")");
  }

  // Round trip on random values, judged by the spec decoder: within one step of the sub-block
  // (d * sc; a code may sit one step off where the 6-bit / int8 scale coding clamps it).
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    std::vector<float> v(4096);
    for (auto& e : v) e = uniform(-3.f, 3.f);
    std::vector<unsigned char> q(rowBytes(t, 4096));
    quantizeRow(t, v.data(), q.data(), 4096);
    const std::vector<double> r = decodeRows(t, q.data(), 1, 4096);
    double worst = 0, sq = 0;
    for (int b = 0; b < 16; b++) {
      const unsigned char* blk = q.data() + size_t(b) * blockBytes(t);
      for (int i = 0; i < 256; i++) {
        double step;
        if (t == DType::Q4_K) {
          int sc, m;
          specScaleMin(blk + 4, i / 32, sc, m);
          step = halfAt(blk) * sc;
        } else {
          step = std::fabs(halfAt(blk + 208) * int8_t(blk[192 + i / 16]));
        }
        const double e = std::fabs(r[size_t(b * 256 + i)] - v[size_t(b * 256 + i)]);
        worst = std::max(worst, e / step);
        sq += e * e;
      }
    }
    const double rms = std::sqrt(sq / 4096);
    // Uniform on [-3, 3]: a grid of 16 (Q4_K) or 64 (Q6_K) levels over the range has RMS error near
    // step / sqrt(12) = 6 / 15 / 3.46 = 0.115 and 6 / 63 / 3.46 = 0.028.
    const double rmsBound = t == DType::Q4_K ? 0.13 : 0.032;
    check(worst <= 1.0 && rms < rmsBound, std::string(dtypeName(t)) + " round trip within a step (worst " +
                                              std::to_string(worst) + " steps, RMS " + std::to_string(rms) + ")");
  }
}

// ---- kernels ------------------------------------------------------------------------------

// The activation rounding matmul_kquant.cc documents, per block of `block`: d = max|x| / 127,
// q = rint(x * 127 / max|x|).
void roundActivation(const float* x, int64_t k, int64_t block, std::vector<double>& deq,
                     std::vector<double>& halfStep) {
  deq.assign(size_t(k), 0.0);
  halfStep.assign(size_t(k), 0.0);
  for (int64_t b = 0; b < k / block; b++) {
    float amax = 0.f;
    for (int64_t j = 0; j < block; j++) amax = std::max(amax, std::fabs(x[b * block + j]));
    const float d = amax / 127.f, inv = amax != 0.f ? 127.f / amax : 0.f;
    for (int64_t j = 0; j < block; j++) {
      deq[size_t(b * block + j)] = double(d) * double(std::lrint(x[b * block + j] * inv));
      halfStep[size_t(b * block + j)] = d / 2.0;
    }
  }
}

struct KWeight {
  std::vector<unsigned char> bytes;
  std::vector<double> value;
  Weight w;
};

// Random f32 weights quantized with quantizeWeight, or (raw) random bytes with finite scales.
KWeight makeWeight(ThreadPool& pool, DType t, int64_t n, int64_t k, bool raw) {
  KWeight q;
  q.bytes.resize(size_t(n) * rowBytes(t, k) + 3);
  unsigned char* base = q.bytes.data() + 1;  // odd address: blocks carry no alignment
  if (raw) {
    const int64_t nb = n * (k / blockElements(t));
    for (size_t i = 0; i < size_t(n) * rowBytes(t, k); i++) base[i] = uint8_t(krng());
    for (int64_t b = 0; b < nb; b++) {
      unsigned char* blk = base + size_t(b) * blockBytes(t);
      const uint16_t h = f32ToF16(uniform(0.001f, 0.02f) * ((krng() & 1) ? 1.f : -1.f));
      const uint16_t h2 = f32ToF16(uniform(0.f, 0.02f));
      if (t == DType::Q4_K) {
        std::memcpy(blk, &h, 2);
        std::memcpy(blk + 2, &h2, 2);
      } else if (t == DType::Q6_K) {
        std::memcpy(blk + 208, &h, 2);
      } else {  // Q8_0
        std::memcpy(blk, &h, 2);
      }
    }
  } else {
    std::vector<float> src(static_cast<size_t>(n * k));
    for (auto& v : src) v = uniform(-1.f, 1.f);
    quantizeWeight(pool, Weight{src.data(), DType::F32, n, k}, t, base);
  }
  if (isKQuant(t)) {
    q.value = decodeRows(t, base, n, k);
  } else {  // Q8_0, for the mixed job list
    q.value.resize(size_t(n * k));
    for (int64_t i = 0; i < n * k; i++) {
      const unsigned char* blk = base + size_t(i / 32) * 34;
      q.value[size_t(i)] = halfAt(blk) * int8_t(blk[2 + i % 32]);
    }
  }
  q.w = Weight{base, t, n, k};
  return q;
}

struct Errors {
  double exact = 0, vsFloat = 0;
};

void judgeRow(const float* x, int64_t k, const KWeight& W, const float* out, const float* bias, const float* prior,
              Errors& e) {
  std::vector<double> xq, halfStep;
  roundActivation(x, k, isKQuant(W.w.dtype) ? 256 : 32, xq, halfStep);
  for (int64_t o = 0; o < W.w.rows; o++) {
    double a = bias ? bias[o] : 0.0, scale = std::fabs(a), b = a, bound = 0;
    if (prior) a += prior[o], b += prior[o], scale += std::fabs(prior[o]);
    for (int64_t i = 0; i < k; i++) {
      const double wi = W.value[size_t(o * k + i)];
      a += wi * xq[size_t(i)];
      scale += std::fabs(wi * xq[size_t(i)]);
      b += wi * x[i];
      bound += std::fabs(wi) * halfStep[size_t(i)];
    }
    const double ea = std::fabs(double(out[o]) - a) / (scale > 0 ? scale : 1);
    const double eb = std::fabs(double(out[o]) - b) / (bound + 1e-6 * scale + 1e-30);
    e.exact = std::isnan(ea) ? INFINITY : std::max(e.exact, ea);
    e.vsFloat = std::isnan(eb) ? INFINITY : std::max(e.vsFloat, eb);
  }
}

Errors worstSeen;

void report(CheckFn check, const std::string& what, const Errors& e) {
  worstSeen.exact = std::max(worstSeen.exact, e.exact);
  worstSeen.vsFloat = std::max(worstSeen.vsFloat, e.vsFloat);
  char buf[300];
  std::snprintf(buf, sizeof buf, "%s (rel err vs quantized-x ref %.2e, err / activation bound %.3f)", what.c_str(),
                e.exact, e.vsFloat);
  check(e.exact <= 1e-5 && e.vsFloat <= 1.0, buf);
}

void testMatmulCase(CheckFn check, ThreadPool& pool, DType t, int64_t rows, int64_t k, int64_t n, bool bias,
                    bool accumulate, bool raw) {
  const KWeight q = makeWeight(pool, t, n, k, raw);
  const int64_t ldx = k + 3, ldo = n + 2;
  std::vector<float> x(static_cast<size_t>(rows * ldx)), b(static_cast<size_t>(n)),
      prior(static_cast<size_t>(rows * ldo));
  for (auto& v : x) v = uniform(-2.f, 2.f);
  for (auto& v : b) v = uniform(-1.f, 1.f);
  for (auto& v : prior) v = uniform(-1.f, 1.f);
  std::vector<float> out = accumulate ? prior : std::vector<float>(static_cast<size_t>(rows * ldo), 1234.5f);
  matmul(pool, out.data(), ldo, x.data(), ldx, rows, q.w, bias ? b.data() : nullptr, accumulate);
  Errors e;
  bool padding = true;
  for (int64_t r = 0; r < rows; r++) {
    judgeRow(x.data() + r * ldx, k, q, out.data() + r * ldo, bias ? b.data() : nullptr,
             accumulate ? prior.data() + r * ldo : nullptr, e);
    for (int64_t o = n; o < ldo; o++)
      padding = padding && out[size_t(r * ldo + o)] == (accumulate ? prior[size_t(r * ldo + o)] : 1234.5f);
  }
  char name[200];
  std::snprintf(name, sizeof name, "matmul %s%s rows=%lld k=%lld n=%lld bias=%d acc=%d threads=%d", dtypeName(t),
                raw ? " (raw codes)" : "", (long long)rows, (long long)k, (long long)n, int(bias), int(accumulate),
                pool.size());
  check(padding, std::string(name) + ": padding untouched");
  report(check, name, e);
}

void testFused(CheckFn check, ThreadPool& pool) {
  const int64_t k = 768;
  // A Q4_K_M attention: q and k in Q4_K, v in Q6_K (one activation quantization for all three).
  const KWeight a = makeWeight(pool, DType::Q4_K, 70, k, false), b = makeWeight(pool, DType::Q4_K, 33, k, true),
                c = makeWeight(pool, DType::Q6_K, 5, k, false);
  std::vector<float> x(static_cast<size_t>(k)), bias(70);
  for (auto& v : x) v = uniform(-1.f, 1.f);
  for (auto& v : bias) v = uniform(-1.f, 1.f);
  std::vector<float> o1(70), o2(33), o3(5, 0.5f);
  const GemvJob jobs[3] = {
      {o1.data(), &a.w, bias.data(), false}, {o2.data(), &b.w, nullptr, false}, {o3.data(), &c.w, nullptr, true}};
  matmulMany(pool, x.data(), jobs, 3);
  Errors e;
  const std::vector<float> half(5, 0.5f);
  judgeRow(x.data(), k, a, o1.data(), bias.data(), nullptr, e);
  judgeRow(x.data(), k, b, o2.data(), nullptr, nullptr, e);
  judgeRow(x.data(), k, c, o3.data(), nullptr, half.data(), e);
  report(check, "matmulMany Q4_K+Q4_K+Q6_K threads=" + std::to_string(pool.size()), e);

  // A Q6_K job beside a Q8_0 one (a K-quant model's Q8_0 fallback): job by job, each its own rounding.
  const KWeight q8 = makeWeight(pool, DType::Q8_0, 9, k, false);
  std::vector<float> p1(9), p2(5);
  const GemvJob mixed[2] = {{p1.data(), &q8.w, nullptr, false}, {p2.data(), &c.w, nullptr, false}};
  matmulMany(pool, x.data(), mixed, 2);
  Errors em;
  judgeRow(x.data(), k, q8, p1.data(), nullptr, nullptr, em);
  judgeRow(x.data(), k, c, p2.data(), nullptr, nullptr, em);
  report(check, "matmulMany Q8_0+Q6_K threads=" + std::to_string(pool.size()), em);

  // gateUpVector with a Q4_K gate and a Q6_K up: silu(g) * u.
  const int64_t m = 301, d = 1024;
  const KWeight g = makeWeight(pool, DType::Q4_K, m, d, false), u = makeWeight(pool, DType::Q6_K, m, d, false);
  std::vector<float> xv(static_cast<size_t>(d)), out(static_cast<size_t>(m)), gRef(static_cast<size_t>(m)),
      uRef(static_cast<size_t>(m)), gBias(static_cast<size_t>(m));
  for (auto& v : xv) v = uniform(-1.f, 1.f);
  for (auto& v : gBias) v = uniform(-1.f, 1.f);
  gateUpVector(pool, out.data(), xv.data(), g.w, gBias.data(), u.w, nullptr);
  matmul(pool, gRef.data(), m, xv.data(), d, 1, g.w, gBias.data(), false);
  matmul(pool, uRef.data(), m, xv.data(), d, 1, u.w, nullptr, false);
  Errors eg, eu;
  judgeRow(xv.data(), d, g, gRef.data(), gBias.data(), nullptr, eg);
  judgeRow(xv.data(), d, u, uRef.data(), nullptr, nullptr, eu);
  double worst = 0;
  for (int64_t o = 0; o < m; o++) {
    const double gv = gRef[size_t(o)], want = gv / (1 + std::exp(-gv)) * uRef[size_t(o)];
    worst = std::max(worst, std::fabs(out[size_t(o)] - want) / (std::fabs(want) + 1e-3));
  }
  report(check, "gateUpVector gate Q4_K threads=" + std::to_string(pool.size()), eg);
  report(check, "gateUpVector up Q6_K threads=" + std::to_string(pool.size()), eu);
  check(worst <= 1e-4, "gateUpVector Q4_K/Q6_K = silu(matmul) * matmul (rel " + std::to_string(worst) + ")");
}

void testRefusals(CheckFn check, ThreadPool& pool) {
  std::vector<unsigned char> bytes(144 * 8);
  const Weight w{bytes.data(), DType::Q4_K, 4, 288};  // 288 columns: not whole super-blocks
  std::vector<float> x(288), out(4);
  try {
    matmul(pool, out.data(), 4, x.data(), 288, 1, w, nullptr, false);
    check(false, "Q4_K matmul with 288 columns is refused");
  } catch (const Error& e) {
    check(e.code == kErrUnsupported && std::string(e.what()).find("multiple of 256") != std::string::npos,
          std::string("Q4_K matmul with 288 columns is refused: ") + e.what());
  }
}

}  // namespace

void testKQuantKernels(ThreadPool& pool1, ThreadPool& pool2, ThreadPool& pool3, CheckFn check) {
  testLayout(check);
  struct Shape {
    int64_t rows, k, n;
  };
  // n not a multiple of 4 (leftover rows), k from one super-block up; rows > 1 is prefill.
  const Shape shapes[] = {{1, 256, 1},   {1, 512, 7},   {2, 768, 5},    {1, 1024, 257},
                          {3, 1280, 33}, {5, 4352, 13}, {17, 512, 130}, {1, 2816, 1023}};
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    int i = 0;
    for (const Shape& s : shapes) {
      ThreadPool& pool = i % 3 == 0 ? pool1 : i % 3 == 1 ? pool2 : pool3;
      testMatmulCase(check, pool, t, s.rows, s.k, s.n, i % 2 == 0, false, false);
      testMatmulCase(check, pool, t, s.rows, s.k, s.n, i % 2 == 1, true, i % 4 == 1);
      i++;
    }
  }
  testFused(check, pool2);
  testFused(check, pool3);
  testRefusals(check, pool1);
  std::printf("K-quant matmuls: worst rel err vs quantized-x reference %.2e, worst err / activation bound %.3f\n",
              worstSeen.exact, worstSeen.vsFloat);
}
