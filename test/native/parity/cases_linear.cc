// Cases for the dense ops: embed, rmsnorm, matmul (every epilogue), matmul2, matmulGateUp, tanhRows.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "harness.h"
#include "reference.h"

namespace parity {

namespace {

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};
const int64_t kMaxRows[] = {0, 1, 2, 3, 5, 8, 33, 257};

// A scale w for FlexiDepth's epilogue, kept away from 0.5 so that w and 1 - w differ clearly.
float routerScale(Rng& r) {
  const float v = float(0.05 + 0.3 * r.unit());
  return (r.next() & 1) ? v : 1.f - v;
}

// K (input features) for a case: small and large, most not a multiple of 8; bounded so the
// scalar backend's time stays small at 257 rows.
int64_t pickK(Rng& r, int64_t rows) {
  static const std::vector<int64_t> all = {7, 13, 64, 67, 259, 1000, 4100}, mid = {7, 13, 64, 67, 259, 1000},
                                    small = {7, 13, 64, 67, 259};
  return r.pick(rows > 33 ? small : rows > 8 ? mid : all);
}
int64_t pickN(Rng& r, int64_t rows, int64_t K) {
  static const std::vector<int64_t> all = {1, 2, 5, 96, 131, 300}, small = {1, 2, 5, 96, 131};
  return r.pick(rows > 33 || K > 1000 ? small : all);
}

}  // namespace

void runEmbedCases(Ctx& c) {
  for (DType t : kDtypes)
    for (int64_t rows : {int64_t(0), int64_t(1), int64_t(3), int64_t(8), int64_t(33), int64_t(257)}) {
      const int64_t vocab = c.rng.pick(std::vector<int64_t>{5, 320}),
                    cols = c.rng.pick(std::vector<int64_t>{7, 64, 1000});
      const HostWeight table = makeWeight(c.rng, t, vocab, cols, 1.f, (rows % 2) ? dg::dtypeSize(t) : 0);
      std::vector<int32_t> tokens(static_cast<size_t>(rows));
      for (auto& k : tokens) k = int32_t(c.rng.below(vocab));
      if (rows >= 3) tokens[0] = 0, tokens[1] = int32_t(vocab - 1);
      const std::vector<float> init(size_t((rows + 1) * cols), poisonF32());
      std::vector<double> ref(init.size(), 0);
      std::vector<uint8_t> written(init.size(), 0);
      for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
          ref[size_t(r * cols + j)] = table.at(tokens[size_t(r)], j);
          written[size_t(r * cols + j)] = 1;
        }
      std::ostringstream what;
      what << "embed " << dtypeLabel(t) << " rows " << rows << " vocab " << vocab << " cols " << cols;
      const std::string group = "embed " + dtypeLabel(t);
      onBoth(c, group, what.str(), [&](int s) {
        Ops& o = *c.side[s].ops;
        DevBuf x = upload(o, init), tok = upload(o, tokens);
        o.embed(x.as<float>(), tok.as<int32_t>(), rows, prepared(o, table));
        // Widening is exact: both backends must give the stored values bit for bit.
        compareF32(c, s, group, what.str(), x.fetch<float>(init.size()), init, ref, written, cols, 0.0);
      });
      c.endCase();
    }
}

