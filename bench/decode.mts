// CPU decode time per token for a realistic-shape model against this machine's floor:
// (weight bytes read per token) / (memory bandwidth measured by a copy in the same run).
//   npm run bench            (writes bench/results/cpu-decode.json)
// Options: --hidden 1024 --layers 16 --threads N --tokens 64
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { copyBandwidth, depthgate, machine, median, saveResult, testing } from './machine.mjs';

const { values } = parseArgs({
  options: {
    hidden: { type: 'string', default: '1024' },
    layers: { type: 'string', default: '16' },
    intermediate: { type: 'string', default: '2816' },
    vocab: { type: 'string', default: '32000' },
    dtype: { type: 'string', default: 'bf16' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
    tokens: { type: 'string', default: '64' },
    runs: { type: 'string', default: '3' },
    out: { type: 'string', default: 'cpu-decode.json' },
  },
});
const hidden = Number(values.hidden);
const shape = {
  arch: 'llama' as const, hidden, layers: Number(values.layers), heads: hidden / 64, kvHeads: Math.max(1, hidden / 256),
  intermediate: Number(values.intermediate), vocabSize: Number(values.vocab), dtype: values.dtype as 'bf16', maxPositions: 4096, seed: 1,
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

const bandwidth = copyBandwidth();
const floorMs = (bytesPerToken / bandwidth) * 1e3;
const nTokens = Number(values.tokens);
const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);
await model.generate({ tokens: prompt }, { maxTokens: 4, stopOnEos: false }); // warm-up
const perToken: number[] = [];
const prefillMs: number[] = [];
for (let r = 0; r < Number(values.runs); r++) {
  const res = await model.generate({ tokens: prompt }, { maxTokens: nTokens, stopOnEos: false });
  perToken.push(res.timings.decodeMs / (res.tokens.length - 1));
  prefillMs.push(res.timings.prefillMs);
}
await model.dispose();
const ms = median(perToken);
const result = {
  benchmark: 'cpu-decode',
  command: ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  date: new Date().toISOString(),
  machine: machine(),
  model: { ...shape, parameters: info.parameters, weightBytes: info.weightBytes },
  threads,
  copyBandwidthGBs: bandwidth / 1e9,
  bytesPerTokenMB: bytesPerToken / 1e6,
  floorMsPerToken: floorMs,
  decodeMsPerToken: ms,
  decodeTokensPerSecond: 1000 / ms,
  ratioToFloor: ms / floorMs,
  prefill16TokensMs: median(prefillMs),
  runsMsPerToken: perToken,
};
console.table({
  'copy bandwidth (GB/s)': result.copyBandwidthGBs.toFixed(2),
  'weight bytes per token (MB)': result.bytesPerTokenMB.toFixed(1),
  'floor (ms/token)': floorMs.toFixed(2),
  'decode (ms/token)': ms.toFixed(2),
  'decode (tokens/s)': result.decodeTokensPerSecond.toFixed(1),
  'ratio to floor': result.ratioToFloor.toFixed(2),
});
console.log(`saved ${saveResult(values.out!, result)}`);
