// Prefill kernels: out[r, o] (+)= sum_i x[r, i] * W[o, i] (+ bias[o]) for rows > 1 (prompts, and
// routed layers with a few active rows), as register-tiled dot products straight on W in its
// stored layout, 4 weight rows x 3 x rows per micro-kernel, widening weights in registers.
// Nothing is packed per call, so the time is proportional to rows from rows = 2 on, and each
// converted weight vector still feeds 3 FMAs. The matrix-vector (decode) kernels and the public
// entry points are in matmul.cc.
#include <algorithm>
#include <vector>

#include "matmul_common.h"

namespace dg {
namespace matmul_detail {
namespace {

// A micro-kernel takes NW (<= 4) weight rows and NX (<= 3) x rows over one K block and keeps
// NW x NX vector accumulators along K (12 for the full tile: enough independent FMAs to cover
// FMA latency on two ports). Each step loads NW weight vectors, widening bf16/f16 in
// registers, and NX x vectors, so a converted weight vector feeds NX FMAs and nothing is ever
// packed: the cost per call is proportional to rows, with no per-call conversion of W.
// At the end of the block the accumulators are reduced horizontally (a fixed hadd tree, so
// every output sees the same arithmetic whatever its position in the tile) and added into out.
//
// The vector operations come from an Ops struct (scalar, avx2, avx512) and the kernel body is
// written once, in DG_DOT_KERNEL below, and stamped out per ISA because GCC needs the target
// attribute on the function itself.

struct DotTile {
  float* out;  // out at (first row, first feature) of the tile
  int64_t ldo;
  const unsigned char* w;  // weight row of the first feature, at column k0
  size_t rowBytes;
  const float* x;  // x at (first row, k0); for bf16, x permuted by permuteX
  int64_t ldx;
  int64_t kb;  // columns in this block, a multiple of 2 * Ops::L
  bool first;  // first K block: out = bias + sum (out += bias + sum when accumulating); later: out += sum
  bool accumulate;
  const float* bias;  // at the first feature, or null
  // Last K block only: columns past the vectorised part, done in scalar and added to the sum.
  int64_t tail;
  const unsigned char* wTail;  // weight row of the first feature, at the first tail column
  const float* xTail;          // x itself at (first row, first tail column)
  int64_t ldxTail;
};

template <DType T>
inline float tailDot(const unsigned char* w, const float* x, int64_t n) {
  float s = 0.f;
  for (int64_t t = 0; t < n; t++) s += loadScalar<T>(w, t) * x[t];
  return s;
}

// Adds the reduced sums of one x row into out (scalar: at most 4 values per row and block).
template <DType T, int NW>
inline void finishRow(const DotTile& a, int r, float* sums) {
  float* o = a.out + r * a.ldo;
  if (a.tail > 0)
    for (int j = 0; j < NW; j++) sums[j] += tailDot<T>(a.wTail + j * a.rowBytes, a.xTail + r * a.ldxTail, a.tail);
  if (!a.first) {
    for (int j = 0; j < NW; j++) o[j] += sums[j];
  } else if (a.accumulate) {
    for (int j = 0; j < NW; j++) o[j] += (a.bias ? a.bias[j] : 0.f) + sums[j];
  } else if (a.bias) {
    for (int j = 0; j < NW; j++) o[j] = a.bias[j] + sums[j];
  } else {
    for (int j = 0; j < NW; j++) o[j] = sums[j];
  }
}

struct ScalarOps {
  using V = float;
  static constexpr int L = 1;
  static constexpr bool kHasTileLoop = false;
  static V zero() { return 0.f; }
  static V loadx(const float* p) { return *p; }
  // Half H (0 or 1) of the 2L weights at column i: for bf16 the even (H = 0) or odd (H = 1)
  // columns, matching x permuted by permuteX; otherwise columns i + H * L ... in order.
  template <DType T, int H>
  static V loadw(const unsigned char* row, int64_t i) {
    return loadScalar<T>(row, i + H);
  }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static void reduce4(const V* v, float* s) {
    for (int j = 0; j < 4; j++) s[j] = v[j];
  }
};

// Full-tile inner loop for avx2 in assembly: ymm0..11 accumulate acc[j][r] (j * 3 + r), ymm12..14
// hold the x vectors of a half step and ymm15 the weight vector.
#define DG_TILE_ROW(W, A0, A1, A2, LOAD)   \
  LOAD(W)                                  \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm" A0 \
  "\n\t"                                   \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm" A1 \
  "\n\t"                                   \
  "vfmadd231ps %%ymm14, %%ymm15, %%ymm" A2 "\n\t"
#define DG_TILE_HALF(OFF, LOAD)                                                         \
  "vmovups " OFF                                                                        \
  "(%[px0],%[i],4), %%ymm12\n\t"                                                        \
  "vmovups " OFF                                                                        \
  "(%[px1],%[i],4), %%ymm13\n\t"                                                        \
  "vmovups " OFF "(%[px2],%[i],4), %%ymm14\n\t" DG_TILE_ROW("pw0", "0", "1", "2", LOAD) \
      DG_TILE_ROW("pw1", "3", "4", "5", LOAD) DG_TILE_ROW("pw2", "6", "7", "8", LOAD)   \
          DG_TILE_ROW("pw3", "9", "10", "11", LOAD)
// bf16: even columns = dword << 16, odd columns = dword & 0xffff0000 (mask from memory).
#define DG_LOAD_BF16_EVEN(W) "vmovdqu (%[" W "],%[i],2), %%ymm15\n\tvpslld $16, %%ymm15, %%ymm15\n\t"
#define DG_LOAD_BF16_ODD(W) "vmovdqu (%[" W "],%[i],2), %%ymm15\n\tvpand %[mask], %%ymm15, %%ymm15\n\t"
#define DG_LOAD_F16_LO(W) "vcvtph2ps (%[" W "],%[i],2), %%ymm15\n\t"
#define DG_LOAD_F16_HI(W) "vcvtph2ps 16(%[" W "],%[i],2), %%ymm15\n\t"
#define DG_LOAD_F32_LO(W) "vmovups (%[" W "],%[i],4), %%ymm15\n\t"
#define DG_LOAD_F32_HI(W) "vmovups 32(%[" W "],%[i],4), %%ymm15\n\t"
#define DG_TILE_LOOP(LO, HI) \
  "vxorps %%xmm0, %%xmm0, %%xmm0\n\t"                                                  \
  "vxorps %%xmm1, %%xmm1, %%xmm1\n\t"                                                  \
  "vxorps %%xmm2, %%xmm2, %%xmm2\n\t"                                                  \
  "vxorps %%xmm3, %%xmm3, %%xmm3\n\t"                                                  \
  "vxorps %%xmm4, %%xmm4, %%xmm4\n\t"                                                  \
  "vxorps %%xmm5, %%xmm5, %%xmm5\n\t"                                                  \
  "vxorps %%xmm6, %%xmm6, %%xmm6\n\t"                                                  \
  "vxorps %%xmm7, %%xmm7, %%xmm7\n\t"                                                  \
  "vxorps %%xmm8, %%xmm8, %%xmm8\n\t"                                                  \
  "vxorps %%xmm9, %%xmm9, %%xmm9\n\t"                                                  \
  "vxorps %%xmm10, %%xmm10, %%xmm10\n\t"                                               \
  "vxorps %%xmm11, %%xmm11, %%xmm11\n\t"                                               \
  "1:\n\t"                                                                             \
  DG_TILE_HALF("0", LO)                                                                \
  DG_TILE_HALF("32", HI)                                                               \
  "add $16, %[i]\n\t"                                                                  \
  "cmp %[kb], %[i]\n\t"                                                                \
  "jl 1b\n\t"                                                                          \
  "vmovups %%ymm0, 0(%[acc])\n\t"                                                      \
  "vmovups %%ymm1, 32(%[acc])\n\t"                                                     \
  "vmovups %%ymm2, 64(%[acc])\n\t"                                                     \
  "vmovups %%ymm3, 96(%[acc])\n\t"                                                     \
  "vmovups %%ymm4, 128(%[acc])\n\t"                                                    \
  "vmovups %%ymm5, 160(%[acc])\n\t"                                                    \
  "vmovups %%ymm6, 192(%[acc])\n\t"                                                    \
  "vmovups %%ymm7, 224(%[acc])\n\t"                                                    \
  "vmovups %%ymm8, 256(%[acc])\n\t"                                                    \
  "vmovups %%ymm9, 288(%[acc])\n\t"                                                    \
  "vmovups %%ymm10, 320(%[acc])\n\t"                                                   \
  "vmovups %%ymm11, 352(%[acc])\n\t"                                                   \
  "vzeroupper\n\t"

alignas(32) const uint32_t kBf16HighMask[8] = {0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u,
                                               0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u};

struct Avx2Ops {
  using V = __m256;
  static constexpr int L = 8;
  // The full 4 x 3 tile needs all 16 ymm registers (12 accumulators, 3 x vectors, 1 weight
  // vector), which GCC will not allocate: it turns the x loads into FMA memory operands and
  // becomes load-bound. So that one loop is written out in assembly (DG_TILE_LOOP); the
  // shape is the same as the generic loop in DG_DOT_KERNEL. Requires kb > 0.
  static constexpr bool kHasTileLoop = true;
  template <DType T>
  DG_AVX2 static void tileLoop(float* accOut /* 12 x 8, acc[j][r] at (j * 3 + r) * 8 */, const DotTile& a) {
    const unsigned char* pw0 = a.w;
    const unsigned char* pw1 = pw0 + a.rowBytes;
    const unsigned char* pw2 = pw1 + a.rowBytes;
    const unsigned char* pw3 = pw2 + a.rowBytes;
    const float* px0 = a.x;
    const float* px1 = px0 + a.ldx;
    const float* px2 = px1 + a.ldx;
    int64_t i = 0;
    const int64_t kb = a.kb;
#define DG_TILE_OPERANDS                                                            \
  : [i] "+r"(i)                                                                            \
  : [pw0] "r"(pw0), [pw1] "r"(pw1), [pw2] "r"(pw2), [pw3] "r"(pw3), [px0] "r"(px0),        \
    [px1] "r"(px1), [px2] "r"(px2), [kb] "r"(kb), [acc] "r"(accOut),                       \
    [mask] "m"(*reinterpret_cast<const __m256i*>(kBf16HighMask))                           \
  : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",         \
    "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory"
    if constexpr (T == DType::BF16) {
      __asm__ volatile(DG_TILE_LOOP(DG_LOAD_BF16_EVEN, DG_LOAD_BF16_ODD) DG_TILE_OPERANDS);
    } else if constexpr (T == DType::F16) {
      __asm__ volatile(DG_TILE_LOOP(DG_LOAD_F16_LO, DG_LOAD_F16_HI) DG_TILE_OPERANDS);
    } else {
      __asm__ volatile(DG_TILE_LOOP(DG_LOAD_F32_LO, DG_LOAD_F32_HI) DG_TILE_OPERANDS);
    }
#undef DG_TILE_OPERANDS
  }
  DG_AVX2 static V zero() { return _mm256_setzero_ps(); }
  DG_AVX2 static V loadx(const float* p) { return _mm256_loadu_ps(p); }
  template <DType T, int H>
  DG_AVX2 static V loadw(const unsigned char* row, int64_t i) {
    if constexpr (T == DType::F32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * (i + H * L)));
    } else if constexpr (T == DType::F16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * (i + H * L))));
    } else {  // 16 bf16 = 8 dwords: the low halves are the even columns, the high halves the odd
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
      return _mm256_castsi256_ps(H == 0 ? _mm256_slli_epi32(v, 16)
                                        : _mm256_and_si256(v, _mm256_set1_epi32(int(0xffff0000u))));
    }
  }
  DG_AVX2 static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // s[j] = sum of the lanes of v[j], j < 4.
  DG_AVX2 static void reduce4(const V* v, float* s) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
};

