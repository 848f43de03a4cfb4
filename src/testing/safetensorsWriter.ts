/** Writes safetensors files of test tensors, filled by a per-tensor deterministic PRNG. */
import * as fs from 'node:fs';
import { float32Bits, float32ToBfloat16Bits, float32ToFloat16Bits } from './floatBits';
import { Rng, hashString } from './rng';
import type { TinyDtype } from './tinyModelOptions';

export interface TensorSpec {
  name: string;
  shape: number[];
  /** Fills `out` (length prod(shape)) with float32-representable values. */
  init: (rng: Rng, out: Float32Array) => void;
}

export const DTYPE_INFO: Record<TinyDtype, { st: string; bytes: number; torch: string }> = {
  f32: { st: 'F32', bytes: 4, torch: 'float32' },
  f16: { st: 'F16', bytes: 2, torch: 'float16' },
  bf16: { st: 'BF16', bytes: 2, torch: 'bfloat16' },
};

export function writeSafetensorsFile(file: string, specs: TensorSpec[], dtype: TinyDtype, seed: number): number {
  const info = DTYPE_INFO[dtype];
  const sorted = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let offset = 0;
  const parts: string[] = ['"__metadata__":{"format":"pt"}'];
  for (const s of sorted) {
    const bytes = s.shape.reduce((p, d) => p * d, 1) * info.bytes;
    parts.push(
      `${JSON.stringify(s.name)}:{"dtype":"${info.st}","shape":[${s.shape.join(',')}],"data_offsets":[${offset},${offset + bytes}]}`,
    );
    offset += bytes;
  }
  let header = `{${parts.join(',')}}`;
  const pad = (8 - (Buffer.byteLength(header) % 8)) % 8;
  header += ' '.repeat(pad);
  const headerBytes = Buffer.from(header, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, prefix);
    fs.writeSync(fd, headerBytes);
    for (const s of sorted) {
      const n = s.shape.reduce((p, d) => p * d, 1);
      const values = new Float32Array(n);
      s.init(new Rng(hashString(s.name, seed)), values);
      // Little-endian bytes, written byte by byte so the host's endianness does not matter.
      let buf: Uint8Array;
      if (dtype === 'f32') {
        buf = new Uint8Array(n * 4);
        for (let i = 0; i < n; i++) {
          const bits = float32Bits(values[i]!);
          buf[4 * i] = bits & 0xff;
          buf[4 * i + 1] = (bits >>> 8) & 0xff;
          buf[4 * i + 2] = (bits >>> 16) & 0xff;
          buf[4 * i + 3] = bits >>> 24;
        }
      } else {
        buf = new Uint8Array(n * 2);
        const encode = dtype === 'f16' ? float32ToFloat16Bits : float32ToBfloat16Bits;
        for (let i = 0; i < n; i++) {
          const bits = encode(values[i]!);
          buf[2 * i] = bits & 0xff;
          buf[2 * i + 1] = bits >>> 8;
        }
      }
      fs.writeSync(fd, buf);
    }
  } finally {
    fs.closeSync(fd);
  }
  return offset;
}