void runRmsnormCases(Ctx& c) {
  int caseNo = 0;
  for (int64_t max : kMaxRows)
    for (const RowSpec& base : rowVariants(c.rng, max, max + 3)) {
      for (int inPlace = 0; inPlace < 2; inPlace++) {
        // In place (out == x) is how the engine's router uses it; only for sets without indices.
        if (inPlace && !base.idx.empty()) continue;
        if (c.quick && (caseNo++ % 5)) continue;
        const int64_t dim = c.rng.pick(std::vector<int64_t>{7, 64, 1000, 4100});
        const int64_t inRows = base.idx.empty() ? max : max + 3;
        const float eps = (c.rng.next() & 1) ? 1e-5f : 1e-6f;
        std::vector<float> x(size_t(inRows * dim));
        for (int64_t r = 0; r < inRows; r++) {
          const float rowScale = float(std::pow(10.0, c.rng.unit() * 4 - 2));  // rows of norm 1e-2 .. 1e2
          for (int64_t j = 0; j < dim; j++) x[size_t(r * dim + j)] = c.rng.value(rowScale);
        }
        const std::vector<float> w = c.rng.values(size_t(dim), 1.5f);
        const int64_t outRows = inPlace ? inRows : max + 1;
        const std::vector<float> init = inPlace ? x : std::vector<float>(size_t(outRows * dim), poisonF32());
        std::vector<double> ref(init.size(), 0);
        std::vector<uint8_t> written(init.size(), 0);
        for (int64_t i = 0; i < base.count; i++) {
          ref::rmsnorm(x.data() + base.rowOf(i) * dim, dim, w.data(), eps, ref.data() + i * dim);
          std::fill(written.begin() + i * dim, written.begin() + (i + 1) * dim, 1);
        }
        std::ostringstream what;
        what << "rmsnorm rows " << base.describe() << " dim " << dim << (inPlace ? " in place" : "");
        onBoth(c, "rmsnorm", what.str(), [&](int s) {
          Ops& o = *c.side[s].ops;
          DevBuf dx = upload(o, x), dw = upload(o, w);
          DevBuf dout = inPlace ? DevBuf() : upload(o, init);
          RowsOnSide rs = placeRows(o, base);
          float* out = inPlace ? dx.as<float>() : dout.as<float>();
          o.rmsnorm(out, dx.as<float>(), rs.set, dim, dw.as<float>(), eps);
          const DevBuf& res = inPlace ? dx : dout;
          compareF32(c, s, "rmsnorm", what.str(), res.fetch<float>(init.size()), init, ref, written, dim, Tol::kNorm);
        });
        c.endCase();
      }
    }
}

