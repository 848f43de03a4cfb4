// Cases for the ops over positions and caches: kvWriteRope, ropeRows and attention, over head
// dimensions 24, 64, 80, 128, 256, GQA ratios 1, 4, 8, every cache dtype and sliding windows.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "harness.h"
#include "reference.h"
#include "tensor.h"

namespace parity {

namespace {

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};
const int kHeadDims[] = {24, 64, 80, 128, 256};

std::vector<float> invFreqFor(int headDim, double theta) {
  std::vector<float> f(size_t(headDim / 2));
  for (int i = 0; i < headDim / 2; i++) f[size_t(i)] = float(1.0 / std::pow(theta, 2.0 * i / headDim));
  return f;
}

// The KV caches of a step's sequences, as host images in the cache dtype.
struct Caches {
  int layers = 0;
  int64_t kvw = 0;
  DType t = DType::F32;
  std::vector<int64_t> cap;
  std::vector<std::vector<unsigned char>> k, v;
  size_t es() const { return dg::dtypeSize(t); }
  size_t index(size_t s, int l, int64_t p) const { return (size_t(l) * size_t(cap[s]) + size_t(p)) * size_t(kvw); }
  void add(int64_t capacity) {
    cap.push_back(capacity);
    const size_t n = size_t(layers) * size_t(capacity) * size_t(kvw);
    k.emplace_back(n * es());
    v.emplace_back(n * es());
    poison(k.back());
    poison(v.back());
  }
  void poison(std::vector<unsigned char>& b) const {
    const size_t n = b.size() / es();
    for (size_t i = 0; i < n; i++) {
      if (t == DType::F32) {
        const float p = poisonF32();
        std::memcpy(b.data() + 4 * i, &p, 4);
      } else {
        const uint16_t p = t == DType::BF16 ? kPoisonBF16 : kPoisonF16;
        std::memcpy(b.data() + 2 * i, &p, 2);
      }
    }
  }
  void set(std::vector<unsigned char>& b, size_t i, float f) const {
    if (t == DType::F32) {
      std::memcpy(b.data() + 4 * i, &f, 4);
    } else {
      const uint16_t h = toBits(f, t);
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
  }
};

// The caches and the step's rows in one backend's memory.
struct StepOnSide {
  std::vector<DevBuf> k, v;
  DevBuf table, pos, seq;
  dg::StepRows step;
};
StepOnSide place(Ops& o, const Caches& c, const std::vector<int32_t>& pos, const std::vector<int32_t>& seq) {
  StepOnSide s;
  std::vector<dg::KvCacheRef> refs;
  for (size_t i = 0; i < c.cap.size(); i++) {
    s.k.push_back(upload(o, c.k[i]));
    s.v.push_back(upload(o, c.v[i]));
    refs.push_back(dg::KvCacheRef{s.k.back().get(), s.v.back().get(), c.cap[i]});
  }
  s.table = upload(o, refs);
  s.pos = upload(o, pos);
  s.seq = upload(o, seq);
  s.step = dg::StepRows{int64_t(pos.size()), s.pos.as<int32_t>(), s.seq.as<int32_t>(), s.table.as<dg::KvCacheRef>()};
  return s;
}

// Widens a cache image to f32 (for the normwise comparison; the untouched check uses the bits).
std::vector<float> widenAll(const std::vector<unsigned char>& b, DType t) {
  std::vector<float> f(b.size() / dg::dtypeSize(t));
  for (size_t i = 0; i < f.size(); i++) f[i] = dg::loadElement(b.data(), t, i);
  return f;
}

template <class T>
std::vector<T> asWords(const std::vector<unsigned char>& b) {
  std::vector<T> w(b.size() / sizeof(T));
  std::memcpy(w.data(), b.data(), w.size() * sizeof(T));
  return w;
}

}  // namespace

void runKvWriteCases(Ctx& c) {
  int caseNo = 0;
  for (int hd : kHeadDims)
    for (int nKv : {1, 2, 8})
      for (DType t : kDtypes)
        for (int64_t rows : {int64_t(1), int64_t(3), int64_t(8), int64_t(33), int64_t(257)}) {
          caseNo++;
          if (c.quick && (caseNo % 7)) continue;
          if (rows == 257 && nKv * hd > 512 && t != DType::BF16) continue;  // the largest ones in one dtype
          Caches caches;
          caches.layers = 3;
          caches.kvw = int64_t(nKv) * hd;
          caches.t = t;
          const int nSeq = int(std::min<int64_t>(rows, 1 + c.rng.below(3)));
          // A ragged step: rows of several sequences interleaved, each sequence's rows at
          // consecutive positions from its own start.
          std::vector<int32_t> seq(static_cast<size_t>(rows)), pos(static_cast<size_t>(rows)),
              start(static_cast<size_t>(nSeq)), next(size_t(nSeq), 0);
          for (int s = 0; s < nSeq; s++) start[size_t(s)] = int32_t(c.rng.below(nKv * hd > 512 ? 100 : 500));
          for (int64_t r = 0; r < rows; r++) {
            seq[size_t(r)] = int32_t(r < nSeq ? r : c.rng.below(nSeq));
            pos[size_t(r)] = start[size_t(seq[size_t(r)])] + next[size_t(seq[size_t(r)])]++;
          }
          for (int s = 0; s < nSeq; s++) caches.add(start[size_t(s)] + next[size_t(s)] + c.rng.range(0, 9));
          const int layer = int(c.rng.below(3));
          const double theta = (caseNo % 2) ? 10000.0 : 500000.0;
          const std::vector<float> invFreq = invFreqFor(hd, theta);
          const std::vector<float> k = c.rng.values(size_t(rows * caches.kvw)),
                                   v = c.rng.values(size_t(rows * caches.kvw));
          // Expected: K rotated at the row's position (f64, before rounding), V rounded to nearest even.
          std::vector<std::vector<double>> refK(static_cast<size_t>(nSeq));
          std::vector<std::vector<uint8_t>> written(static_cast<size_t>(nSeq));
          std::vector<std::vector<unsigned char>> wantV = caches.v;
          for (int s = 0; s < nSeq; s++) {
            refK[size_t(s)].assign(caches.k[size_t(s)].size() / caches.es(), 0);
            written[size_t(s)].assign(refK[size_t(s)].size(), 0);
          }
          std::vector<double> row(size_t(caches.kvw));
          for (int64_t r = 0; r < rows; r++) {
            const size_t s = size_t(seq[size_t(r)]), at = caches.index(s, layer, pos[size_t(r)]);
            for (int64_t e = 0; e < caches.kvw; e++) row[size_t(e)] = k[size_t(r * caches.kvw + e)];
            ref::rope(row.data(), nKv, hd, invFreq.data(), pos[size_t(r)]);
            for (int64_t e = 0; e < caches.kvw; e++) {
              refK[s][at + size_t(e)] = row[size_t(e)];
              written[s][at + size_t(e)] = 1;
              caches.set(wantV[s], at + size_t(e), v[size_t(r * caches.kvw + e)]);
            }
          }
          std::ostringstream what;
          what << "kvWriteRope " << dtypeLabel(t) << " head_dim " << hd << " kv heads " << nKv << " rows " << rows
               << " sequences " << nSeq << " layer " << layer << "/3 theta " << theta;
          const std::string group = "kvWriteRope " + dtypeLabel(t);
          onBoth(c, group, what.str(), [&](int si) {
            Ops& o = *c.side[si].ops;
            StepOnSide st = place(o, caches, pos, seq);
            DevBuf dk = upload(o, k), dv = upload(o, v), df = upload(o, invFreq);
            dg::AttnShape a;
            a.nHeads = nKv * 4;  // the op reads only the K/V geometry; a GQA model's head count
            a.nKv = nKv;
            a.headDim = hd;
            a.kv = t;
            o.kvWriteRope(dk.as<float>(), dv.as<float>(), st.step, layer, a, df.as<float>());
            for (int s = 0; s < nSeq; s++) {
              const auto gotK = st.k[size_t(s)].fetch<unsigned char>(caches.k[size_t(s)].size());
              const auto gotV = st.v[size_t(s)].fetch<unsigned char>(caches.v[size_t(s)].size());
              const std::string w = what.str() + " sequence " + std::to_string(s);
              // K: the rotated values, rounded once to the cache dtype, and nothing else written.
              std::vector<float> gotKf = widenAll(gotK, t);
              compareF32(c, si, group, w + " K", gotKf, gotKf, refK[size_t(s)], written[size_t(s)], caches.kvw,
                         Tol::rounding(t) + Tol::kRope);
              // V: exactly the f32 values rounded to nearest even; the rest of the block untouched.
              if (t == DType::F32) {
                const auto g = asWords<uint32_t>(gotV), i0 = asWords<uint32_t>(caches.v[size_t(s)]),
                           want = asWords<uint32_t>(wantV[size_t(s)]);
                compareExact(c, si, group, w + " V (bits)", g, i0, want, written[size_t(s)]);
                const auto gk = asWords<uint32_t>(gotK), ik = asWords<uint32_t>(caches.k[size_t(s)]);
                compareExact(c, si, group, w + " K outside the written slots", gk, ik, gk, written[size_t(s)]);
              } else {
                const auto g = asWords<uint16_t>(gotV), i0 = asWords<uint16_t>(caches.v[size_t(s)]),
                           want = asWords<uint16_t>(wantV[size_t(s)]);
                compareExact(c, si, group, w + " V (bits)", g, i0, want, written[size_t(s)]);
                const auto gk = asWords<uint16_t>(gotK), ik = asWords<uint16_t>(caches.k[size_t(s)]);
                compareExact(c, si, group, w + " K outside the written slots", gk, ik, gk, written[size_t(s)]);
              }
            }
          });
          c.endCase();
        }
}

void runRopeCases(Ctx& c) {
  int caseNo = 0;
  const int64_t maxes[] = {0, 1, 2, 3, 5, 8, 33, 257};
  for (int hd : kHeadDims)
    for (int64_t max : maxes)
      for (const RowSpec& spec : rowVariants(c.rng, max, max + 3)) {
        caseNo++;
        if (c.quick && (caseNo % 5)) continue;
        if (max == 257 && (caseNo % 3)) continue;
        const int nHeads = c.rng.pick(std::vector<int>{1, 4, 8, 32});
        const int64_t qd = int64_t(nHeads) * hd, ldq = qd + ((caseNo % 2) ? 0 : 4);
        const int64_t stepRows = spec.idx.empty() ? max : max + 3;
        std::vector<int32_t> pos(static_cast<size_t>(stepRows)), seq(size_t(stepRows), 0);
        for (auto& p : pos) p = int32_t(c.rng.below(1024));
        const std::vector<float> invFreq = invFreqFor(hd, (caseNo % 2) ? 10000.0 : 500000.0);
        // q rows are compact (row i of the set), with a guard row after them.
        std::vector<float> q = c.rng.values(size_t((max + 1) * ldq));
        std::vector<double> ref(q.size());
        std::vector<uint8_t> written(q.size(), 0);
        std::vector<double> row(static_cast<size_t>(qd));
        for (int64_t i = 0; i < spec.count; i++) {
          for (int64_t e = 0; e < qd; e++) row[size_t(e)] = q[size_t(i * ldq + e)];
          ref::rope(row.data(), nHeads, hd, invFreq.data(), pos[size_t(spec.rowOf(i))]);
          for (int64_t e = 0; e < qd; e++) ref[size_t(i * ldq + e)] = row[size_t(e)], written[size_t(i * ldq + e)] = 1;
        }
        Caches none;
        none.layers = 1;
        none.kvw = 1;
        none.add(1);
        std::ostringstream what;
        what << "ropeRows head_dim " << hd << " heads " << nHeads << " rows " << spec.describe() << " ldq " << ldq;
        onBoth(c, "ropeRows", what.str(), [&](int s) {
          Ops& o = *c.side[s].ops;
          StepOnSide st = place(o, none, pos, seq);
          DevBuf dq = upload(o, q), df = upload(o, invFreq);
          RowsOnSide rs = placeRows(o, spec);
          o.ropeRows(dq.as<float>(), ldq, rs.set, st.step, nHeads, hd, df.as<float>());
          compareF32(c, s, "ropeRows", what.str(), dq.fetch<float>(q.size()), q, ref, written, ldq, Tol::kRope);
        });
        c.endCase();
      }
}

void runAttentionCases(Ctx& c) {
  int caseNo = 0;
  for (int hd : kHeadDims)
    for (int gqa : {1, 4, 8})
      for (DType t : kDtypes)
        for (int windowed = 0; windowed < 2; windowed++) {
          caseNo++;
          if (c.quick && (caseNo % 6)) continue;
          const int nKv = (caseNo % 2) ? 1 : 2, nHeads = nKv * gqa;
          const int64_t qd = int64_t(nHeads) * hd;
          const bool decode = caseNo % 3 != 0;  // else a prefill chunk of one or two sequences
          const int window = windowed ? int(c.rng.range(1, 40)) : 0;
          const double work = double(nHeads) * hd;  // per (row, key)
          // Rows of the step and their sequences and positions.
          std::vector<int32_t> pos, seq;
          Caches caches;
          caches.layers = 2;
          caches.kvw = int64_t(nKv) * hd;
          caches.t = t;
          std::vector<int64_t> length;  // valid positions per sequence
          if (decode) {
            const int64_t nSeq = c.rng.pick(std::vector<int64_t>{1, 2, 3, 5, 8});
            for (int64_t s = 0; s < nSeq; s++) {
              const int64_t len = s == 0 ? 1 : c.rng.range(1, work > 4096 ? 300 : 700);
              length.push_back(len);
              pos.push_back(int32_t(len - 1));
              seq.push_back(int32_t(s));
            }
          } else {
            const int64_t rows =
                work <= 512 ? c.rng.pick(std::vector<int64_t>{33, 257}) : c.rng.pick(std::vector<int64_t>{2, 5, 33});
            const int64_t nSeq = 1 + (caseNo % 2);
            for (int64_t s = 0; s < nSeq; s++) {
              const int64_t p0 = c.rng.below(rows > 33 ? 64 : 300), n = s == 0 ? rows : c.rng.range(1, 8);
              for (int64_t i = 0; i < n; i++) pos.push_back(int32_t(p0 + i)), seq.push_back(int32_t(s));
              length.push_back(p0 + n);
            }
          }
          for (int64_t len : length) caches.add(len + c.rng.range(0, 9));
          // Layer 1 holds random keys and values where some row may read them; everything else
          // (layer 0, positions past the sequence, positions before every row's window) is NaN,
          // so a read outside the causal window poisons the output.
          for (size_t s = 0; s < length.size(); s++) {
            int64_t firstRead = length[s] - 1;
            for (size_t r = 0; r < pos.size(); r++)
              if (size_t(seq[r]) == s)
                firstRead = std::min<int64_t>(firstRead, window ? std::max(0, pos[r] - window + 1) : 0);
            for (int64_t p = firstRead; p < length[s]; p++)
              for (int64_t e = 0; e < caches.kvw; e++) {
                caches.set(caches.k[s], caches.index(s, 1, p) + size_t(e), c.rng.value());
                caches.set(caches.v[s], caches.index(s, 1, p) + size_t(e), c.rng.value());
              }
          }
          const int64_t stepRows = int64_t(pos.size());
          const std::vector<RowSpec> variants = rowVariants(c.rng, stepRows, stepRows);
          const RowSpec& spec = variants[size_t(caseNo) % variants.size()];
          // Scores with a spread of about 2 (softmax far from uniform, so a wrong key shows).
          const std::vector<float> q = c.rng.values(size_t((stepRows + 1) * qd), 5.7f);
          const std::vector<float> init(q.size(), poisonF32());
          std::vector<double> ref(q.size(), 0);
          std::vector<uint8_t> written(q.size(), 0);
          for (int64_t i = 0; i < spec.count; i++) {
            const int64_t r = spec.rowOf(i);
            const size_t s = size_t(seq[size_t(r)]);
            const unsigned char* kL = caches.k[s].data() + caches.index(s, 1, 0) * caches.es();
            const unsigned char* vL = caches.v[s].data() + caches.index(s, 1, 0) * caches.es();
            ref::attentionRow(q.data() + i * qd, kL, vL, t, nHeads, nKv, hd, pos[size_t(r)], window,
                              ref.data() + i * qd);
            std::fill(written.begin() + i * qd, written.begin() + (i + 1) * qd, 1);
          }
          std::ostringstream what;
          what << "attention " << dtypeLabel(t) << " head_dim " << hd << " heads " << nHeads << "/" << nKv << " (GQA "
               << gqa << ") " << (decode ? "decode" : "prefill") << " rows " << spec.describe() << " window " << window
               << " longest " << *std::max_element(length.begin(), length.end());
          const std::string group = "attention " + dtypeLabel(t);
          onBoth(c, group, what.str(), [&](int si) {
            Ops& o = *c.side[si].ops;
            StepOnSide st = place(o, caches, pos, seq);
            DevBuf dq = upload(o, q), dout = upload(o, init);
            RowsOnSide rs = placeRows(o, spec);
            dg::AttnShape a;
            a.nHeads = nHeads;
            a.nKv = nKv;
            a.headDim = hd;
            a.window = window;
            a.kv = t;
            o.attention(dout.as<float>(), dq.as<float>(), rs.set, st.step, 1, a);
            compareF32(c, si, group, what.str(), dout.fetch<float>(init.size()), init, ref, written, qd,
                       Tol::forDtype(t, c.side[si], Tol::kAttentionF32));
          });
          c.endCase();
        }
}

}  // namespace parity
