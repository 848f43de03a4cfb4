// Decode speed of the bench model (BENCH_SHAPE) with its weights as stored (bf16) and quantized on
// load to Q8_0, Q4_0 and Q4_K (llama.cpp's Q4_K_M mix of Q4_K and Q6_K), at a fixed thread count, against each format's read floor: the bytes a
// decode token reads divided by a streaming-read bandwidth measured with the same threads in the
// same run. The models are loaded side by side and timed in alternation (one generate call
// each per round), so drift of a shared machine hits all of them alike.
//   npm run bench:quant      (writes bench/results/cpu-quant.json)
// Options: --threads 2 --tokens 48 --runs 7
import { parseArgs } from 'node:util';
import {
  BENCH_SHAPE,
  benchModelDir,
  depthgate,
  gitCommit,
  machine,
  median,
  readBandwidth,
  saveResult,
} from './machine.mjs';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    tokens: { type: 'string', default: '48' },
    runs: { type: 'string', default: '7' },
    out: { type: 'string', default: 'cpu-quant.json' },
  },
});
const threads = Number(values.threads);
const nTokens = Number(values.tokens);
const runs = Number(values.runs);
const dir = benchModelDir();
const formats = ['stored', 'q8_0', 'q4_0', 'q4_k'] as const;

const models: Awaited<ReturnType<typeof depthgate.loadModel>>[] = [];
for (const weights of formats) models.push(await depthgate.loadModel(dir, { threads, weights }));
// Per decode token every layer matrix and the LM head are read once; of the embedding table (kept
// in bf16 in every format) one row.
const embedBytes = 2 * BENCH_SHAPE.vocabSize * BENCH_SHAPE.hidden;
const bytesPerToken = models.map((m) => m.info.weightBytes - embedBytes);
const bandwidth = readBandwidth(threads);

const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);
for (const m of models)
  await m.generate({ tokens: prompt }, { maxTokens: 4, stopOnEos: false, policy: { type: 'none' } });
const perToken: number[][] = formats.map(() => []);
for (let r = 0; r < runs; r++) {
  for (let f = 0; f < models.length; f++) {
    const res = await models[f]!.generate(
      { tokens: prompt },
      { maxTokens: nTokens, stopOnEos: false, policy: { type: 'none' } },
    );
    perToken[f]!.push(res.timings.decodeMs / (res.tokens.length - 1));
  }
}
const rows = formats.map((weights, f) => {
  const ms = median(perToken[f]!);
  const floorMs = (bytesPerToken[f]! / bandwidth) * 1e3;
  return {
    weights,
    dtype: models[f]!.info.dtype,
    quantizeMs: Math.round(models[f]!.info.quantizeMs),
    bytesPerToken: bytesPerToken[f]!,
    msPerToken: { median: ms, min: Math.min(...perToken[f]!), max: Math.max(...perToken[f]!) },
    tokensPerSecond: 1000 / ms,
    readFloorMs: floorMs,
    timesFloor: ms / floorMs,
  };
});
for (const m of models) await m.dispose();

const result = {
  benchmark: 'cpu-quant',
  command: ['npm run bench:quant', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  date: new Date().toISOString(),
  gitCommit: gitCommit(),
  machine: machine(),
  note: 'a shared machine: other jobs ran during the measurement; models timed in alternation, medians with min and max',
  model: BENCH_SHAPE,
  threads,
  tokensPerRun: nTokens,
  runs,
  readBandwidthGBs: bandwidth / 1e9,
  results: rows,
  speedupVsStored: Object.fromEntries(rows.map((r) => [r.weights, rows[0]!.msPerToken.median / r.msPerToken.median])),
};
console.log(JSON.stringify(result, null, 2));
console.error(`wrote ${saveResult(values.out!, result)}`);