void runMatmulCases(Ctx& c) {
  enum Ep { Store, Add, Scatter, ScatterW, ScatterOneMinusW };
  static const char* epName[] = {"store", "add", "scatterAdd", "scatterAdd(w)", "scatterAdd(1-w)"};
  int caseNo = 0;
  for (DType t : kDtypes)
    for (int64_t max : kMaxRows)
      for (const RowSpec& spec0 : rowVariants(c.rng, max, max + 5))
        for (int ep = Store; ep <= ScatterOneMinusW; ep++) {
          caseNo++;
          if (c.quick && (caseNo % 6)) continue;
          const RowSpec& spec = spec0;
          const int64_t inRows = spec.idx.empty() ? max : max + 5;
          const int64_t K = pickK(c.rng, max), N = pickN(c.rng, max, K);
          const int64_t ldx = K + ((caseNo % 2) ? 0 : c.rng.range(1, 5)), ldo = N + ((caseNo % 3) ? 0 : 3);
          const bool withBias = caseNo % 2 == 0;
          const HostWeight W = makeWeight(c.rng, t, N, K, 1.f, (caseNo % 4 == 1) ? dg::dtypeSize(t) : 0);
          const std::vector<float> x = c.rng.values(size_t(std::max<int64_t>(inRows, 1) * ldx));
          const std::vector<float> bias = withBias ? c.rng.values(static_cast<size_t>(N)) : std::vector<float>();
          const bool scatter = ep >= Scatter;
          const int64_t outRows = scatter ? max + 4 : max + 1;
          std::vector<int32_t> dst;
          if (scatter) {
            dst = c.rng.distinct(spec.count, outRows);
            dst.resize(size_t(max), kUnreadIndex);
          }
          std::vector<float> scale(static_cast<size_t>(outRows));
          for (auto& v : scale) v = routerScale(c.rng);
          const std::vector<float> init = ep == Store ? std::vector<float>(size_t(outRows * ldo), poisonF32())
                                                      : c.rng.values(size_t(outRows * ldo));
          std::vector<double> ref(init.size(), 0), denom(size_t(outRows), 0), y(static_cast<size_t>(N)),
              a(static_cast<size_t>(N));
          std::vector<uint8_t> written(init.size(), 0);
          for (int64_t i = 0; i < spec.count; i++) {
            ref::matvec(W, x.data() + spec.rowOf(i) * ldx, withBias ? bias.data() : nullptr, y.data());
            ref::matvecAbs(W, x.data() + spec.rowOf(i) * ldx, withBias ? bias.data() : nullptr, a.data());
            const int64_t r = scatter ? dst[size_t(i)] : i;
            const double sc = ep == ScatterW           ? scale[size_t(r)]
                              : ep == ScatterOneMinusW ? 1.0 - double(scale[size_t(r)])
                                                       : 1.0;
            for (int64_t j = 0; j < N; j++) {
              const size_t at = size_t(r * ldo + j);
              ref[at] = (ep == Store ? 0.0 : double(init[at])) + sc * y[size_t(j)];
              written[at] = 1;
            }
            // The error is measured against the product (not the sum with what out held).
            denom[size_t(r)] = sc * ref::rowScale(y.data(), a.data(), N, K);
          }
          std::ostringstream what;
          what << "matmul " << dtypeLabel(t) << " rows " << spec.describe() << " K " << K << " N " << N << " ldx "
               << ldx << " ldo " << ldo << " " << epName[ep] << (withBias ? " bias" : "")
               << (W.offset ? " unaligned W" : "");
          const std::string group = "matmul " + dtypeLabel(t);
          onBoth(c, group, what.str(), [&](int s) {
            Ops& o = *c.side[s].ops;
            DevBuf dx = upload(o, x), dout = upload(o, init), db = upload(o, bias), dd = upload(o, dst),
                   dsc = upload(o, scale);
            RowsOnSide rs = placeRows(o, spec);
            dg::Epilogue e = ep == Store ? dg::Epilogue::store()
                             : ep == Add ? dg::Epilogue::add()
                                         : dg::Epilogue::scatterAdd(dd.as<int32_t>(),
                                                                    ep == ScatterW           ? dg::Epilogue::W
                                                                    : ep == ScatterOneMinusW ? dg::Epilogue::OneMinusW
                                                                                             : dg::Epilogue::One,
                                                                    ep == Scatter ? nullptr : dsc.as<float>());
            o.matmul(dout.as<float>(), ldo, dx.as<float>(), ldx, rs.set, prepared(o, W),
                     withBias ? db.as<float>() : nullptr, e);
            compareF32(c, s, group, what.str(), dout.fetch<float>(init.size()), init, ref, written, ldo,
                       Tol::forDtype(t, c.side[s]), &denom);
          });
          c.endCase();
        }
}

