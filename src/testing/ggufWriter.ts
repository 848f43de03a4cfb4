/**
 * Writes GGUF files (version 3, little-endian), as llama.cpp's gguf-py writer lays them out:
 * magic, version, counts, metadata, tensor infos, padding to the alignment, tensor data (each
 * tensor at an aligned offset). For tests: every value's type is explicit, so a test can write
 * exactly the file it means, malformed ones included (see `raw`).
 */
import * as fs from 'node:fs';

/** GGUF metadata value types (gguf.h GGUF_TYPE_*). */
export const GGUF_VALUE_TYPES = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;
export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPES, 'array'>;

/** A metadata value: a scalar of `type`, or an array of `type` elements when `array` is set. */
export type GgufMetadataValue =
  | { type: GgufScalarType; value: number | bigint | boolean | string }
  | { type: GgufScalarType; array: readonly (number | bigint | boolean | string)[] | ArrayLike<number> };

/** ggml tensor types the writer knows the ids of (the data is given already encoded). */
export const GGML_TYPES = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 } as const;
export type GgufTensorType = keyof typeof GGML_TYPES;

export interface GgufTensor {
  name: string;
  /** Dimensions fastest-first, as GGUF stores them (a row-major [rows, cols] matrix is [cols, rows]). */
  dims: number[];
  type: GgufTensorType;
  /** The tensor's elements, already encoded (little-endian bytes of `type`). */
  data: Uint8Array;
}

export interface GgufFileSpec {
  metadata: [string, GgufMetadataValue][];
  tensors: GgufTensor[];
  /** general.alignment is written when given; the default (32) is used either way. */
  alignment?: number;
}

class ByteSink {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  scalar(type: GgufScalarType, v: number | bigint | boolean | string): void {
    const b = Buffer.alloc(
      type === 'u64' || type === 'i64' || type === 'f64'
        ? 8
        : type === 'u32' || type === 'i32' || type === 'f32'
          ? 4
          : type === 'u16' || type === 'i16'
            ? 2
            : 1,
    );
    switch (type) {
      case 'string':
        return this.str(String(v));
      case 'u8':
        b.writeUInt8(Number(v));
        break;
      case 'i8':
        b.writeInt8(Number(v));
        break;
      case 'bool':
        b.writeUInt8(v ? 1 : 0);
        break;
      case 'u16':
        b.writeUInt16LE(Number(v));
        break;
      case 'i16':
        b.writeInt16LE(Number(v));
        break;
      case 'u32':
        b.writeUInt32LE(Number(v));
        break;
      case 'i32':
        b.writeInt32LE(Number(v));
        break;
      case 'f32':
        b.writeFloatLE(Number(v));
        break;
      case 'u64':
        b.writeBigUInt64LE(BigInt(v));
        break;
      case 'i64':
        b.writeBigInt64LE(BigInt(v));
        break;
      case 'f64':
        b.writeDoubleLE(Number(v));
        break;
    }
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

/** The bytes of a GGUF file. */
export function ggufBytes(spec: GgufFileSpec): Buffer {
  const alignment = spec.alignment ?? 32;
  const metadata: [string, GgufMetadataValue][] =
    spec.alignment === undefined
      ? spec.metadata
      : [['general.alignment', { type: 'u32', value: alignment }], ...spec.metadata];
  const head = new ByteSink();
  head.push(Buffer.from('GGUF', 'latin1'));
  head.u32(3);
  head.u64(spec.tensors.length);
  head.u64(metadata.length);
  for (const [key, v] of metadata) {
    head.str(key);
    if ('array' in v) {
      head.u32(GGUF_VALUE_TYPES.array);
      head.u32(GGUF_VALUE_TYPES[v.type]);
      head.u64(v.array.length);
      for (let i = 0; i < v.array.length; i++) head.scalar(v.type, (v.array as ArrayLike<number>)[i]!);
    } else {
      head.u32(GGUF_VALUE_TYPES[v.type]);
      head.scalar(v.type, v.value);
    }
  }
  const align = (n: number) => Math.ceil(n / alignment) * alignment;
  let offset = 0;
  const offsets: number[] = [];
  for (const t of spec.tensors) {
    head.str(t.name);
    head.u32(t.dims.length);
    for (const d of t.dims) head.u64(d);
    head.u32(GGML_TYPES[t.type]);
    head.u64(offset);
    offsets.push(offset);
    offset = align(offset + t.data.length);
  }
  const data = Buffer.alloc(offset);
  spec.tensors.forEach((t, i) => data.set(t.data, offsets[i]));
  const headBytes = head.concat();
  return Buffer.concat([headBytes, Buffer.alloc(align(headBytes.length) - headBytes.length), data]);
}

/** Writes a GGUF file; returns its size in bytes. */
export function writeGguf(file: string, spec: GgufFileSpec): number {
  const bytes = ggufBytes(spec);
  fs.writeFileSync(file, bytes);
  return bytes.length;
}
