// Float64 references for every op of the op table, written from the op table's contract
// (native/backend.h) and Hugging Face's definitions, sharing no code with any backend. They
// compute from the exact stored values of the inputs, so the only error left in a backend's
// output is its own arithmetic.
#pragma once
#include <cstdint>
#include <vector>

#include "harness.h"

namespace parity::ref {

// y[o] = sum_i W[o, i] x[i] (+ bias[o]), o < W.rows.
void matvec(const HostWeight& W, const float* x, const float* bias, double* y);
// a[o] = sum_i |W[o, i] x[i]| (+ |bias[o]|): the size of the terms, for error floors.
void matvecAbs(const HostWeight& W, const float* x, const float* bias, double* a);
// The norm a row's error is measured against: the result's own norm, but no less than the
// typical size of a length-K dot product of these terms (||a|| / sqrt(K)), so that a row whose
// terms cancel (a single output near zero) is judged by the scale of its terms, not by the
// accident of its sum.
double rowScale(const double* y, const double* a, int64_t n, int64_t K);
inline double silu(double v) { return v / (1.0 + std::exp(-v)); }
inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
// HF LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * w.
void rmsnorm(const float* x, int64_t dim, const float* w, float eps, double* out);
// HF rotate-half RoPE of every head of v (in place) at position pos; angle = pos * invFreq[i].
void rope(double* v, int nHeads, int headDim, const float* invFreq, int32_t pos);
// Causal attention of one query row over one sequence's cache at one layer. kLayer, vLayer: the
// layer's block ([capacity][kvWidth] in dtype t). Positions max(0, pos - window + 1) .. pos.
void attentionRow(const float* q, const void* kLayer, const void* vLayer, DType t, int nHeads, int nKv, int headDim,
                  int32_t pos, int window, double* out);
uint64_t splitmix(uint64_t& state);
// The sample op's penalties on one logits row, in place, in float as the contract states them
// (transformers' repetition penalty: l / r for l > 0, else l * r; then OpenAI's
// l - count * f - p), each step rounded once.
void penalize(float* logits, const dg::SampleRow& p, const dg::PenaltyToken* list);
// The token the sample op must draw from one logits row, with the generator state after it.
int32_t sample(const float* logits, int64_t vocab, const dg::SampleRow& p, uint64_t& rng);

}  // namespace parity::ref
