// Kernel microbenchmarks (tinybench): matrix-vector (decode) in GB/s of weights and
// matrix-matrix (prefill) in GFLOP/s, per weight dtype, next to the read bandwidth (a streaming
// read over 1 GiB on the same threads) and the copy bandwidth measured in the same run.
// Each call reads the next of several distinct matrices (256 MiB in all per dtype, far beyond
// any cache), as decode does, so a matrix-vector figure is a memory figure, not a cache one.
//   npm run bench:kernels
import * as os from 'node:os';
import { Bench } from 'tinybench';
import { binding, copyBandwidth, gitCommit, machine, readBandwidth, saveResult } from './machine.mjs';

const k = binding.native().kernels;
const threads = os.availableParallelism();
const rows = 4096;
const cols = 4096;
const x1 = Float32Array.from({ length: cols }, (_, i) => Math.sin(i));
const x64 = Float32Array.from({ length: 64 * cols }, (_, i) => Math.cos(i));
const out = new Float32Array(64 * rows);
const setBytes = 256 * 2 ** 20;
type Data = Float32Array | Uint16Array;
function copies(make: (j: number) => Data): Data[] {
  const first = make(0);
  return [
    first,
    ...Array.from({ length: Math.max(1, Math.round(setBytes / first.byteLength)) - 1 }, (_, j) => make(j + 1)),
  ];
}
const weights: Record<'f32' | 'bf16' | 'f16', Data[]> = {
  f32: copies((j) => Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 0.37 + j) * 0.02)),
  bf16: copies((j) => Uint16Array.from({ length: rows * cols }, (_, i) => 0x3c00 + ((i + j) % 255))),
  f16: copies((j) => Uint16Array.from({ length: rows * cols }, (_, i) => 0x2000 + ((i + j) % 1023))),
};
const bench = new Bench({ time: 500, warmupTime: 100 });
for (const [dtype, set] of Object.entries(weights) as [keyof typeof weights, Data[]][]) {
  const ws = set.map((data) => ({ data, dtype, rows, cols }));
  let i = 0;
  bench.add(`matvec ${dtype} 4096x4096`, () => k.matmul(out, x1, 1, ws[i++ % ws.length], threads));
  bench.add(`matmul ${dtype} 64x4096x4096`, () => k.matmul(out, x64, 64, ws[i++ % ws.length], threads));
}
const normX = new Float32Array(64 * 4096).map((_, i) => Math.sin(i));
const normW = new Float32Array(4096).fill(1.1);
bench.add('rmsnorm 64x4096', () => k.rmsnorm(out, normX, 64, 4096, normW, 1e-5, threads));
const readBefore = readBandwidth(threads);
await bench.run();
const read = Math.max(readBefore, readBandwidth(threads)); // the better of before and after
const bw = copyBandwidth();

const rowsOut: Record<string, string | number>[] = [];
for (const t of bench.tasks) {
  const r = t.result as { latency?: { mean: number } } | undefined;
  const meanMs = r?.latency?.mean ?? NaN;
  const s = meanMs / 1e3;
  const name = t.name;
  const dtype = name.split(' ')[1] as keyof typeof weights;
  let metric = '';
  let value = NaN;
  let ofRead = NaN;
  if (name.startsWith('matvec')) {
    value = weights[dtype][0].byteLength / s / 1e9;
    metric = 'GB/s of weights';
    ofRead = (value * 1e9) / read;
  } else if (name.startsWith('matmul')) {
    value = (2 * 64 * rows * cols) / s / 1e9;
    metric = 'GFLOP/s';
  } else {
    value = (2 * normX.byteLength) / s / 1e9; // in cache: not a memory figure
    metric = 'GB/s';
  }
  rowsOut.push({
    kernel: name,
    'mean ms': +meanMs.toFixed(3),
    [metric]: +value.toFixed(2),
    metric,
    'of read bw': Number.isNaN(ofRead) ? '' : +ofRead.toFixed(2),
  });
}
console.log(
  `read bandwidth: ${(read / 1e9).toFixed(2)} GB/s (${threads} threads), copy bandwidth: ${(bw / 1e9).toFixed(2)} GB/s (1 thread)`,
);
console.table(rowsOut.map(({ metric: _m, ...r }) => r));
console.log(
  `saved ${saveResult('cpu-kernels.json', {
    benchmark: 'cpu-kernels',
    command: 'npm run bench:kernels',
    commit: gitCommit(),
    date: new Date().toISOString(),
    machine: machine(),
    threads,
    loadAverage: os.loadavg().map((x) => +x.toFixed(2)),
    note: `matrix-vector and matrix-matrix cycle through ${weights.f32.length} (f32) or ${weights.bf16.length} (bf16, f16) distinct 4096x4096 matrices; one run on a shared machine`,
    readBandwidthGBs: read / 1e9,
    copyBandwidthGBs: bw / 1e9,
    results: rowsOut,
  })}`,
);
