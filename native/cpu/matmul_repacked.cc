// The CPU backend's own layout for Q8_0 weights, Q8_0x16 (tensor.h), and its matmul kernels.
//
// Why: in the stored Q8_0 layout a block is 34 bytes, so its loads straddle cache lines, and each
// block's integer dot ends in 8 int32 lanes that need their own scale, conversion and fma. That
// kernel (matmul_quant.cc) read Q8_0 at 1.35x the streaming-read floor where llama.cpp, which
// repacks Q8_0 on load for its CPU backend too, reads at it. Here a chunk of 16 blocks is 8
// aligned 64-byte groups, group g holding codes 4g..4g+3 of every block in the block's own int32
// lane, and the row's scales follow its codes. Eight vpdpbusd over the 8 groups leave the 16
// blocks' dots in the 16 lanes of one register: one conversion, one multiply by the 16 scales
// (d_w * d_x) and one fma per 16 blocks. The codes are stored plus 128 (unsigned, as vpdpbusd wants
// its first operand) and each lane starts from -128 x the block's activation code sum. A row's
// last, partial chunk is read with masked loads, so the layout needs no padding blocks and a row is
// as many bytes as in Q8_0, rounded up to a cache line (a microbenchmark on a 16384 x 4096 Q8_0
// matrix, 2 threads: 3.9 ms against 5.2 ms for the stored layout, 3.7 ms for a one-stream-per-thread read; both
// kernels before the prefetch of matmul_common.h).
//
// The activation row is quantized exactly as for the stored layout (quantizeActivationBlock), so
// a Q8_0x16 matmul equals the Q8_0 one up to the f32 summation order.
//
// Only the AVX-512 VNNI variant has a SIMD kernel: the loader repacks only when that variant runs
// (cpuRepacksQ8_0), and the scalar kernel here is the reference the kernel tests hold it to.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "errors.h"
#include "matmul_common.h"

namespace dg {
namespace matmul_detail {
namespace {

constexpr int64_t kChunkCodes = kRepackBlocks * kQuantBlock;  // 512

int64_t chunksOf(int64_t cols) { return (cols / kQuantBlock + kRepackBlocks - 1) / kRepackBlocks; }

// Activation rows in whole chunks: row r's chunk c codes at q + (r * nc + c) * 512 (group g, lane
// i, byte j = code 4g + j of block i), the block scales at d + (r * nc + c) * 16 and -128 x each
// block's code sum at start (same index). Lanes past the row's last block hold scale 0, codes 0.
struct PackedRows {
  const int8_t* q;
  const float* d;
  const int32_t* start;
  int64_t nc;
};

PackedRows quantizeActivationsPacked(const float* x, int64_t ldx, int64_t rows, int64_t k) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d;
  thread_local std::vector<int32_t> start;
  const int64_t nb = k / kQuantBlock, nc = chunksOf(k);
  // No fill: every lane of a block is written below, and only the lanes past the row's last block
  // (in its last chunk) are zeroed, so a decode step does not write the buffers twice.
  q.resize(size_t(rows * nc * kChunkCodes));
  d.resize(size_t(rows * nc * kRepackBlocks));
  start.resize(size_t(rows * nc * kRepackBlocks));
  int8_t blk[kQuantBlock];
  const int64_t used = nb - (nc - 1) * kRepackBlocks;  // blocks in the last chunk, 1..16
  for (int64_t r = 0; r < rows; r++) {
    if (used < kRepackBlocks) {
      const int64_t last = r * nc + nc - 1;
      for (int g = 0; g < 8; g++)
        std::memset(q.data() + last * kChunkCodes + g * 64 + used * 4, 0, size_t(4 * (kRepackBlocks - used)));
      std::fill_n(d.data() + last * kRepackBlocks + used, kRepackBlocks - used, 0.f);
      std::fill_n(start.data() + last * kRepackBlocks + used, kRepackBlocks - used, 0);
    }
    for (int64_t b = 0; b < nb; b++) {
      const int64_t c = b / kRepackBlocks, i = b % kRepackBlocks, slot = r * nc * kRepackBlocks + b;
      d[size_t(slot)] = quantizeActivationBlock(x + r * ldx + b * kQuantBlock, blk);
      int8_t* dst = q.data() + (r * nc + c) * kChunkCodes + i * 4;
      int32_t sum = 0;
      for (int g = 0; g < 8; g++) {
        std::memcpy(dst + g * 64, blk + 4 * g, 4);
        sum += int32_t(blk[4 * g]) + blk[4 * g + 1] + blk[4 * g + 2] + blk[4 * g + 3];
      }
      start[size_t(slot)] = -128 * sum;
    }
  }
  return {q.data(), d.data(), start.data(), nc};
}

// ---- NR weight rows dotted with one activation row (rb: bytes per weight row) ----------------

template <int NR>
void rgemvScalar(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad, const int32_t*,
                 int64_t nb) {
  for (int r = 0; r < NR; r++) {
    const unsigned char* row = w + r * rb;
    float s = 0.f;
    for (int64_t b = 0; b < nb; b++) {
      const int8_t* a = aq + (b / kRepackBlocks) * kChunkCodes + 4 * (b % kRepackBlocks);
      int32_t acc = 0;
      for (int j = 0; j < kQuantBlock; j++)
        acc += (int32_t(row[repackedCodeOffset(nb, b, j)]) - 128) * a[(j / 4) * 64 + j % 4];
      uint16_t h;
      std::memcpy(&h, row + 32 * nb + 2 * b, 2);
      s += float(acc) * (f16ToF32(h) * ad[b]);
    }
    out[r] = s;
  }
}

// Group g of a chunk of n blocks (Full: 16).
template <bool Full>
DG_VNNI inline __m512i loadGroup(const unsigned char* ch, int g, int n, __mmask16 m) {
  return Full ? _mm512_loadu_si512(ch + g * 64) : _mm512_maskz_loadu_epi32(m, ch + g * 4 * n);
}

// One chunk of n <= 16 blocks of one row (codes at row + off, scales at row + scaleOff) into acc; a
// partial chunk (n < 16) is read with masked loads, its missing lanes 0.
template <bool Full>
DG_VNNI inline __m512 rchunkVnni(__m512 acc, const unsigned char* row, size_t off, size_t scaleOff, const int8_t* aq,
                                 const float* ad, const int32_t* start, int n) {
  const __mmask16 m = Full ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  const unsigned char* ch = row + off;
  // Two chains of four, so the dpbusd latency overlaps.
  __m512i p = _mm512_loadu_si512(start), p2 = _mm512_setzero_si512();
  for (int g = 0; g < 8; g += 2) {
    p = _mm512_dpbusd_epi32(p, loadGroup<Full>(ch, g, n, m), _mm512_loadu_si512(aq + g * 64));
    p2 = _mm512_dpbusd_epi32(p2, loadGroup<Full>(ch, g + 1, n, m), _mm512_loadu_si512(aq + g * 64 + 64));
  }
  const __m256i h = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + scaleOff))
                         : _mm256_maskz_loadu_epi16(m, row + scaleOff);
  const __m512 s = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(ad));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(p, p2)), s, acc);
}

