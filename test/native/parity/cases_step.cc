// Cases for memory, routing, compaction and sampling: the ops around a step whose results are
// exact (bits, flags, indices, tokens), so both backends must agree with the reference exactly.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "harness.h"
#include "reference.h"

namespace parity {

namespace {
const int64_t kRows[] = {0, 1, 2, 3, 5, 8, 33, 257};
}

void runMemoryCases(Ctx& c) {
  for (size_t bytes : {size_t(1), size_t(3), size_t(64), size_t(1000), size_t(1) << 20, (size_t(3) << 20) + 7}) {
    const size_t off = bytes % 5;  // odd offsets inside the buffers
    std::vector<unsigned char> host(bytes), init(bytes + 16);
    for (auto& b : host) b = static_cast<unsigned char>(c.rng.next());
    for (auto& b : init) b = static_cast<unsigned char>(c.rng.next());
    std::vector<unsigned char> want = init;
    std::copy(host.begin(), host.end(), want.begin() + long(off));
    std::vector<uint8_t> all(init.size(), 1);
    const std::string what =
        "upload, copy, download of " + std::to_string(bytes) + " bytes at offset " + std::to_string(off);
    onBoth(c, "memory", what, [&](int s) {
      Ops& o = *c.side[s].ops;
      DevBuf a = upload(o, init), b = upload(o, init);
      a.put(host.data(), bytes, off);                         // upload into a at off
      o.copy(b.as<char>() + off, a.as<char>() + off, bytes);  // a -> b, same place
      std::vector<unsigned char> back(bytes);
      o.download(back.data(), b.as<char>() + off, bytes);
      o.sync();
      compareExact(c, s, "memory", what + " (whole buffer)", b.fetch<unsigned char>(init.size()), init, want, all);
      std::vector<uint8_t> some(bytes, 1);
      compareExact(c, s, "memory", what + " (download at the offset)", back, host, host, some);
    });
    c.endCase();
  }
}

void runRoutingCases(Ctx& c) {
  for (int64_t rows : kRows)
    for (float threshold : {0.5f, 0.3f, 0.f, 1.f}) {
      std::vector<float> logits(static_cast<size_t>(rows));
      for (auto& l : logits) {
        // Keep every decision clear of the threshold by more than any f32 sigmoid error.
        do l = c.rng.normal() * 3.f;
        while (std::fabs(ref::sigmoid(double(l)) - double(threshold)) < 1e-4);
      }
      const size_t n = size_t(rows) + 8;  // guard elements after the rows
      const std::vector<uint8_t> initFlags(n, kPoisonU8);
      const std::vector<float> initW(n, poisonF32());
      std::vector<uint8_t> wantFlags = initFlags, written(n, 0);
      std::vector<double> wantW(n, 0);
      for (int64_t r = 0; r < rows; r++) {
        wantW[size_t(r)] = ref::sigmoid(double(logits[size_t(r)]));
        wantFlags[size_t(r)] = wantW[size_t(r)] > double(threshold) ? 1 : 0;
        written[size_t(r)] = 1;
      }
      const std::string what =
          "routeThreshold rows " + std::to_string(rows) + " threshold " + std::to_string(threshold);
      onBoth(c, "routeThreshold", what, [&](int s) {
        Ops& o = *c.side[s].ops;
        DevBuf a = upload(o, initFlags), m = upload(o, initFlags), w = upload(o, initW), l = upload(o, logits);
        o.routeThreshold(a.as<uint8_t>(), m.as<uint8_t>(), w.as<float>(), l.as<float>(), rows, threshold);
        compareExact(c, s, "routeThreshold", what + " runAttn", a.fetch<uint8_t>(n), initFlags, wantFlags, written);
        compareExact(c, s, "routeThreshold", what + " runMlp", m.fetch<uint8_t>(n), initFlags, wantFlags, written);
        compareF32(c, s, "routeThreshold", what + " weight", w.fetch<float>(n), initW, wantW, written, 1,
                   Tol::kActivation);
      });
      c.endCase();
    }
  for (int64_t rows : kRows) {
    std::vector<float> logits(size_t(2 * rows));
    for (auto& l : logits) l = c.rng.normal();
    for (int64_t r = 0; r < rows; r += 4) logits[size_t(2 * r + 1)] = logits[size_t(2 * r)];  // ties skip
    const size_t n = size_t(rows) + 8;
    const std::vector<uint8_t> init(n, kPoisonU8);
    std::vector<uint8_t> want = init, written(n, 0);
    for (int64_t r = 0; r < rows; r++) {
      want[size_t(r)] = logits[size_t(2 * r + 1)] > logits[size_t(2 * r)] ? 1 : 0;
      written[size_t(r)] = 1;
    }
    const std::string what = "routeArgmax rows " + std::to_string(rows);
    onBoth(c, "routeArgmax", what, [&](int s) {
      Ops& o = *c.side[s].ops;
      DevBuf run = upload(o, init), l = upload(o, logits);
      o.routeArgmax(run.as<uint8_t>(), l.as<float>(), rows);
      compareExact(c, s, "routeArgmax", what, run.fetch<uint8_t>(n), init, want, written);
    });
    c.endCase();
  }
}

void runCompactCases(Ctx& c) {
  for (int64_t rows : kRows)
    for (double density : {0.0, 0.3, 0.7, 1.0})
      for (int withSkip = 0; withSkip < 2; withSkip++) {
        std::vector<uint8_t> flags(static_cast<size_t>(rows));
        for (auto& f : flags) f = c.rng.unit() < density ? uint8_t(1 + c.rng.below(255)) : 0;  // any non-zero runs
        const size_t n = size_t(rows) + 4;
        const std::vector<int32_t> init(n, kPoisonI32), initCount(1, kPoisonI32);
        std::vector<int32_t> wantRun = init, wantSkip = init;
        std::vector<uint8_t> wroteRun(n, 0), wroteSkip(n, 0), one(1, 1);
        int32_t nr = 0, ns = 0;
        for (int64_t r = 0; r < rows; r++) {
          if (flags[size_t(r)])
            wroteRun[size_t(nr)] = 1, wantRun[size_t(nr++)] = int32_t(r);
          else
            wroteSkip[size_t(ns)] = 1, wantSkip[size_t(ns++)] = int32_t(r);
        }
        std::ostringstream what;
        what << "compact rows " << rows << " density " << density << (withSkip ? " with skip list" : "");
        onBoth(c, "compact", what.str(), [&](int s) {
          Ops& o = *c.side[s].ops;
          DevBuf f = upload(o, flags), ri = upload(o, init), rc = upload(o, initCount), si = upload(o, init),
                 sc = upload(o, initCount);
          o.compact(f.as<uint8_t>(), rows, ri.as<int32_t>(), rc.as<int32_t>(), withSkip ? si.as<int32_t>() : nullptr,
                    withSkip ? sc.as<int32_t>() : nullptr);
          compareExact(c, s, "compact", what.str() + " runIdx", ri.fetch<int32_t>(n), init, wantRun, wroteRun);
          compareExact(c, s, "compact", what.str() + " runCount", rc.fetch<int32_t>(1), initCount,
                       std::vector<int32_t>{nr}, one);
          if (withSkip) {
            compareExact(c, s, "compact", what.str() + " skipIdx", si.fetch<int32_t>(n), init, wantSkip, wroteSkip);
            compareExact(c, s, "compact", what.str() + " skipCount", sc.fetch<int32_t>(1), initCount,
                         std::vector<int32_t>{ns}, one);
          }
        });
        c.endCase();
      }
}

void runSampleCases(Ctx& c) {
  int caseNo = 0;
  for (int64_t rows : {int64_t(1), int64_t(2), int64_t(5), int64_t(8), int64_t(33)})
    for (int64_t vocab : {int64_t(7), int64_t(320), int64_t(50000)}) {
      caseNo++;
      if (c.quick && (caseNo % 3)) continue;
      std::vector<float> logits(size_t(rows * vocab));
      std::vector<dg::SampleRow> params(static_cast<size_t>(rows));
      std::vector<dg::PenaltyToken> penalties;
      for (int64_t r = 0; r < rows; r++) {
        float* l = logits.data() + r * vocab;
        for (int64_t i = 0; i < vocab; i++) l[i] = c.rng.normal() * 3.f;
        dg::SampleRow& p = params[size_t(r)];
        p.rng = c.rng.next();
        p.draw = (r % 5 == 4) ? 0 : 1;  // rows that need no token draw nothing (their penalties still apply)
        switch (r % 4) {
          case 0:  // greedy, with a tie for the maximum (the lower id wins) and a NaN that never wins
            p.temperature = 0.f;
            l[vocab / 2] = l[vocab - 1] = 100.f;
            l[0] = NAN;
            break;
          case 1:
            p.temperature = 0.7f;
            p.topK = int32_t(c.rng.pick(std::vector<int64_t>{0, 1, 5, 40}));
            break;
          case 2:
            p.temperature = 1.3f;
            p.topP = c.rng.pick(std::vector<float>{0.9f, 0.5f});
            l[1] = -INFINITY;
            break;
          default:
            p.temperature = 1.f;
            p.topK = 40;
            p.topP = 0.9f;
            l[vocab - 2] = NAN;
            break;
        }
        // Penalties on two rows in three: distinct ids with counts 1..4. A greedy row's list holds
        // its tied winner (vocab / 2), so the penalty decides its token.
        if (r % 3 != 2) {
          p.repetitionPenalty = c.rng.pick(std::vector<float>{1.f, 1.3f, 0.7f, 2.f});
          p.frequencyPenalty = c.rng.pick(std::vector<float>{0.f, 0.5f, -0.25f});
          p.presencePenalty = c.rng.pick(std::vector<float>{0.f, 0.75f, 1.5f});
          if (p.temperature == 0.f) p.repetitionPenalty = 1.5f, p.presencePenalty = 0.5f;
          p.penaltyStart = int32_t(penalties.size());
          const int64_t n = std::min<int64_t>(vocab - 1, 1 + int64_t(c.rng.next() % 40));
          std::vector<uint8_t> used(size_t(vocab), 0);
          if (p.temperature == 0.f) used[size_t(vocab / 2)] = 1, penalties.push_back({int32_t(vocab / 2), 2});
          while (int64_t(penalties.size()) - p.penaltyStart < n) {
            const int32_t id = int32_t(c.rng.next() % uint64_t(vocab));
            if (used[size_t(id)]) continue;
            used[size_t(id)] = 1;
            penalties.push_back({id, int32_t(1 + c.rng.next() % 4)});
          }
          p.penaltyCount = int32_t(penalties.size()) - p.penaltyStart;
        }
      }
      penalties.push_back({0, 1});  // never read: keeps the list non-empty for the upload
      std::vector<float> penalized = logits;
      for (int64_t r = 0; r < rows; r++)
        ref::penalize(penalized.data() + r * vocab, params[size_t(r)], penalties.data());
      std::vector<uint32_t> logitBits(logits.size()), wantBits(logits.size());
      std::memcpy(logitBits.data(), logits.data(), logits.size() * 4);
      std::memcpy(wantBits.data(), penalized.data(), logits.size() * 4);
      const std::vector<uint8_t> everyLogit(logits.size(), 1);
      const std::vector<int32_t> init(size_t(rows) + 2, -7);
      std::vector<int32_t> want = init;
      std::vector<uint8_t> written(init.size(), 0);
      std::vector<uint64_t> wantRng(static_cast<size_t>(rows)), initRng(static_cast<size_t>(rows));
      std::vector<uint8_t> allRows(size_t(rows), 1);
      for (int64_t r = 0; r < rows; r++) {
        uint64_t g = params[size_t(r)].rng;
        initRng[size_t(r)] = g;
        if (params[size_t(r)].draw) {
          want[size_t(r)] = ref::sample(penalized.data() + r * vocab, vocab, params[size_t(r)], g);
          written[size_t(r)] = 1;
        }
        wantRng[size_t(r)] = g;  // advanced by exactly one draw when sampled, unchanged otherwise
      }
      const std::string what = "sample rows " + std::to_string(rows) + " vocab " + std::to_string(vocab);
      onBoth(c, "sample", what, [&](int s) {
        Ops& o = *c.side[s].ops;
        DevBuf tok = upload(o, init), l = upload(o, logits), pr = upload(o, params), pen = upload(o, penalties);
        o.sample(tok.as<int32_t>(), l.as<float>(), rows, vocab, pr.as<dg::SampleRow>(), pen.as<dg::PenaltyToken>());
        compareExact(c, s, "sample", what + " tokens", tok.fetch<int32_t>(init.size()), init, want, written);
        // The penalties are applied in place, to every row with a list (drawing or not), bit for bit.
        compareExact(c, s, "sample", what + " penalised logits", l.fetch<uint32_t>(logits.size()), logitBits, wantBits,
                     everyLogit);
        const auto after = pr.fetch<dg::SampleRow>(size_t(rows));
        std::vector<uint64_t> gotRng(static_cast<size_t>(rows));
        for (int64_t r = 0; r < rows; r++) gotRng[size_t(r)] = after[size_t(r)].rng;
        compareExact(c, s, "sample", what + " generator state", gotRng, initRng, wantRng, allRows);
      });
      c.endCase();
    }
}

}  // namespace parity