struct Avx512Ops {
  using V = __m512;
  static constexpr int L = 16;
  static constexpr bool kHasTileLoop = false;  // 32 zmm registers: the compiler's code is fine
  DG_AVX512 static V zero() { return _mm512_setzero_ps(); }
  DG_AVX512 static V loadx(const float* p) { return _mm512_loadu_ps(p); }
  template <DType T, int H>
  DG_AVX512 static V loadw(const unsigned char* row, int64_t i) {
    if constexpr (T == DType::F32) {
      return _mm512_loadu_ps(row + 4 * (i + H * L));
    } else if constexpr (T == DType::F16) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * (i + H * L))));
    } else {  // 32 bf16 = 16 dwords: the low halves are the even columns, the high halves the odd
      const __m512i v = _mm512_loadu_si512(row + 2 * i);
      return _mm512_castsi512_ps(H == 0 ? _mm512_slli_epi32(v, 16)
                                        : _mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
    }
  }
  DG_AVX512 static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  DG_AVX512 static __m256 half(V v) {  // lanes i + lanes i + 8: avx512f only (no dq)
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  DG_AVX512 static void reduce4(const V* v, float* s) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(half(v[0]), half(v[1])), _mm256_hadd_ps(half(v[2]), half(v[3])));
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
};

#define DG_DOT_KERNEL(ATTR, NAME)                                                                                   \
  template <class Ops, DType T, int NW, int NX>                                                                     \
  ATTR void NAME(const DotTile& a) {                                                                                \
    using V = typename Ops::V;                                                                                      \
    V acc[NW][NX];                                                                                                  \
    _Pragma("GCC unroll 4") for (int j = 0; j < NW; j++) _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++)       \
        acc[j][r] = Ops::zero();                                                                                    \
    /* Two halves of 2L columns: each loads its x vectors once and reloads the weights (L1) */                      \
    int64_t i0 = 0;                                                                                                 \
    if constexpr (Ops::kHasTileLoop) {                                                                              \
      if constexpr (NW == 4 && NX == 3) {                                                                           \
        if (a.kb > 0) {                                                                                             \
          alignas(64) float accs[NW * NX * Ops::L];                                                                 \
          Ops::template tileLoop<T>(accs, a);                                                                       \
          _Pragma("GCC unroll 4") for (int j = 0; j < NW; j++) _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++) \
              acc[j][r] = Ops::loadx(accs + (j * NX + r) * Ops::L);                                                 \
          i0 = a.kb;                                                                                                \
        }                                                                                                           \
      }                                                                                                             \
    }                                                                                                               \
    for (int64_t i = i0; i < a.kb; i += 2 * Ops::L) {                                                               \
      V xv[NX];                                                                                                     \
      _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++) xv[r] = Ops::loadx(a.x + r * a.ldx + i);                 \
      _Pragma("GCC unroll 4") for (int j = 0; j < NW; j++) {                                                        \
        const V wv = Ops::template loadw<T, 0>(a.w + j * a.rowBytes, i);                                            \
        _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++) acc[j][r] = Ops::fmadd(wv, xv[r], acc[j][r]);          \
      }                                                                                                             \
      _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++) xv[r] = Ops::loadx(a.x + r * a.ldx + i + Ops::L);        \
      _Pragma("GCC unroll 4") for (int j = 0; j < NW; j++) {                                                        \
        const V wv = Ops::template loadw<T, 1>(a.w + j * a.rowBytes, i);                                            \
        _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++) acc[j][r] = Ops::fmadd(wv, xv[r], acc[j][r]);          \
      }                                                                                                             \
    }                                                                                                               \
    _Pragma("GCC unroll 3") for (int r = 0; r < NX; r++) {                                                          \
      V v[4];                                                                                                       \
      _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) v[j] = j < NW ? acc[j][r] : Ops::zero();                  \
      float sums[4];                                                                                                \
      Ops::reduce4(v, sums);                                                                                        \
      finishRow<T, NW>(a, r, sums);                                                                                 \
    }                                                                                                               \
  }

