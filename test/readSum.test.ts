/**
 * The streaming-read kernel behind the benchmarks' decode floor (bench/machine.mts readBandwidth):
 * it must read every byte, on any thread count, or the floor it measures would be too fast.
 */
import { native } from '../src/binding';

function wordSumLow32(bytes: Uint8Array): number {
  const words = new BigUint64Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.byteLength / 64) * 8);
  let s = 0n;
  for (const w of words) s = (s + w) & 0xffffffffffffffffn;
  return Number(s & 0xffffffffn);
}

test.each([1, 2, 3])('readSum sums every 64-byte line on %i thread(s)', (threads) => {
  const bytes = new Uint8Array(64 * 4099); // not a multiple of any chunk size
  let x = 12345;
  for (let i = 0; i < bytes.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  const want = wordSumLow32(bytes);
  expect(native().kernels.readSum(bytes, threads)).toBe(want);
  bytes[64 * 4098 + 56] ^= 0x01; // the last word of the last line counts (its low byte reaches the low 32 bits)
  expect(native().kernels.readSum(bytes, threads)).not.toBe(want);
});
