// Weight views over memory-mapped safetensors data, used in their stored dtype.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace dg {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline size_t dtypeSize(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtypeName(DType t) {
  return t == DType::F32 ? "F32" : t == DType::F16 ? "F16" : "BF16";
}

// A 2-D weight [rows, cols], row-major, in its stored dtype. `data` may be unaligned
// (safetensors offsets carry no alignment guarantee), so kernels load it with loadu/memcpy.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
  size_t bytes() const { return size_t(rows) * size_t(cols) * dtypeSize(dtype); }
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

// Reads element i of a 1-D or flattened tensor as f32 (slow path: loading, references).
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

// Converts `n` elements starting at element `offset` into f32.
void toF32(float* out, const void* data, DType t, size_t offset, size_t n);

}  // namespace dg
