// Per-op timings (see op_bench.h). Each op is warmed up, then timed in batches of calls between
// two sync()s (sync waits for the device, so the host clock brackets finished work), the batch
// grown until it lasts 20 ms; the median of five batches is reported. Weights smaller than
// 256 MB are rotated among several copies so repeated calls do not run from the GPU's L2 (60 MB
// on an H200). Inputs are random, never zero.
#include "op_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <vector>

#include "harness.h"
#include "json.h"

namespace parity {

namespace {

struct Shape {
  const char* name;
  int64_t hidden, inter, heads, kv, hd, vocab;
};

struct Entry {
  std::string model, op, detail;
  int64_t rows;
  double bytes, flops, seconds;
};

// Random bf16 bits in +-[2^-7, 1): never zero, never NaN.
std::vector<uint16_t> randomBf16(size_t n, uint64_t seed) {
  std::vector<uint16_t> v(n);
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& h : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    const uint16_t sign = uint16_t((s >> 20) & 1), exp = uint16_t(120 + (s >> 21) % 7),
                   mant = uint16_t((s >> 30) & 0x7f);
    h = uint16_t((sign << 15) | (exp << 7) | mant);
  }
  return v;
}

double seconds(const std::chrono::steady_clock::time_point& t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Median seconds per call of call(i), i counting calls (for rotation).
double timeCalls(dg::Ops& o, const std::function<void(int)>& call) {
  int i = 0;
  for (int w = 0; w < 3; w++) call(i++);
  o.sync();
  int n = 1;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < n; k++) call(i++);
    o.sync();
    if (seconds(t0) > 0.02 || n >= (1 << 16)) break;
    n *= 4;
  }
  std::vector<double> per;
  for (int rep = 0; rep < 5; rep++) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < n; k++) call(i++);
    o.sync();
    per.push_back(seconds(t0) / n);
  }
  std::sort(per.begin(), per.end());
  return per[2];
}

// Several device copies of one random bf16 weight, enough to exceed the cache.
struct Weights {
  std::vector<uint16_t> host;
  std::vector<dg::Weight> copies;
  Weights(dg::Ops& o, int64_t rows, int64_t cols, uint64_t seed) : host(randomBf16(size_t(rows * cols), seed)) {
    const double bytes = double(rows * cols) * 2;
    const int n = int(std::min(8.0, std::ceil((256.0 * (1 << 20)) / bytes)));
    for (int k = 0; k < n; k++) copies.push_back(o.prepareWeight(dg::Weight{host.data(), dg::DType::BF16, rows, cols}));
  }
  const dg::Weight& at(int i) const { return copies[size_t(i) % copies.size()]; }
};

}  // namespace

