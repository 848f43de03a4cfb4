// CPU decode time per token for a realistic-shape model against this machine's floor:
// (weight bytes read per token) / (read bandwidth: a streaming read over 1 GiB on the same threads,
// measured in the same run, before each decode run). The copy bandwidth is kept beside it (a copy
// understates what a read-only pass reaches, so a floor on it is too low a bar).
// The machine is shared and noisy: every figure is the median over the runs, with min and max.
//   npm run bench            (writes bench/results/cpu-decode.json)
// Options: --hidden 1024 --layers 16 --threads N --tokens 64
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import {
  copyBandwidth,
  depthgate,
  gitCommit,
  machine,
  median,
  readBandwidth,
  saveResult,
  spread,
  testing,
} from './machine.mjs';

const { values } = parseArgs({
  options: {
    hidden: { type: 'string', default: '1024' },
    layers: { type: 'string', default: '16' },
    intermediate: { type: 'string', default: '2816' },
    vocab: { type: 'string', default: '32000' },
    dtype: { type: 'string', default: 'bf16' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
    tokens: { type: 'string', default: '64' },
    runs: { type: 'string', default: '5' },
    out: { type: 'string', default: 'cpu-decode.json' },
  },
});
const hidden = Number(values.hidden);
const shape = {
  arch: 'llama' as const,
  hidden,
  layers: Number(values.layers),
  heads: hidden / 64,
  kvHeads: Math.max(1, hidden / 256),
  intermediate: Number(values.intermediate),
  vocabSize: Number(values.vocab),
  dtype: values.dtype as 'bf16',
  maxPositions: 4096,
  seed: 1,
};
const dir = path.join(os.tmpdir(), `depthgate-bench-${shape.hidden}x${shape.layers}-${shape.dtype}`);
if (!fs.existsSync(path.join(dir, 'config.json'))) {
  console.error(`writing a random ${shape.dtype} model to ${dir} ...`);
  testing.writeTinyModel(dir, shape);
}

const threads = Number(values.threads);
const model = await depthgate.loadModel(dir, { threads });
const info = model.info;
const c = model.config;
// Per decode token every layer weight and the LM head are read once; the embedding is one row.
const embedBytes = (info.weightBytes / info.parameters) * c.vocabSize * c.hiddenSize;
const bytesPerToken = info.weightBytes - embedBytes;

const nTokens = Number(values.tokens);
const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);
await model.generate({ tokens: prompt }, { maxTokens: 4, stopOnEos: false }); // warm-up
const perToken: number[] = [];
const prefillMs: number[] = [];
const readBw: number[] = [];
const copyBw: number[] = [];
for (let r = 0; r < Number(values.runs); r++) {
  readBw.push(readBandwidth(threads));
  copyBw.push(copyBandwidth());
  const res = await model.generate({ tokens: prompt }, { maxTokens: nTokens, stopOnEos: false });
  perToken.push(res.timings.decodeMs / (res.tokens.length - 1));
  prefillMs.push(res.timings.prefillMs);
}
await model.dispose();
const ms = median(perToken);
const readFloorMs = (bytesPerToken / median(readBw)) * 1e3;
const copyFloorMs = (bytesPerToken / median(copyBw)) * 1e3;
const result = {
  benchmark: 'cpu-decode',
  command: ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  commit: gitCommit(),
  date: new Date().toISOString(),
  machine: machine(),
  loadAverage: os.loadavg().map((x) => +x.toFixed(2)),
  note: 'figures: median over runs [min, max]; the machine is shared, so they are noisy. Floor = weight bytes per token / read bandwidth (a streaming read over 1 GiB on the same threads, measured before each run); the copy figures are kept for comparison (STREAM convention, 1 thread)',
  model: { ...shape, parameters: info.parameters, weightBytes: info.weightBytes },
  threads,
  runs: Number(values.runs),
  bytesPerTokenMB: bytesPerToken / 1e6,
  readBandwidthGBs: spread(readBw.map((x) => x / 1e9)),
  copyBandwidthGBs: spread(copyBw.map((x) => x / 1e9)),
  readFloorMsPerToken: readFloorMs,
  copyFloorMsPerToken: copyFloorMs,
  decodeMsPerToken: spread(perToken),
  decodeTokensPerSecond: 1000 / ms,
  ratioToReadFloor: ms / readFloorMs,
  ratioToCopyFloor: ms / copyFloorMs,
  // Each run against the floor of its own read measurement: the spread of the ratio.
  ratioToReadFloorPerRun: spread(perToken.map((t, i) => t / ((bytesPerToken / readBw[i]) * 1e3))),
  prefill16TokensMs: median(prefillMs),
  runsMsPerToken: perToken,
};
const f = (x: { median: number; min: number; max: number }, d = 2) =>
  `${x.median.toFixed(d)} [${x.min.toFixed(d)}, ${x.max.toFixed(d)}]`;
console.table({
  'read bandwidth (GB/s)': f(result.readBandwidthGBs),
  'copy bandwidth (GB/s)': f(result.copyBandwidthGBs),
  'weight bytes per token (MB)': result.bytesPerTokenMB.toFixed(1),
  'read floor (ms/token)': readFloorMs.toFixed(2),
  'copy floor (ms/token)': copyFloorMs.toFixed(2),
  'decode (ms/token)': f(result.decodeMsPerToken),
  'decode (tokens/s)': result.decodeTokensPerSecond.toFixed(1),
  'ratio to read floor': result.ratioToReadFloor.toFixed(2),
  'ratio to copy floor': result.ratioToCopyFloor.toFixed(2),
});
console.log(`saved ${saveResult(values.out!, result)}`);
