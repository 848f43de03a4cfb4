/**
 * What the GPU check's node scripts share: the slice of depthgate's API they use (as structural
 * types, so the same code runs against src/ under jest and against the bundle's dist/ on the GPU
 * machine), loading depthgate, and small helpers. Plain node: no jest, no dependencies.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type KvDtype = 'f32' | 'f16' | 'bf16';
export type PolicyLike = Record<string, unknown> & { type: string };

export interface EvalResultLike {
  logits: Float32Array[];
  executed: Uint8Array[];
  routerWeights: Float32Array[];
  weightBytes: number;
}
export interface SequenceLike {
  evaluate(tokens: number[], options?: { policy?: PolicyLike }): Promise<EvalResultLike>;
  dispose(): void;
}
export interface GenerateResultLike {
  tokens: number[];
  timings: { prefillMs: number; decodeMs: number };
  depth: { meanLayers: number };
}
export interface ModelLike {
  info: { backend: string; weightBytes: number; parameters: number };
  config: { numLayers: number; hiddenSize: number; vocabSize: number } & Record<string, unknown>;
  evaluate(tokens: number[], options?: { policy?: PolicyLike }): Promise<EvalResultLike>;
  createSequence(options?: { contextSize?: number }): SequenceLike;
  generate(
    input: { tokens: number[] },
    options?: {
      maxTokens?: number;
      stopOnEos?: boolean;
      policy?: PolicyLike;
      temperature?: number;
      topK?: number;
      seed?: number;
      onToken?: (t: { executed: Uint8Array | number[] }) => void;
    },
  ): Promise<GenerateResultLike>;
  dispose(): Promise<void> | void;
}
export interface Depthgate {
  loadModel(dir: string, options?: Record<string, unknown>): Promise<ModelLike>;
  writeTinyModel(dir: string, options?: Record<string, unknown>): unknown;
  getBuildInfo(): {
    cpuKernels: string;
    cuda: { compiled: boolean; available: boolean; reason?: string; devices: { name: string }[] };
  };
}

/** depthgate (with depthgate/testing's writeTinyModel) from $DEPTHGATE_APP (the bundle's package root) or this repository's dist/. */
export function loadDepthgate(): Depthgate {
  const root = process.env.DEPTHGATE_APP ?? path.resolve(__dirname, '..', '..');
  // The test fixtures (writeTinyModel) are the package's depthgate/testing entry, not the main one.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const main = require(path.join(root, 'dist', 'index.js')) as Omit<Depthgate, 'writeTinyModel'>;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const testing = require(path.join(root, 'dist', 'testing', 'index.js')) as Pick<Depthgate, 'writeTinyModel'>;
  return { ...main, writeTinyModel: testing.writeTinyModel };
}

/** max |a - b| / max |b| over a row (the logits error the project's GPU tests use). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    num = Number.isNaN(d) ? Infinity : Math.max(num, d);
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** Random token ids in [lo, hi), deterministic for a seed (the same generator as test/helpers.ts). */
export function randomTokens(n: number, lo: number, hi: number, seed = 1): number[] {
  let s = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(lo + (s % (hi - lo)));
  }
  return out;
}

/**
 * The KV cache dtypes this build accepts as the `kvCacheType` load option, found by trying each
 * on a tiny model; an empty list when the option does not exist (then only the default is run).
 */
export async function supportedKvDtypes(dg: Depthgate, dir: string): Promise<{ dtypes: KvDtype[]; note: string }> {
  const dtypes: KvDtype[] = [];
  let note = '';
  for (const kv of ['f32', 'f16', 'bf16'] as KvDtype[]) {
    try {
      const m = await dg.loadModel(dir, { backend: 'cpu', threads: 1, kvCacheType: kv });
      await m.dispose();
      dtypes.push(kv);
    } catch (e) {
      note = `kvCacheType '${kv}' refused: ${(e as Error).message}`;
    }
  }
  return { dtypes, note };
}

/** Load options for a KV dtype: none when the build has no kvCacheType option. */
export function kvOption(kv: KvDtype | 'default'): Record<string, unknown> {
  return kv === 'default' ? {} : { kvCacheType: kv };
}

export function writeJson(file: string, value: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(
    file,
    JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 1) + '\n',
  );
}

/** --name value pairs and --flag switches. */
export function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const next = argv[i + 1];
    if (next !== undefined && !next.startsWith('--')) out[a.slice(2)] = argv[++i];
    else out[a.slice(2)] = 'true';
  }
  return out;
}

export function log(msg: string): void {
  process.stdout.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** The backend B of a comparison: CUDA, or (dry run, CI) the CPU with another thread count. */
export function backendB(which: string): Record<string, unknown> {
  return which === 'cuda' ? { backend: 'cuda' } : { backend: 'cpu', threads: 1 };
}