DG_DOT_KERNEL(, dotScalar)
DG_DOT_KERNEL(DG_AVX2, dotAvx2)
DG_DOT_KERNEL(DG_AVX512, dotAvx512)
#undef DG_DOT_KERNEL

// bf16 weights are widened two vectors at a time from one load: the low 16 bits of each dword
// (even columns) shifted up, and the high 16 bits (odd columns) masked. x is reordered to match:
// within each block of 2L columns, the L even columns, then the L odd ones. Columns past the
// last whole block (the scalar tail) are read from x itself.
void permuteX(float* dst, int64_t ldd, const float* x, int64_t ldx, int64_t r0, int64_t r1, int64_t kVec, int lanes) {
  for (int64_t r = r0; r < r1; r++) {
    const float* src = x + r * ldx;
    float* d = dst + r * ldd;
    for (int64_t b = 0; b < kVec; b += 2 * lanes)
      for (int h = 0; h < 2; h++)
        for (int l = 0; l < lanes; l++) d[b + h * lanes + l] = src[b + 2 * l + h];
  }
}

constexpr int kTileW = 4, kTileX = 3;
using DotFn = void (*)(const DotTile&);
struct DotKernels {
  int lanes;
  DotFn fn[kTileW][kTileX];  // fn[nw - 1][nx - 1]
};