// NR rows, each read whole (codes, then scales) before the next, so a group's bytes are read in
// address order. Why not chunk by chunk across the NR rows, sharing the activation loads, as the
// other 4-row kernels do: that reads NR x 2 places a row apart at once, and out of cache it
// streamed worse. On the AMD VM (2 threads, 2816 x 1024 out of cache, weights on huge pages,
// prefetch on) this kernel streamed 23-28 GB/s chunk by chunk and 26-31 in row order, with a plain
// read of the same bytes at 30-36; Q8_0 decode of the bench model went from 9.4-9.6 to 8.4-8.6
// ms/token (alternating runs). The activation loads it repeats hit L1. pf: ask for the row two
// groups on (prefetchSpan: why), whole. Two was the best distance for the chunk-by-chunk kernel
// (8.5-8.8 ms/token one group on, 7.5-8.1 two on, three no better); in row order one, two and
// three groups on were the same within the noise, so it stays at two.
template <int NR>
DG_VNNI void rgemvVnni(float* out, const unsigned char* w, size_t rb, const int8_t* aq, const float* ad,
                       const int32_t* start, int64_t nb) {
  const int64_t full = nb / kRepackBlocks, tail = nb % kRepackBlocks;
  const bool pf = NR == 4 && prefetchOn();
  for (int r = 0; r < NR; r++) {
    const unsigned char* row = w + r * rb;
    if (pf) prefetchSpan(row + 2 * NR * rb, rb);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < full; c++)
      acc = rchunkVnni<true>(acc, row, size_t(c * kChunkCodes), size_t(32 * nb + 32 * c), aq + c * kChunkCodes,
                             ad + c * kRepackBlocks, start + c * kRepackBlocks, kRepackBlocks);
    if (tail)
      acc =
          rchunkVnni<false>(acc, row, size_t(full * kChunkCodes), size_t(32 * nb + 32 * full), aq + full * kChunkCodes,
                            ad + full * kRepackBlocks, start + full * kRepackBlocks, int(tail));
    out[r] = _mm512_reduce_add_ps(acc);
  }
}

IntGemvPair repackedKernels() {
  if (quantIsa(chosenIsa()) == QIsa::Vnni) return {rgemvVnni<4>, rgemvVnni<1>};
  return {rgemvScalar<4>, rgemvScalar<1>};
}

void requireRepacked(const Weight& W) {
  if (!isRepacked(W.dtype) || W.cols % kQuantBlock != 0)
    throw Error(kErrUnsupported, std::string("a repacked matmul needs a Q8_0x16 weight whose width is a multiple of ") +
                                     "32, got " + dtypeName(W.dtype) + " with " + std::to_string(W.cols) + " columns");
}

