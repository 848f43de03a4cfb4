/** Float encoders (f32 -> f16 / bf16, round to nearest, ties to even), for writing test checkpoints. */

const convF32 = new Float32Array(1);
const convU32 = new Uint32Array(convF32.buffer);

/** Bits of the float32 nearest to `value`. */
export function float32Bits(value: number): number {
  convF32[0] = value;
  return convU32[0]!;
}

/** IEEE binary16 bits of `value` (first rounded to float32), round to nearest even; NaN stays NaN. */
export function float32ToFloat16Bits(value: number): number {
  const x = float32Bits(value);
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return mant !== 0 ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  const e = exp - 127 + 15; // biased f16 exponent
  if (e >= 0x1f) return sign | 0x7c00; // overflow to infinity
  if (e >= 1) {
    let r = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (r & 1) === 1)) r += 1; // may carry into inf: correct
    return sign | r;
  }
  // Subnormal (or zero) in f16: value = m * 2^-24 with m = M * 2^(e - 14), M the 24-bit significand.
  if (exp === 0) return sign; // f32 zero / subnormal: far below the f16 range
  const shift = 14 - e; // >= 14
  if (shift > 24) return sign;
  const full = mant | 0x800000;
  let r = full >>> shift;
  const rem = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (r & 1) === 1)) r += 1; // may become the smallest normal: correct
  return sign | r;
}

/** bfloat16 bits of `value` (first rounded to float32), round to nearest even; NaN stays NaN. */
export function float32ToBfloat16Bits(value: number): number {
  const x = float32Bits(value);
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return ((x >>> 16) & 0x8000) | 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}