#define DG_DOT_TABLE(NAME, OPS, T)                                        \
  DotKernels {                                                            \
    OPS::L, {                                                             \
      {NAME<OPS, T, 1, 1>, NAME<OPS, T, 1, 2>, NAME<OPS, T, 1, 3>},       \
          {NAME<OPS, T, 2, 1>, NAME<OPS, T, 2, 2>, NAME<OPS, T, 2, 3>},   \
          {NAME<OPS, T, 3, 1>, NAME<OPS, T, 3, 2>, NAME<OPS, T, 3, 3>}, { \
        NAME<OPS, T, 4, 1>, NAME<OPS, T, 4, 2>, NAME<OPS, T, 4, 3>        \
      }                                                                   \
    }                                                                     \
  }

const DotKernels& dotKernels(Isa isa, DType t) {
  static const DotKernels scalar[3] = {DG_DOT_TABLE(dotScalar, ScalarOps, DType::F32),
                                       DG_DOT_TABLE(dotScalar, ScalarOps, DType::F16),
                                       DG_DOT_TABLE(dotScalar, ScalarOps, DType::BF16)};
  static const DotKernels avx2[3] = {DG_DOT_TABLE(dotAvx2, Avx2Ops, DType::F32),
                                     DG_DOT_TABLE(dotAvx2, Avx2Ops, DType::F16),
                                     DG_DOT_TABLE(dotAvx2, Avx2Ops, DType::BF16)};
  static const DotKernels avx512[3] = {DG_DOT_TABLE(dotAvx512, Avx512Ops, DType::F32),
                                       DG_DOT_TABLE(dotAvx512, Avx512Ops, DType::F16),
                                       DG_DOT_TABLE(dotAvx512, Avx512Ops, DType::BF16)};
  const int ti = t == DType::F32 ? 0 : t == DType::F16 ? 1 : 2;
  return isa == Isa::Avx512 ? avx512[ti] : isa == Isa::Avx2 ? avx2[ti] : scalar[ti];
}
#undef DG_DOT_TABLE

}  // namespace

