// The matrix-product family's shared launch description and epilogue (gemv.cu, gemm.cu,
// matmul.cu). One launch covers up to two weight matrices over the same input rows:
//  * plain:   out0 = W0 x (+ b0), written as the Epilogue says;
//  * dual:    plain, plus out1 = W1 x (+ b1) stored (matmul2: K and V in one launch);
//  * gate-up: out0 = silu(W0 x + b0) * (W1 x + b1) stored (matmulGateUp; W1 is the up matrix).
// Input row i of the set is x[idx[i]] (or x[i]); the set's size is read from device memory.
#pragma once
#include "common.cuh"

namespace dg {
namespace cuda {

struct MatArgs {
  const float* x;
  int64_t ldx;
  int64_t maxRows;       // grid bound (host-known)
  const int32_t* count;  // device: rows present, or null = maxRows
  const int32_t* idx;    // device: input row of set row i, or null
  int64_t K;
  const void* W[2];
  const float* bias[2];
  float* out[2];
  int64_t ldo[2];
  int64_t N[2];  // N[1] = 0: plain; gate-up: N[1] == N[0]
  int32_t gateUp;
  int32_t epMode;  // Epilogue::Mode, matrix 0 of plain/dual
  int32_t scaleMode;
  const int32_t* dst;
  const float* scale;
};

// Writes y = acc + bias for (set row i, output col) of matrix `mat` as the epilogue says. The
// scatter's `out += s * y` is rounded twice like the CPU's (no fused multiply-add), so both
// backends add the same value into the residual.
__device__ __forceinline__ void emitPlain(const MatArgs& a, int mat, int64_t i, int64_t col, float acc) {
  if (mat == 1) {
    a.out[1][i * a.ldo[1] + col] = acc + (a.bias[1] ? a.bias[1][col] : 0.f);
    return;
  }
  const float y = acc + (a.bias[0] ? a.bias[0][col] : 0.f);
  float* o = a.out[0];
  if (a.epMode == Epilogue::Store) {
    o[i * a.ldo[0] + col] = y;
  } else if (a.epMode == Epilogue::Add) {
    float& t = o[i * a.ldo[0] + col];
    t = __fadd_rn(t, y);
  } else {
    const int64_t r = a.dst[i];
    const float s = a.scaleMode == Epilogue::One ? 1.f
                    : a.scaleMode == Epilogue::W ? a.scale[r]
                                                 : __fsub_rn(1.f, a.scale[r]);
    float& t = o[r * a.ldo[0] + col];
    t = __fadd_rn(t, __fmul_rn(s, y));
  }
}

__device__ __forceinline__ void emitGateUp(const MatArgs& a, int64_t i, int64_t col, float g, float u) {
  g += a.bias[0] ? a.bias[0][col] : 0.f;
  u += a.bias[1] ? a.bias[1][col] : 0.f;
  a.out[0][i * a.ldo[0] + col] = siluMul(g, u);
}

// gemv.cu: rows.max <= 8, every weight 16-byte aligned with K a multiple of one 16-byte vector,
// x 16-byte aligned with ldx % 4 == 0.
bool gemvFits(const MatArgs& a, DType t);
void launchGemv(const Dev& d, const MatArgs& a, DType t);
// gemm.cu: any shape; tensor cores (2xTF32) for bf16/f16 weights unless DEPTHGATE_CUDA_MMA=0.
void launchGemm(const Dev& d, const MatArgs& a, DType t);

}  // namespace cuda
}  // namespace dg