// intGroups over the activation rows of x.
void repackedGroups(const IntGemvPair& kern, float* out, int64_t ldo, int64_t outBase, const PackedRows& x,
                    int64_t rows, const Weight& W, const float* bias, bool accumulate, int64_t g0, int64_t g1) {
  intGroups(kern, out, ldo, outBase, rows, W, bias, accumulate, g0, g1, [&](int64_t r) {
    return IntRow{x.q + r * x.nc * kChunkCodes, x.d + r * x.nc * kRepackBlocks, x.start + r * x.nc * kRepackBlocks};
  });
}

}  // namespace

void matmulRepacked(ThreadPool& pool, float* out, int64_t ldo, const float* x, int64_t ldx, int64_t rows,
                    const Weight& W, const float* bias, bool accumulate) {
  requireRepacked(W);
  const PackedRows xq = quantizeActivationsPacked(x, ldx, rows, W.cols);
  const IntGemvPair kern = repackedKernels();
  runBlocks(pool, (W.rows + 3) / 4, rows * W.rows * W.cols, [&](int64_t g0, int64_t g1, int) {
    repackedGroups(kern, out, ldo, 0, xq, rows, W, bias, accumulate, g0, g1);
  });
}

void matmulManyRepacked(ThreadPool& pool, const float* x, const GemvJob* jobs, int nJobs) {
  for (int j = 0; j < nJobs; j++) {
    requireRepacked(*jobs[j].W);
    if (jobs[j].W->cols != jobs[0].W->cols)
      throw Error(kErrArg, "matmulMany: every job must read the same x (equal widths)");
  }
  const PackedRows xq = quantizeActivationsPacked(x, jobs[0].W->cols, 1, jobs[0].W->cols);
  const IntGemvPair kern = repackedKernels();
  runJobGroups(pool, jobs, nJobs, [&](const GemvJob& J, int64_t g0, int64_t g1) {
    repackedGroups(kern, J.out, 0, 0, xq, 1, *J.W, J.bias, J.accumulate, g0, g1);
  });
}

void gateUpRepacked(ThreadPool& pool, float* out, const float* x, const Weight& Wg, const float* bg, const Weight& Wu,
                    const float* bu) {
  requireRepacked(Wg);
  requireRepacked(Wu);
  if (Wg.cols != Wu.cols || Wg.rows != Wu.rows)
    throw Error(kErrArg, "gateUpVector: the gate and up weights must have the same shape");
  const PackedRows xq = quantizeActivationsPacked(x, Wg.cols, 1, Wg.cols);
  const IntGemvPair kern = repackedKernels();
  gateUpGroups(pool, out, Wg, bg, Wu, bu,
               [&](float* dst, int64_t outBase, const Weight& W, const float* b, int64_t g0, int64_t g1) {
                 repackedGroups(kern, dst, 0, outBase, xq, 1, W, b, false, g0, g1);
               });
}

}  // namespace matmul_detail

bool cpuRepacksQ8_0() {
  static const bool on = [] {
    const char* v = std::getenv("DEPTHGATE_CPU_REPACK");
    if (v && std::strcmp(v, "0") == 0) return false;
    return matmul_detail::quantIsa(matmul_detail::chosenIsa()) == matmul_detail::QIsa::Vnni;
  }();
  return on;
}

namespace {

void repackRowQ8_0(const unsigned char* src, unsigned char* dst, int64_t cols) {
  const int64_t nb = cols / kQuantBlock;
  // Codes (32 nb bytes, dense: a partial chunk's groups are 4n bytes) and scales (2 nb) are all
  // written below; only the padding to the cache line needs zeros.
  std::memset(dst + 34 * nb, 0, rowBytes(DType::Q8_0x16, cols) - size_t(34 * nb));
  for (int64_t b = 0; b < nb; b++) {
    const unsigned char* blk = src + size_t(b) * 34;
    std::memcpy(dst + 32 * nb + 2 * b, blk, 2);
    for (int j = 0; j < kQuantBlock; j++) dst[repackedCodeOffset(nb, b, j)] = uint8_t(blk[2 + j] ^ 0x80);
  }
}

}  // namespace

void repackWeight(ThreadPool& pool, const Weight& W, unsigned char* out) {
  if (W.dtype != DType::Q8_0 || W.cols % kQuantBlock != 0)
    throw Error(kErrUnsupported, std::string("repackWeight: only Q8_0 weights 32k columns wide are repacked, got ") +
                                     dtypeName(W.dtype) + " with " + std::to_string(W.cols) + " columns");
  const size_t src = rowBytes(DType::Q8_0, W.cols), dst = rowBytes(DType::Q8_0x16, W.cols);
  const unsigned char* base = static_cast<const unsigned char*>(W.data);
  matmul_detail::runBlocks(pool, W.rows, W.rows * W.cols, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; r++) repackRowQ8_0(base + size_t(r) * src, out + size_t(r) * dst, W.cols);
  });
}

}  // namespace dg
