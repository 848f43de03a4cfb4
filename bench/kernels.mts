// Kernel microbenchmarks (tinybench): matrix-vector (decode) in GB/s of weights and
// matrix-matrix (prefill) in GFLOP/s, per weight dtype, next to the copy bandwidth.
//   npm run bench:kernels
import * as os from 'node:os';
import { Bench } from 'tinybench';
import { binding, copyBandwidth, machine, saveResult } from './machine.mjs';

const k = binding.native().kernels;
const threads = os.availableParallelism();
const rows = 4096;
const cols = 4096;
const x1 = Float32Array.from({ length: cols }, (_, i) => Math.sin(i));
const x64 = Float32Array.from({ length: 64 * cols }, (_, i) => Math.cos(i));
const out = new Float32Array(64 * rows);
const weights = {
  f32: Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 0.37) * 0.02),
  bf16: Uint16Array.from({ length: rows * cols }, (_, i) => 0x3c00 + (i % 255)),
  f16: Uint16Array.from({ length: rows * cols }, (_, i) => 0x2000 + (i % 1023)),
};
const bench = new Bench({ time: 500, warmupTime: 100 });
for (const [dtype, data] of Object.entries(weights) as [keyof typeof weights, Float32Array | Uint16Array][]) {
  const w = { data, dtype, rows, cols };
  bench.add(`matvec ${dtype} 4096x4096`, () => k.matmul(out, x1, 1, w, threads));
  bench.add(`matmul ${dtype} 64x4096x4096`, () => k.matmul(out, x64, 64, w, threads));
}
const normX = new Float32Array(64 * 4096).map((_, i) => Math.sin(i));
const normW = new Float32Array(4096).fill(1.1);
bench.add('rmsnorm 64x4096', () => k.rmsnorm(out, normX, 64, 4096, normW, 1e-5, threads));
await bench.run();

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
  let ofCopy = NaN;
  if (name.startsWith('matvec')) {
    value = (weights[dtype].byteLength / s) / 1e9;
    metric = 'GB/s of weights';
    ofCopy = (value * 1e9) / bw;
  } else if (name.startsWith('matmul')) {
    value = (2 * 64 * rows * cols) / s / 1e9;
    metric = 'GFLOP/s';
  } else {
    value = (2 * normX.byteLength) / s / 1e9;
    metric = 'GB/s';
    ofCopy = (value * 1e9) / bw;
  }
  rowsOut.push({ kernel: name, 'mean ms': +meanMs.toFixed(3), [metric]: +value.toFixed(2), metric, 'of copy bw': Number.isNaN(ofCopy) ? '' : +ofCopy.toFixed(2) });
}
console.log(`copy bandwidth: ${(bw / 1e9).toFixed(2)} GB/s, ${threads} threads`);
console.table(rowsOut.map(({ metric: _m, ...r }) => r));
console.log(`saved ${saveResult('cpu-kernels.json', {
  benchmark: 'cpu-kernels', command: 'npm run bench:kernels', date: new Date().toISOString(), machine: machine(), threads,
  copyBandwidthGBs: bw / 1e9, results: rowsOut,
})}`);
