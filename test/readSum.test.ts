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

function randomBytes(bytes: Uint8Array): Uint8Array {
  let x = 12345;
  for (let i = 0; i < bytes.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

test.each([1, 2, 3])('readSum sums every 64-byte line on %i thread(s)', (threads) => {
  const bytes = randomBytes(new Uint8Array(64 * 4099)); // not a multiple of any chunk size
  const want = wordSumLow32(bytes);
  expect(native().kernels.readSum(bytes, threads)).toBe(want);
  bytes[64 * 4098 + 56] ^= 0x01; // the last word of the last line counts (its low byte reaches the low 32 bits)
  expect(native().kernels.readSum(bytes, threads)).not.toBe(want);
});

// The floor takes the best of several access patterns (bench/machine.mts ReadProbe): each one must
// still read every line exactly once, including the tail a stream count does not divide.
test.each([
  [1, 1],
  [1, 3],
  [2, 8],
  [3, 7],
  [2, 64],
])('readSum on %i thread(s) as %i streams per thread reads every line once', (threads, streams) => {
  const bytes = randomBytes(new Uint8Array(64 * 4099));
  const want = wordSumLow32(bytes);
  expect(native().kernels.readSum(bytes, threads, streams)).toBe(want);
  bytes[64 * 2049 + 56] ^= 0x01;
  expect(native().kernels.readSum(bytes, threads, streams)).not.toBe(want);
});

test.each([0, 65, 1.5, Number.NaN])('readSum refuses streams = %p', (streams) => {
  expect(() => native().kernels.readSum(new Uint8Array(640), 1, streams)).toThrow(
    /streams must be an integer from 1 to 64/,
  );
});

test('hugePageBuffer gives zeroed, writable memory the probe can read, and refuses a bad size', () => {
  const { data, hugePages } = native().kernels.hugePageBuffer(4 << 20);
  expect(data).toBeInstanceOf(Uint8Array);
  expect(data.length).toBe(4 << 20);
  expect(typeof hugePages).toBe('boolean');
  expect(data.every((b) => b === 0)).toBe(true);
  randomBytes(data);
  expect(native().kernels.readSum(data, 2, 1)).toBe(wordSumLow32(data));
  expect(() => native().kernels.hugePageBuffer(-1)).toThrow(/bytes must be an integer/);
  expect(() => native().kernels.hugePageBuffer(10.5)).toThrow(/bytes must be an integer/);
});
