// The matmul ops of the op table (matmul, matmul2, matmulGateUp): argument checks, then one
// launch of gemv (<= 8 rows, aligned) or the tiled kernels (gemm.cu). Fused forms fall back to
// separate launches only when the two matrices cannot share one (different dtypes or shapes).
#include "matmul.cuh"

namespace dg {
namespace cuda {
namespace {

MatArgs baseArgs(const float* x, int64_t ldx, const RowSet& rows, int64_t K) {
  MatArgs a{};
  a.x = x;
  a.ldx = ldx;
  a.maxRows = rows.max;
  a.count = rows.count;
  a.idx = rows.idx;
  a.K = K;
  a.epMode = Epilogue::Store;
  a.scaleMode = Epilogue::One;
  return a;
}

void checkWeight(const Weight& W, const char* op) {
  if (W.rows < 0 || W.cols < 0 || (W.rows > 0 && W.cols > 0 && !W.data))
    throw Error(kErrArg, std::string(op) + ": the weight has no device data");
}

void run(const Dev& d, const MatArgs& a, DType t) {
  if (gemvFits(a, t))
    launchGemv(d, a, t);
  else
    launchGemm(d, a, t);
}

}  // namespace

void launchMatmul(const Dev& d, float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W,
                  const float* bias, const Epilogue& ep) {
  if (rows.max <= 0 || W.rows <= 0) return;
  checkWeight(W, "matmul");
  if (ep.mode == Epilogue::ScatterAdd && !ep.dst) throw Error(kErrArg, "matmul: a scatter-add epilogue needs dst");
  if (ep.mode == Epilogue::ScatterAdd && ep.scaleMode != Epilogue::One && !ep.scale)
    throw Error(kErrArg, "matmul: a scaled scatter-add epilogue needs scale");
  MatArgs a = baseArgs(x, ldx, rows, W.cols);
  a.W[0] = W.data;
  a.bias[0] = bias;
  a.out[0] = out;
  a.ldo[0] = ldo;
  a.N[0] = W.rows;
  a.epMode = ep.mode;
  a.scaleMode = ep.scaleMode;
  a.dst = ep.dst;
  a.scale = ep.scale;
  run(d, a, W.dtype);
}

void launchMatmul2(const Dev& d, float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx,
                   RowSet rows, const Weight& W0, const float* b0, const Weight& W1, const float* b1) {
  if (rows.max <= 0) return;
  checkWeight(W0, "matmul2");
  checkWeight(W1, "matmul2");
  if (W0.dtype != W1.dtype || W0.cols != W1.cols || W0.rows <= 0 || W1.rows <= 0) {
    launchMatmul(d, out0, ldo0, x, ldx, rows, W0, b0, Epilogue::store());
    launchMatmul(d, out1, ldo1, x, ldx, rows, W1, b1, Epilogue::store());
    return;
  }
  MatArgs a = baseArgs(x, ldx, rows, W0.cols);
  a.W[0] = W0.data;
  a.W[1] = W1.data;
  a.bias[0] = b0;
  a.bias[1] = b1;
  a.out[0] = out0;
  a.out[1] = out1;
  a.ldo[0] = ldo0;
  a.ldo[1] = ldo1;
  a.N[0] = W0.rows;
  a.N[1] = W1.rows;
  run(d, a, W0.dtype);
}

bool gateUpNeedsScratch(const Weight& Wg, const Weight& Wu) {
  return Wg.dtype != Wu.dtype || Wg.rows != Wu.rows || Wg.cols != Wu.cols;
}

void launchGateUp(const Dev& d, float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                  const float* bg, const Weight& Wu, const float* bu, float* upScratch) {
  if (rows.max <= 0 || Wg.rows <= 0) return;
  checkWeight(Wg, "matmulGateUp");
  checkWeight(Wu, "matmulGateUp");
  if (gateUpNeedsScratch(Wg, Wu)) {
    if (Wu.rows < Wg.rows) throw Error(kErrArg, "matmulGateUp: the up matrix has fewer rows than the gate matrix");
    if (!upScratch) throw Error(kErrArg, "matmulGateUp: no scratch for the unfused path");
    // Compact rows: gate into out, up into scratch, then out = silu(out) * up.
    launchMatmul(d, out, ldo, x, ldx, rows, Wg, bg, Epilogue::store());
    launchMatmul(d, upScratch, Wu.rows, x, ldx, rows, Wu, bu, Epilogue::store());
    launchSiluMulRows(d, out, ldo, upScratch, Wu.rows, RowSet{rows.max, rows.count, nullptr}, Wg.rows);
    return;
  }
  MatArgs a = baseArgs(x, ldx, rows, Wg.cols);
  a.gateUp = 1;
  a.W[0] = Wg.data;
  a.W[1] = Wu.data;
  a.bias[0] = bg;
  a.bias[1] = bu;
  a.out[0] = out;
  a.ldo[0] = ldo;
  a.N[0] = Wg.rows;
  a.N[1] = Wu.rows;
  run(d, a, Wg.dtype);
}

}  // namespace cuda
}  // namespace dg
