import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyModel, type TinyModelOptions } from '../src/testing';

const roots: string[] = [];

/** A fresh temporary folder, removed by cleanup(). */
export function tmpDir(prefix = 'depthgate-test-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  roots.push(d);
  return d;
}

/** Writes a tiny random model into a temporary folder and returns its path. */
export function tinyModel(options: TinyModelOptions = {}): string {
  const dir = path.join(tmpDir(), 'model');
  writeTinyModel(dir, options);
  return dir;
}

export function cleanup(): void {
  for (const d of roots.splice(0)) fs.rmSync(d, { recursive: true, force: true });
}

/** max |a - b| / max |b| over a row: the relative error used for logits. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** Random token ids in [lo, hi). Deterministic for a seed. */
export function randomTokens(n: number, lo: number, hi: number, seed = 1): number[] {
  let s = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(lo + (s % (hi - lo)));
  }
  return out;
}

/** Paths of files the process has memory-mapped or open (Linux), to check nothing is left after a failure. */
export function openedFiles(): string[] {
  const maps = fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .map((l) => l.split(/\s+/).slice(5).join(' '));
  const fds = fs.readdirSync('/proc/self/fd').map((fd) => {
    try {
      return fs.readlinkSync(path.join('/proc/self/fd', fd));
    } catch {
      return '';
    }
  });
  return [...maps, ...fds].filter(Boolean);
}

/**
 * Rewrites f32 tensors of a safetensors file in place: `edits` maps a tensor name to a function
 * that changes its values (a Float32Array over the tensor's data). Throws if a tensor is missing
 * or not F32, so a test cannot silently edit nothing.
 */
export function editF32Tensors(file: string, edits: Record<string, (values: Float32Array) => void>): void {
  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8')) as Record<
    string,
    { dtype: string; data_offsets: [number, number] }
  >;
  for (const [name, edit] of Object.entries(edits)) {
    const e = header[name];
    if (!e) throw new Error(`editF32Tensors: ${file} has no tensor ${name}`);
    if (e.dtype !== 'F32') throw new Error(`editF32Tensors: ${name} is ${e.dtype}, not F32`);
    const [begin, end] = e.data_offsets;
    const values = new Float32Array((end - begin) / 4);
    const base = 8 + headerLen + begin;
    for (let i = 0; i < values.length; i++) values[i] = bytes.readFloatLE(base + 4 * i);
    edit(values);
    for (let i = 0; i < values.length; i++) bytes.writeFloatLE(values[i], base + 4 * i);
  }
  fs.writeFileSync(file, bytes);
}

/** One native forward pass as the scheduler sent it: its policy and, per request, its row count and flags. */
export interface ObservedPass {
  policy: string;
  requests: { rows: number; fullDepth: boolean; penalties: boolean }[];
}

/**
 * Records every native forward pass of `model` (the scheduler's batches, at the binding) until
 * the returned stop() is called.
 */
export function observePasses(model: object): { passes: ObservedPass[]; stop(): void } {
  type Forward = (rq: { tokens: Int32Array; fullDepth?: boolean; penalties?: object }[], p: unknown) => unknown;
  const holder = model as unknown as { nm: { forward: Forward } };
  const nm = holder.nm;
  const passes: ObservedPass[] = [];
  holder.nm = new Proxy(nm, {
    get(target, prop) {
      if (prop === 'forward')
        return (requests: Parameters<Forward>[0], policy: unknown) => {
          passes.push({
            policy: (policy as { type?: string } | undefined)?.type ?? 'none',
            requests: requests.map((r) => ({
              rows: r.tokens.length,
              fullDepth: r.fullDepth === true,
              penalties: r.penalties !== undefined,
            })),
          });
          return target.forward(requests, policy);
        };
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { passes, stop: () => void (holder.nm = nm) };
}