void runMatmul2Cases(Ctx& c) {
  int caseNo = 0;
  for (DType t : kDtypes)
    for (int64_t max : kMaxRows)
      for (const RowSpec& spec : rowVariants(c.rng, max, max + 2)) {
        caseNo++;
        if (c.quick && (caseNo % 4)) continue;
        const int64_t inRows = spec.idx.empty() ? max : max + 2;
        const int64_t K = pickK(c.rng, max), N = pickN(c.rng, max, K);
        const int64_t ldx = K + (caseNo % 2), ldo0 = N + (caseNo % 3 == 0 ? 2 : 0), ldo1 = N;
        const HostWeight W0 = makeWeight(c.rng, t, N, K, 1.f, 0), W1 = makeWeight(c.rng, t, N, K, 1.f, 0);
        const std::vector<float> x = c.rng.values(size_t(std::max<int64_t>(inRows, 1) * ldx));
        const bool b0 = caseNo % 2 == 0, b1 = caseNo % 3 != 0;
        const std::vector<float> bias0 = b0 ? c.rng.values(static_cast<size_t>(N)) : std::vector<float>();
        const std::vector<float> bias1 = b1 ? c.rng.values(static_cast<size_t>(N)) : std::vector<float>();
        const std::vector<float> init0(size_t((max + 1) * ldo0), poisonF32()),
            init1(size_t((max + 1) * ldo1), poisonF32());
        std::vector<double> ref0(init0.size()), ref1(init1.size()), y(static_cast<size_t>(N)),
            a(static_cast<size_t>(N));
        std::vector<double> d0(size_t(max + 1), 0), d1(size_t(max + 1), 0);
        std::vector<uint8_t> w0(init0.size(), 0), w1(init1.size(), 0);
        for (int64_t i = 0; i < spec.count; i++) {
          const float* xi = x.data() + spec.rowOf(i) * ldx;
          ref::matvec(W0, xi, b0 ? bias0.data() : nullptr, y.data());
          ref::matvecAbs(W0, xi, b0 ? bias0.data() : nullptr, a.data());
          d0[size_t(i)] = ref::rowScale(y.data(), a.data(), N, K);
          for (int64_t j = 0; j < N; j++) ref0[size_t(i * ldo0 + j)] = y[size_t(j)], w0[size_t(i * ldo0 + j)] = 1;
          ref::matvec(W1, xi, b1 ? bias1.data() : nullptr, y.data());
          ref::matvecAbs(W1, xi, b1 ? bias1.data() : nullptr, a.data());
          d1[size_t(i)] = ref::rowScale(y.data(), a.data(), N, K);
          for (int64_t j = 0; j < N; j++) ref1[size_t(i * ldo1 + j)] = y[size_t(j)], w1[size_t(i * ldo1 + j)] = 1;
        }
        std::ostringstream what;
        what << "matmul2 " << dtypeLabel(t) << " rows " << spec.describe() << " K " << K << " N " << N << " ldx " << ldx
             << (b0 ? " bias0" : "") << (b1 ? " bias1" : "");
        const std::string group = "matmul2 " + dtypeLabel(t);
        onBoth(c, group, what.str(), [&](int s) {
          Ops& o = *c.side[s].ops;
          DevBuf dx = upload(o, x), o0 = upload(o, init0), o1 = upload(o, init1), db0 = upload(o, bias0),
                 db1 = upload(o, bias1);
          RowsOnSide rs = placeRows(o, spec);
          o.matmul2(o0.as<float>(), ldo0, o1.as<float>(), ldo1, dx.as<float>(), ldx, rs.set, prepared(o, W0),
                    b0 ? db0.as<float>() : nullptr, prepared(o, W1), b1 ? db1.as<float>() : nullptr);
          const double tol = Tol::forDtype(t, c.side[s]);
          compareF32(c, s, group, what.str() + " out0", o0.fetch<float>(init0.size()), init0, ref0, w0, ldo0, tol, &d0);
          compareF32(c, s, group, what.str() + " out1", o1.fetch<float>(init1.size()), init1, ref1, w1, ldo1, tol, &d1);
        });
        c.endCase();
      }
}

