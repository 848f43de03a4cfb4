// Weight views over memory-mapped safetensors data, used in their stored dtype.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace dg {

// F32/F16/BF16 are element types. The others are llama.cpp's block formats (ggml-common.h), packed
// back to back with no padding, so a block's f16 fields may be unaligned. Q8_0 and Q4_0: each row is
// cols / 32 blocks of 32 weights, a block being an f16 scale d followed by
//   Q8_0: 32 int8 q, weight = d * q                                        (34 bytes)
//   Q4_0: 16 bytes of nibbles, byte j holding weight j (low) and j + 16 (high),
//         weight = d * (q - 8)                                             (18 bytes)
// The K-quants: each row is cols / 256 super-blocks of 256 weights,
//   Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales sc[8] and mins m[8] (packing in
//         cpu/kquant.cc), 128 bytes of nibbles: bytes 32c..32c+31 hold weights 64c + l (low) and
//         64c + 32 + l (high); weight i of sub-block j (32 wide) = d * sc[j] * q - dmin * m[j]
//                                                                          (144 bytes)
//   Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16] (one per 16 weights),
//         f16 d; weight = d * scales[i / 16] * (q - 32), q in [0, 63]      (210 bytes)
// Q8_0x16 is no file's format: the CPU backend's layout for Q8_0 weights (cpu/matmul_repacked.cc
// makes it at load), the same codes and scales rearranged so that one 64-byte load feeds the int32
// lanes of 16 blocks. A row of nb = cols / 32 blocks, in chunks of 16 blocks (the last one holding
// t = nb % 16 when that is not 0):
//   the codes: chunk by chunk, 8 groups each; group g of a chunk of n blocks is 4n bytes, byte 4i + j
//     holding block i's code 4g + j plus 128 (so unsigned);              (32 * nb bytes)
//   then the nb f16 scales in block order;                               (2 * nb bytes)
//   then zeros up to a multiple of 64 bytes, so every row and full chunk starts on a cache line.
// weight = d[b] * (byte - 128).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, Q8_0 = 3, Q4_0 = 4, Q4_K = 5, Q6_K = 6, Q8_0x16 = 7 };

constexpr int64_t kQuantBlock = 32;    // weights per Q8_0 / Q4_0 block
constexpr int64_t kSuperBlock = 256;   // weights per Q4_K / Q6_K super-block
constexpr int64_t kRepackBlocks = 16;  // Q8_0 blocks per Q8_0x16 chunk
// The 32-wide block formats, which cpu/matmul_quant.cc computes with.
inline bool isBlock32(DType t) { return t == DType::Q8_0 || t == DType::Q4_0; }
// The 256-wide K-quants, which cpu/matmul_kquant.cc computes with.
inline bool isKQuant(DType t) { return t == DType::Q4_K || t == DType::Q6_K; }
// The CPU backend's repacked layouts (Q8_0x16), which cpu/matmul_repacked.cc computes with.
inline bool isRepacked(DType t) { return t == DType::Q8_0x16; }
inline bool isBlockQuantized(DType t) { return isBlock32(t) || isKQuant(t) || isRepacked(t); }
// Weights per block: 32 or 256 for the block formats, 1 for element types.
inline int64_t blockElements(DType t) {
  return isKQuant(t) ? kSuperBlock : isBlock32(t) || isRepacked(t) ? kQuantBlock : 1;
}
// Bytes of one block of a block format (34, 18, 144, 210); 0 for element types and Q8_0x16, whose
// blocks are spread over a chunk (its rows are whole chunks: see rowBytes).
inline size_t blockBytes(DType t) {
  switch (t) {
    case DType::Q8_0:
      return 34;
    case DType::Q4_0:
      return 18;
    case DType::Q4_K:
      return 144;
    case DType::Q6_K:
      return 210;
    default:
      return 0;
  }
}
// Where code j (0..31) of block b lies in a Q8_0x16 row of nb blocks (its scale: at 32 * nb + 2 * b).
inline size_t repackedCodeOffset(int64_t nb, int64_t b, int j) {
  const int64_t c = b / kRepackBlocks, i = b % kRepackBlocks;
  const int64_t left = nb - c * kRepackBlocks, n = left < kRepackBlocks ? left : kRepackBlocks;  // in this chunk
  return size_t(c * kRepackBlocks * kQuantBlock + (j / 4) * 4 * n + 4 * i + j % 4);
}
// Bytes of one element of an element type. Block formats have no element size: use rowBytes.
inline size_t dtypeSize(DType t) { return t == DType::F32 ? 4 : 2; }
// Bytes of one row of `cols` values: cols * element size, or cols / blockElements blocks for block
// formats (whose rows must be whole blocks wide; see blockElements).
inline size_t rowBytes(DType t, int64_t cols) {
  if (isRepacked(t)) return (size_t(cols / kQuantBlock) * 34 + 63) / 64 * 64;
  return isBlockQuantized(t) ? size_t(cols / blockElements(t)) * blockBytes(t) : size_t(cols) * dtypeSize(t);
}
inline const char* dtypeName(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::Q8_0:
      return "Q8_0";
    case DType::Q4_0:
      return "Q4_0";
    case DType::Q4_K:
      return "Q4_K";
    case DType::Q6_K:
      return "Q6_K";
    case DType::Q8_0x16:
      return "Q8_0x16";
  }
  return "?";
}

// A 2-D weight [rows, cols], row-major, in its stored dtype. `data` may be unaligned
// (safetensors offsets carry no alignment guarantee), so kernels load it with loadu/memcpy.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
  size_t bytes() const { return size_t(rows) * rowBytes(dtype, cols); }
};

// Scalar conversions. bf16 is the top half of an f32; f16 is IEEE half.
inline float bf16ToF32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32ToBf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16ToF32(uint16_t h);
uint16_t f32ToF16(float f);

// Reads element i of a 1-D or flattened tensor of an element type as f32 (slow path: loading,
// references).
inline float loadElement(const void* data, DType t, size_t i) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  if (t == DType::F32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return t == DType::BF16 ? bf16ToF32(h) : f16ToF32(h);
}

// Converts `n` elements starting at element `offset` into f32. For the block formats, offset and
// n must be multiples of blockElements (whole blocks; rows of a weight are).
void toF32(float* out, const void* data, DType t, size_t offset, size_t n);

}  // namespace dg