int runOpBench(dg::Ops& o, const std::string& label, const std::string& probeJson, const std::string& path,
               bool quick) {
  std::vector<Shape> shapes = {{"llama-3.2-1b", 2048, 8192, 32, 8, 64, 128256},
                               {"llama-3-8b", 4096, 14336, 32, 8, 128, 128256}};
  if (quick) shapes = {{"quick", 256, 512, 4, 2, 64, 1000}};
  std::vector<Entry> out;
  Rng rng(7);
  uint64_t seed = 1;
  auto record = [&](const Shape& s, const std::string& op, const std::string& detail, int64_t rows, double bytes,
                    double flops, double t) {
    out.push_back(Entry{s.name, op, detail, rows, bytes, flops, t});
    std::printf("%-13s %-22s %-28s rows %4lld  %9.2f us  %8.1f GB/s  %8.2f TFLOP/s\n", s.name, op.c_str(),
                detail.c_str(), static_cast<long long>(rows), t * 1e6, bytes / t / 1e9, flops / t / 1e12);
    std::fflush(stdout);
  };
  try {
    for (const Shape& s : shapes) {
      const int64_t qd = s.heads * s.hd, kvd = s.kv * s.hd;
      const int64_t maxRows = 256;
      DevBuf x = upload(o, rng.values(size_t(maxRows * std::max(s.inter, qd)))),
             y(o, size_t(maxRows * std::max(s.vocab, s.inter)) * 4), y2(o, size_t(maxRows * s.inter) * 4);
      auto gemv = [&](const char* op, int64_t N, int64_t K) {
        Weights W(o, N, K, seed++);
        const dg::RowSet one = dg::RowSet::dense(1);
        const double t = timeCalls(o, [&](int i) {
          o.matmul(y.as<float>(), N, x.as<float>(), K, one, W.at(i), nullptr, dg::Epilogue::store());
        });
        record(s, "matmul", std::string(op) + " " + std::to_string(N) + "x" + std::to_string(K), 1,
               double(N * K) * 2 + double(K + N) * 4, 2.0 * double(N * K), t);
      };
      gemv("q_proj", qd, s.hidden);
      gemv("o_proj", s.hidden, qd);
      gemv("down_proj", s.hidden, s.inter);
      gemv("lm_head", s.vocab, s.hidden);
      {
        Weights Wk(o, kvd, s.hidden, seed++), Wv(o, kvd, s.hidden, seed++);
        const dg::RowSet one = dg::RowSet::dense(1);
        const double t = timeCalls(o, [&](int i) {
          o.matmul2(y.as<float>(), kvd, y2.as<float>(), kvd, x.as<float>(), s.hidden, one, Wk.at(i), nullptr, Wv.at(i),
                    nullptr);
        });
        record(s, "matmul2", "k_proj+v_proj " + std::to_string(kvd) + "x" + std::to_string(s.hidden), 1,
               2.0 * double(kvd * s.hidden) * 2, 4.0 * double(kvd * s.hidden), t);
      }
      {
        Weights Wg(o, s.inter, s.hidden, seed++), Wu(o, s.inter, s.hidden, seed++);
        for (int64_t rows : {int64_t(1), int64_t(8), int64_t(32), int64_t(256)}) {
          const dg::RowSet rs = dg::RowSet::dense(rows);
          const double t = timeCalls(o, [&](int i) {
            o.matmulGateUp(y.as<float>(), s.inter, x.as<float>(), s.hidden, rs, Wg.at(i), nullptr, Wu.at(i), nullptr);
          });
          record(s, "matmulGateUp", "gate+up " + std::to_string(s.inter) + "x" + std::to_string(s.hidden), rows,
                 2.0 * double(s.inter * s.hidden) * 2 + double(rows * (s.hidden + s.inter)) * 4,
                 4.0 * double(rows * s.inter * s.hidden), t);
        }
      }
      {  // norms, routing and the step's small ops: launch-bound at batch 1
        DevBuf w = upload(o, rng.values(size_t(s.hidden)));
        const double t = timeCalls(o, [&](int) {
          o.rmsnorm(y.as<float>(), x.as<float>(), dg::RowSet::dense(1), s.hidden, w.as<float>(), 1e-5f);
        });
        record(s, "rmsnorm", "hidden " + std::to_string(s.hidden), 1, 3.0 * double(s.hidden) * 4,
               3.0 * double(s.hidden), t);
        DevBuf flags(o, 64), weight(o, 256), idx(o, 256), count(o, 4);
        const double t2 = timeCalls(o, [&](int) {
          o.routeThreshold(flags.as<uint8_t>(), flags.as<uint8_t>() + 32, weight.as<float>(), x.as<float>(), 1, 0.5f);
        });
        record(s, "routeThreshold", "", 1, 9, 4, t2);
        const double t3 = timeCalls(o, [&](int) {
          o.compact(flags.as<uint8_t>(), 1, idx.as<int32_t>(), count.as<int32_t>(), nullptr, nullptr);
        });
        record(s, "compact", "", 1, 9, 1, t3);
        std::vector<dg::SampleRow> sp(1);
        DevBuf params = upload(o, sp), tok(o, 4);
        const double t4 = timeCalls(o, [&](int) {
          o.sample(tok.as<int32_t>(), x.as<float>(), 1, std::min(s.vocab, maxRows * s.inter),
                   params.as<dg::SampleRow>(), nullptr);
        });
        record(s, "sample", "greedy, vocab " + std::to_string(s.vocab), 1, double(s.vocab) * 4, double(s.vocab), t4);
      }
      // Attention over bf16 caches: one sequence per row, every row at the end of its context.
      for (int64_t rows : {int64_t(1), int64_t(32)})
        for (int64_t ctx : {int64_t(512), int64_t(4096)}) {
          if (quick && ctx > 512) continue;
          if (rows == 32 && ctx > 1024 && s.hd > 64) continue;  // keep the cache under 2 GB
          const int64_t cap = ctx, per = 2 * cap * kvd;         // layers = 1
          const std::vector<uint16_t> kv = randomBf16(size_t(per), seed++);
          std::vector<DevBuf> caches;
          std::vector<dg::KvCacheRef> refs;
          for (int64_t r = 0; r < rows; r++) {
            caches.push_back(upload(o, kv));
            refs.push_back(dg::KvCacheRef{caches.back().get(), caches.back().as<uint16_t>() + cap * kvd, cap});
          }
          std::vector<int32_t> pos(size_t(rows), int32_t(ctx - 1)), seq(static_cast<size_t>(rows));
          for (int64_t r = 0; r < rows; r++) seq[size_t(r)] = int32_t(r);
          DevBuf table = upload(o, refs), dpos = upload(o, pos), dseq = upload(o, seq);
          const dg::StepRows step{rows, dpos.as<int32_t>(), dseq.as<int32_t>(), table.as<dg::KvCacheRef>()};
          dg::AttnShape a;
          a.nHeads = int(s.heads);
          a.nKv = int(s.kv);
          a.headDim = int(s.hd);
          a.kv = dg::DType::BF16;
          const double t = timeCalls(
              o, [&](int) { o.attention(y.as<float>(), x.as<float>(), dg::RowSet::dense(rows), step, 0, a); });
          record(s, "attention", "bf16 cache, context " + std::to_string(ctx), rows,
                 double(rows) * double(2 * ctx * kvd) * 2, double(rows) * 4.0 * double(ctx * qd), t);
        }
      {
        std::vector<int32_t> pos = {7}, seq = {0};
        const std::vector<uint16_t> kv = randomBf16(size_t(2 * 64 * kvd), seed++);
        DevBuf cache = upload(o, kv), dpos = upload(o, pos), dseq = upload(o, seq);
        std::vector<dg::KvCacheRef> refs = {dg::KvCacheRef{cache.get(), cache.as<uint16_t>() + 64 * kvd, 64}};
        DevBuf table = upload(o, refs), inv = upload(o, std::vector<float>(size_t(s.hd / 2), 0.01f));
        const dg::StepRows step{1, dpos.as<int32_t>(), dseq.as<int32_t>(), table.as<dg::KvCacheRef>()};
        dg::AttnShape a;
        a.nHeads = int(s.heads);
        a.nKv = int(s.kv);
        a.headDim = int(s.hd);
        a.kv = dg::DType::BF16;
        const double t =
            timeCalls(o, [&](int) { o.kvWriteRope(y.as<float>(), y2.as<float>(), step, 0, a, inv.as<float>()); });
        record(s, "kvWriteRope", "bf16 cache", 1, double(kvd) * (8 + 4), double(kvd) * 4, t);
      }
    }
  } catch (const std::exception& e) {
    std::printf("op bench failed: %s\n", e.what());
    std::ofstream(path) << "{\"backend\":" << dg::jsonQuote(label) << ",\"error\":" << dg::jsonQuote(e.what()) << "}\n";
    return 1;
  }
  std::ostringstream j;
  j << "{\"backend\":" << dg::jsonQuote(label) << ",\"probe\":" << probeJson
    << ",\"method\":\"median of 5 batches of calls between sync()s, "
    << "each batch at least 20 ms; weights under 256 MB rotated among copies\",\"ops\":[";
  for (size_t i = 0; i < out.size(); i++) {
    const Entry& e = out[i];
    char b[512];
    std::snprintf(b, sizeof b,
                  "%s{\"model\":\"%s\",\"op\":\"%s\",\"detail\":\"%s\",\"rows\":%lld,\"bytes\":%.0f,\"flops\":%.0f,"
                  "\"seconds\":%.9g}",
                  i ? "," : "", e.model.c_str(), e.op.c_str(), e.detail.c_str(), static_cast<long long>(e.rows),
                  e.bytes, e.flops, e.seconds);
    j << b;
  }
  j << "]}\n";
  std::ofstream(path) << j.str();
  return 0;
}

}  // namespace parity