// Prefill. Threads split the output features (in groups of 4, so every output is computed by
// the same tile arithmetic whatever the thread count: results do not depend on it). Each
// thread walks K in equal blocks of at most kMaxBlockK columns and its features in blocks of
// weight rows (a block of W sized to stay in L2), and for each block passes every group of
// <= 3 x rows over it, 4 weight rows at a time. Each K block costs a horizontal reduction and
// a read-modify-write of out per tile, which measured dearer than x rows spilling out of L1,
// so K blocks are long (K = 1024 and 2816 run unblocked).
constexpr int64_t kMaxBlockK = 4096;
constexpr size_t kBlockWBytes = 192 * 1024;

void gemm(ThreadPool& pool, Isa isa, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
          const Weight& W, const float* bias, bool accumulate) {
  const int64_t n = W.rows, k = W.cols;
  const DotKernels& kern = dotKernels(isa, W.dtype);
  const size_t es = dtypeSize(W.dtype), rowBytes = size_t(k) * es;
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  const int64_t step = 2 * kern.lanes;
  const int64_t kVec = k - k % step;  // vectorised columns; the rest are the scalar tail
  // K blocks of equal size (whole steps), at most kMaxBlockK.
  const int64_t kBlocks = std::max<int64_t>(1, (kVec + kMaxBlockK - 1) / kMaxBlockK);
  const int64_t blockK = (kVec / step + kBlocks - 1) / kBlocks * step;
  const int64_t blockN =
      std::max<int64_t>(kTileW, int64_t(kBlockWBytes / (size_t(std::max<int64_t>(blockK, 1)) * es)) / kTileW * kTileW);
  // x rows in groups of at most 3, sizes balanced so no group of 1 is left over (M = 4 is 2 + 2).
  const int64_t xGroups = (rows + kTileX - 1) / kTileX;
  const int64_t groups = (n + kTileW - 1) / kTileW;
  const float* xv = x;  // what the kernels read for the vectorised columns
  int64_t ldxv = ldx;
  if (W.dtype == DType::BF16 && kVec > 0) {
    thread_local std::vector<float> permuted;  // the caller's; grows to the largest call seen
    permuted.resize(size_t(rows * kVec));
    float* p = permuted.data();
    const int lanes = kern.lanes;
    runBlocks(pool, rows, rows * kVec / 64,
              [&](int64_t r0, int64_t r1, int) { permuteX(p, kVec, x, ldx, r0, r1, kVec, lanes); });
    xv = p;
    ldxv = kVec;
  }
  runBlocks(pool, groups, rows * n * k, [&](int64_t g0, int64_t g1, int) {
    const int64_t n0 = g0 * kTileW, n1 = std::min(n, g1 * kTileW);
    for (int64_t kbi = 0; kbi < kBlocks; kbi++) {
      const int64_t k0 = kbi * blockK, kb = std::max<int64_t>(0, std::min(blockK, kVec - k0));
      const bool last = kbi == kBlocks - 1;
      for (int64_t nb = n0; nb < n1; nb += blockN) {
        const int64_t nbEnd = std::min(n1, nb + blockN);
        for (int64_t xg = 0; xg < xGroups; xg++) {
          const int64_t r0 = rows * xg / xGroups, nx = rows * (xg + 1) / xGroups - r0;
          DotTile t;
          t.ldo = ldo;
          t.rowBytes = rowBytes;
          t.x = xv + r0 * ldxv + k0;
          t.ldx = ldxv;
          t.kb = kb;
          t.first = kbi == 0;
          t.accumulate = accumulate;
          t.tail = last ? k - kVec : 0;
          t.xTail = x + r0 * ldx + kVec;
          t.ldxTail = ldx;
          for (int64_t o = nb; o < nbEnd; o += kTileW) {
            const int nw = int(std::min<int64_t>(kTileW, nbEnd - o));
            t.out = out + r0 * ldo + o;
            t.w = base + size_t(o) * rowBytes + size_t(k0) * es;
            t.bias = bias ? bias + o : nullptr;
            t.wTail = base + size_t(o) * rowBytes + size_t(kVec) * es;
            kern.fn[nw - 1][nx - 1](t);
          }
        }
      }
    }
  });
}

}  // namespace matmul_detail
}  // namespace dg
