/**
 * llama.cpp's Q8_0 block encoding (ggml-quants.c quantize_row_q8_0_ref, which gguf-py's
 * converter reproduces): blocks of 32 values, an f16 scale d = max|x| / 127, then 32 int8
 * codes round(x / d) (rounded half away from zero, as C's roundf). For writing GGUF files.
 */
import { float32ToFloat16Bits } from './floatBits';

/** Values per Q8_0 block. */
export const Q8_0_BLOCK = 32;
/** Bytes per Q8_0 block: the f16 scale and 32 int8. */
export const Q8_0_BLOCK_BYTES = 34;

/** The Q8_0 blocks of `values` (its length a multiple of 32; rows follow each other). */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  if (values.length % Q8_0_BLOCK !== 0)
    throw new RangeError(`quantizeQ8_0: ${values.length} values are not a whole number of blocks of ${Q8_0_BLOCK}`);
  const blocks = values.length / Q8_0_BLOCK;
  const out = new Uint8Array(blocks * Q8_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const at = b * Q8_0_BLOCK;
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(values[at + j]!));
    // float arithmetic as the C reference does it (each step rounded to f32)
    const d = Math.fround(amax / 127);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    view.setUint16(b * Q8_0_BLOCK_BYTES, float32ToFloat16Bits(d), true);
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const v = Math.fround(values[at + j]! * id);
      view.setInt8(b * Q8_0_BLOCK_BYTES + 2 + j, Math.sign(v) * Math.round(Math.abs(v)));
    }
  }
  return out;
}