void runGateUpCases(Ctx& c) {
  int caseNo = 0;
  for (DType t : kDtypes)
    for (int64_t max : kMaxRows)
      for (const RowSpec& spec : rowVariants(c.rng, max, max + 2)) {
        caseNo++;
        if (c.quick && (caseNo % 4)) continue;
        const int64_t inRows = spec.idx.empty() ? max : max + 2;
        const int64_t K = pickK(c.rng, max), N = pickN(c.rng, max, K);
        const int64_t ldx = K + (caseNo % 3 == 1 ? 5 : 0), ldo = N + (caseNo % 2);
        const HostWeight Wg = makeWeight(c.rng, t, N, K, 1.f, 0), Wu = makeWeight(c.rng, t, N, K, 1.f, 0);
        // Inputs scaled so gate values spread over silu's curved part (|g| of a few units).
        const std::vector<float> x =
            c.rng.values(size_t(std::max<int64_t>(inRows, 1) * ldx), float(3.0 / std::sqrt(double(K))));
        const bool withBias = caseNo % 2 == 1;
        const std::vector<float> bg = withBias ? c.rng.values(static_cast<size_t>(N)) : std::vector<float>();
        const std::vector<float> bu = withBias ? c.rng.values(static_cast<size_t>(N)) : std::vector<float>();
        const std::vector<float> init(size_t((max + 1) * ldo), poisonF32());
        std::vector<double> ref(init.size()), g(static_cast<size_t>(N)), u(static_cast<size_t>(N)),
            ag(static_cast<size_t>(N)), au(static_cast<size_t>(N)), y(static_cast<size_t>(N)),
            a(static_cast<size_t>(N));
        std::vector<double> denom(size_t(max + 1), 0);
        std::vector<uint8_t> written(init.size(), 0);
        for (int64_t i = 0; i < spec.count; i++) {
          const float* xi = x.data() + spec.rowOf(i) * ldx;
          ref::matvec(Wg, xi, withBias ? bg.data() : nullptr, g.data());
          ref::matvec(Wu, xi, withBias ? bu.data() : nullptr, u.data());
          ref::matvecAbs(Wg, xi, withBias ? bg.data() : nullptr, ag.data());
          ref::matvecAbs(Wu, xi, withBias ? bu.data() : nullptr, au.data());
          for (int64_t j = 0; j < N; j++) {
            const size_t J = size_t(j);
            y[J] = ref::silu(g[J]) * u[J];
            // The typical size of an error in g and u carried through silu(g) * u
            // (silu' is at most 1.1), for rows whose g or u cancel.
            a[J] = (std::fabs(ref::silu(g[J])) * au[J] + 1.1 * std::fabs(u[J]) * ag[J]);
            ref[size_t(i * ldo + j)] = y[J];
            written[size_t(i * ldo + j)] = 1;
          }
          denom[size_t(i)] = ref::rowScale(y.data(), a.data(), N, K);
        }
        std::ostringstream what;
        what << "matmulGateUp " << dtypeLabel(t) << " rows " << spec.describe() << " K " << K << " N " << N << " ldx "
             << ldx << " ldo " << ldo << (withBias ? " biases" : "");
        const std::string group = "matmulGateUp " + dtypeLabel(t);
        onBoth(c, group, what.str(), [&](int s) {
          Ops& o = *c.side[s].ops;
          DevBuf dx = upload(o, x), dout = upload(o, init), dbg = upload(o, bg), dbu = upload(o, bu);
          RowsOnSide rs = placeRows(o, spec);
          o.matmulGateUp(dout.as<float>(), ldo, dx.as<float>(), ldx, rs.set, prepared(o, Wg),
                         withBias ? dbg.as<float>() : nullptr, prepared(o, Wu), withBias ? dbu.as<float>() : nullptr);
          // Two products and silu: the matmul tolerance with the activation's few ulp on top.
          compareF32(c, s, group, what.str(), dout.fetch<float>(init.size()), init, ref, written, ldo,
                     Tol::forDtype(t, c.side[s], Tol::kF32 + Tol::kActivation), &denom);
        });
        c.endCase();
      }
}

// tanhRows works in place on rows idx[i] of x (as cpu_backend.cc does; backend.h's comment says
// "compact rows", which for an in-place op over a set with indices means those rows).
void runTanhCases(Ctx& c) {
  int caseNo = 0;
  for (int64_t max : kMaxRows)
    for (const RowSpec& spec : rowVariants(c.rng, max, max + 3)) {
      if (c.quick && (caseNo++ % 3)) continue;
      const int64_t rows = spec.idx.empty() ? max : max + 3;
      const int64_t dim = c.rng.pick(std::vector<int64_t>{1, 7, 64, 300});
      std::vector<float> x(size_t(rows * dim));
      for (auto& v : x) v = c.rng.value(3.f);
      std::vector<double> ref(x.size());
      std::vector<uint8_t> written(x.size(), 0);
      for (int64_t i = 0; i < spec.count; i++)
        for (int64_t j = 0; j < dim; j++) {
          const size_t at = size_t(spec.rowOf(i) * dim + j);
          ref[at] = std::tanh(double(x[at]));
          written[at] = 1;
        }
      std::ostringstream what;
      what << "tanhRows rows " << spec.describe() << " dim " << dim;
      onBoth(c, "tanhRows", what.str(), [&](int s) {
        Ops& o = *c.side[s].ops;
        DevBuf dx = upload(o, x);
        RowsOnSide rs = placeRows(o, spec);
        o.tanhRows(dx.as<float>(), rs.set, dim);
        compareF32(c, s, "tanhRows", what.str(), dx.fetch<float>(x.size()), x, ref, written, dim, Tol::kActivation);
      });
      c.endCase();
    }
}

}  // namespace parity
