// What the benchmarks ran on, and the memory bandwidth (a streaming read, and a copy) measured in the same run.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const require = createRequire(import.meta.url);
export const depthgate = require('../../dist/index.js') as typeof import('../dist/index.js');
export const binding = require('../../dist/binding.js') as typeof import('../dist/binding.js');
export const testing = require('../../dist/testing/index.js') as typeof import('../dist/testing/index.js');

export function machine() {
  const cpuinfo = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  const b = depthgate.getBuildInfo();
  return {
    cpu: model,
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    cpuKernels: b.cpuKernels,
    cpuFeatures: b.cpuFeatures,
    node: process.version,
    depthgate: b.version,
  };
}

/**
 * Copy bandwidth (STREAM convention: a copy of N bytes moves 2N), best of several copies of a
 * buffer far larger than the caches.
 */
export function copyBandwidth(bytes = 512 * 2 ** 20, reps = 8): number {
  const src = new Uint8Array(bytes);
  const dst = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 4096) src[i] = i & 255;
  const copy = binding.native().kernels.copy;
  copy(dst, src);
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    copy(dst, src);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return (2 * bytes) / best;
}

/**
 * Read bandwidth: a streaming sum over `bytes` (at least 1 GiB by default, far beyond the caches)
 * on `threads` threads, best of several passes. Decode reads weights and writes almost nothing, so
 * its floor is bytes read per token divided by this figure, not by the copy bandwidth.
 */
export function readBandwidth(threads: number, bytes = 2 ** 30, reps = 5): number {
  return new ReadProbe(threads, bytes).measure(reps);
}

/**
 * readBandwidth's buffer, kept, so the bandwidth can be measured again and again between timed
 * runs: on a shared machine it drifts within seconds, and a floor measured once beside a run
 * minutes later can even put a run below it.
 *
 * The buffer is laid out like the CPU backend's weights (2 MB aligned, advised for huge pages
 * where the kernel offers them), and every pass reads it twice, as one sequential stream per
 * thread and as eight interleaved streams per thread: which is faster depends on the machine (on
 * the AMD EPYC VM one stream, on the Intel Xeon VM eight), and the floor is the faster, what the
 * memory gives at best, not what one access pattern gets.
 */
export class ReadProbe {
  static readonly streamCounts = [1, 8] as const;
  private readonly src: Uint8Array;
  /** Whether the buffer was advised for transparent huge pages (and the kernel offers them). */
  readonly hugePages: boolean;
  /** The best bytes per second of each stream count over every measure() so far. */
  readonly bestByStreams = new Map<number, number>();

  constructor(
    private readonly threads: number,
    bytes = 2 ** 30,
  ) {
    const buf = binding.native().kernels.hugePageBuffer(bytes);
    this.src = buf.data;
    this.hugePages = buf.hugePages;
    for (let i = 0; i < bytes; i += 4096) this.src[i] = (i >>> 12) & 255; // touch every page first
    binding.native().kernels.readSum(this.src, threads);
  }

  /** Bytes per second, the best of `reps` passes of each stream count. */
  measure(reps = 5): number {
    const readSum = binding.native().kernels.readSum;
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
      for (const streams of ReadProbe.streamCounts) {
        const t0 = process.hrtime.bigint();
        readSum(this.src, this.threads, streams);
        const s = Number(process.hrtime.bigint() - t0) / 1e9;
        best = Math.min(best, s);
        this.bestByStreams.set(streams, Math.max(this.bestByStreams.get(streams) ?? 0, this.src.length / s));
      }
    }
    return this.src.length / best;
  }

  /** What the results record about how the floor was measured. */
  describe(): { hugePages: boolean; bestGBsByStreamsPerThread: Record<string, number> } {
    const byStreams: Record<string, number> = {};
    for (const [k, v] of this.bestByStreams) byStreams[String(k)] = Math.round(v / 1e7) / 100;
    return { hugePages: this.hugePages, bestGBsByStreamsPerThread: byStreams };
  }
}

/** Median, min and max of a list: how the benchmarks report a figure on a noisy machine. */
export function spread(xs: number[]): { median: number; min: number; max: number } {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

export function saveResult(name: string, data: unknown): string {
  const dir = new URL('../results/', import.meta.url);
  fs.mkdirSync(dir, { recursive: true });
  const file = new URL(name, dir);
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + '\n');
  return file.pathname;
}

/** The commit the benchmark ran at, with "-dirty" when the working tree had changes. */
export function gitCommit(): string {
  const root = new URL('../..', import.meta.url).pathname;
  const head = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout.trim();
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], {
    cwd: root,
    encoding: 'utf8',
  }).stdout.trim();
  return head ? head + (dirty ? '-dirty' : '') : 'unknown';
}

/** The realistic-shape bench model's parameters (a Llama with random bf16 weights, 246 M parameters). */
export const BENCH_SHAPE = {
  arch: 'llama' as const,
  hidden: 1024,
  layers: 16,
  heads: 16,
  kvHeads: 4,
  intermediate: 2816,
  vocabSize: 32000,
  dtype: 'bf16' as const,
  maxPositions: 4096,
  seed: 1,
};

/** The bench model's directory (written to the temporary folder the first time). */
export function benchModelDir(): string {
  const s = BENCH_SHAPE;
  const dir = path.join(os.tmpdir(), `depthgate-bench-${s.hidden}x${s.layers}-${s.dtype}`);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    console.error(`writing a random ${s.dtype} model to ${dir} ...`);
    testing.writeTinyModel(dir, s);
  }
  return dir;
}
