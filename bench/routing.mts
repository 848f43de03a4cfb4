// Routed-layer benchmark on the CPU, against the ideal:
//  - prefill of a realistic-shape model with 25/50/75% of tokens active (FlexiDepth routers on
//    every layer, threshold set to give that fraction) against dense; the ideal time is the dense
//    time scaled by the routed work (K/V projections and routers for every row, queries,
//    attention, output and MLP for active rows, the adapter for skipped rows);
//  - batch-1 decode with k layers fully skipped (static policy) against full depth; the ideal
//    time is the full time scaled by the weight bytes still read (a skipped layer still reads
//    its K/V projections, because every token writes K/V). That ideal counts weight bytes only:
//    skipping also removes per-layer work that is not weight bytes (norms, attention over the
//    cache, RoPE, dispatch), so a time below it is expected, not a saving beyond 100%. The time
//    saved per skipped layer is reported beside the bytes-only prediction of it.
//   npm run bench:routing     (writes bench/results/cpu-routing.json)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { depthgate, gitCommit, machine, median, saveResult, testing } from './machine.mjs';

type Model = import('../dist/index.js').Model;
type WeightFormatOption = NonNullable<import('../dist/index.js').LoadOptions['weights']>;

const { values } = parseArgs({
  options: {
    hidden: { type: 'string', default: '1024' },
    layers: { type: 'string', default: '16' },
    intermediate: { type: 'string', default: '2816' },
    prompt: { type: 'string', default: '256' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
    runs: { type: 'string', default: '3' },
    // The formats the skipped-layer decode runs in (stored, or quantized on load), and whether the
    // routed prefill (bf16 only) is left out.
    weights: { type: 'string', default: 'stored,q8_0,q4_k' },
    'decode-only': { type: 'boolean', default: false },
    out: { type: 'string', default: 'cpu-routing.json' },
  },
});
const hidden = Number(values.hidden);
const L = Number(values.layers);
const ff = Number(values.intermediate);
const shape = {
  arch: 'llama' as const,
  hidden,
  layers: L,
  heads: hidden / 64,
  kvHeads: Math.max(1, hidden / 256),
  intermediate: ff,
  vocabSize: 32000,
  dtype: 'bf16' as const,
  maxPositions: 4096,
  seed: 1,
  flexidepth: { layers: Array.from({ length: L }, (_, i) => i) },
};
const dir = path.join(os.tmpdir(), `depthgate-bench-routed-${hidden}x${L}`);
if (!fs.existsSync(path.join(dir, 'config.json'))) {
  console.error(`writing a random bf16 model with FlexiDepth routers on every layer to ${dir} ...`);
  testing.writeTinyModel(dir, shape);
}
const threads = Number(values.threads);
const runs = Number(values.runs);
const model = await depthgate.loadModel(dir, { threads });
const c = model.config;
const T = Number(values.prompt);
const tokens = Array.from({ length: T }, (_, i) => (i * 7919) % 256);

async function timeEval(policy: import('../dist/policy.js').Policy): Promise<{ ms: number; active: number[] }> {
  await model.evaluate(tokens.slice(0, 16), { policy });
  const times: number[] = [];
  let active: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    const e = await model.evaluate(tokens, { policy });
    times.push(performance.now() - t0);
    active = Array.from({ length: L }, (_, l) => e.executed.reduce((s, row) => s + row[l], 0) / T);
  }
  return { ms: median(times), active };
}

// Per-row multiply-adds of each part of a layer (attention over a T-token prompt averages T/2 keys).
const d = hidden;
const qd = c.numHeads * c.headDim;
const kvd = c.numKvHeads * c.headDim;
const r = Math.max(2, Math.floor(d / 16));
const m = Math.max(2, Math.floor(ff / 16));
const work = {
  kv: 2 * d * kvd,
  q: d * qd,
  attn: 2 * (T / 2) * qd,
  o: qd * d,
  mlp: 3 * d * ff,
  router: d * r + r * d + d,
  adapter: 3 * d * m,
};
const lmHead = (d * c.vocabSize) / T; // the LM head runs for the last row only
const denseWork = L * (work.kv + work.q + work.attn + work.o + work.mlp) + lmHead;
function routedWork(active: number[]): number {
  let w = lmHead;
  for (const a of active)
    w += work.kv + work.router + a * (work.q + work.attn + work.o + work.mlp) + (1 - a) * work.adapter;
  return w;
}

// Thresholds giving 25/50/75% active rows overall: quantiles of the router weights.
const probe = await model.evaluate(tokens, { policy: { type: 'flexidepth', threshold: 0.5 } });
const ws = probe.routerWeights.flatMap((row) => Array.from(row)).sort((a, b) => a - b);
const dense = !values['decode-only'] ? await timeEval({ type: 'none' }) : { ms: 0, active: [] };
const prefill = [];
for (const frac of !values['decode-only'] ? [0.25, 0.5, 0.75, 1.0] : []) {
  const threshold = frac === 1 ? 0 : ws[Math.floor((1 - frac) * ws.length)];
  const res = await timeEval({ type: 'flexidepth', threshold });
  const activeMean = res.active.reduce((a, b) => a + b, 0) / L;
  const ideal = dense.ms * (routedWork(res.active) / denseWork);
  prefill.push({
    targetActive: frac,
    activeMeasured: +activeMean.toFixed(3),
    threshold: +threshold.toFixed(4),
    ms: +res.ms.toFixed(1),
    denseMs: +dense.ms.toFixed(1),
    idealMs: +ideal.toFixed(1),
    ratioToIdeal: +(res.ms / ideal).toFixed(3),
    speedupVsDense: +(dense.ms / res.ms).toFixed(3),
  });
}

// Decode at batch 1 with k layers skipped, in each format. The bytes a layer reads come from the
// model's weightBytes less what decode does not stream: the embedding table (bf16 in every format,
// one row read), the routers and adapters (bf16; a static policy runs none) and the LM head (in
// the format's head type: Q8_0 beside q8_0 / q4_0, Q6_K beside q4_k). A skipped layer still reads
// Wk and Wv (every token writes K/V), taken as their share of the layer's multiply-adds.
const HEAD_BYTES_PER_WEIGHT: Record<string, number> = { stored: 2, q8_0: 34 / 32, q4_0: 34 / 32, q4_k: 210 / 256 };
const layerWork = work.kv + work.q + work.o + work.mlp;
// ms per decode token of each policy, the policies run in turn each round (forward, then backward
// the next round) so that drift of a shared machine hits them alike; medians over the rounds.
async function decodeMs(m: Model, policies: import('../dist/policy.js').Policy[]): Promise<number[]> {
  const prompt = { tokens: tokens.slice(0, 8) };
  for (const policy of policies) await m.generate(prompt, { maxTokens: 4, stopOnEos: false, policy });
  const per: number[][] = policies.map(() => []);
  for (let i = 0; i < runs; i++) {
    const order = policies.map((_, j) => j);
    if (i % 2) order.reverse();
    for (const j of order) {
      const res = await m.generate(prompt, { maxTokens: 32, stopOnEos: false, policy: policies[j]! });
      per[j]!.push(res.timings.decodeMs / (res.tokens.length - 1));
    }
  }
  return per.map(median);
}
const info = model.info;
const routerBytesPerLayer = (work.router + work.adapter) * 2;
const decode: Record<string, string | number>[] = [];
for (const weights of values.weights!.split(',')) {
  if (!(weights in HEAD_BYTES_PER_WEIGHT))
    throw new Error(`--weights: ${weights} is not one of stored, q8_0, q4_0, q4_k`);
  const m =
    weights === 'stored' ? model : await depthgate.loadModel(dir, { threads, weights: weights as WeightFormatOption });
  const headBytes = d * c.vocabSize * HEAD_BYTES_PER_WEIGHT[weights]!;
  const embedBytes = d * c.vocabSize * 2;
  const layerBytes = (m.info.weightBytes - embedBytes - headBytes - L * routerBytesPerLayer - (L * 2 + 1) * d * 4) / L;
  const kvBytes = layerBytes * (work.kv / layerWork);
  const fullBytes = L * layerBytes + headBytes;
  try {
    const ks = [1, 4, 8];
    const skips = ks.map((k) => Array.from({ length: k }, (_, i) => Math.floor(L / 2) - Math.floor(k / 2) + i));
    const [full, ...times] = await decodeMs(m, [
      { type: 'none' },
      ...skips.map((skipLayers) => ({ type: 'static' as const, skipLayers })),
    ]);
    ks.forEach((k, i) => {
      const ms = times[i]!;
      const ideal = full! * ((fullBytes - k * (layerBytes - kvBytes)) / fullBytes);
      decode.push({
        weights,
        dtype: m.info.dtype,
        skippedLayers: k,
        ms: +ms.toFixed(2),
        fullMs: +full!.toFixed(2),
        bytesOnlyIdealMs: +ideal.toFixed(2),
        ratioToBytesOnlyIdeal: +(ms / ideal).toFixed(3),
        savedPerSkippedLayerMs: +((full! - ms) / k).toFixed(3),
        bytesOnlySavingPerLayerMs: +((full! - ideal) / k).toFixed(3),
        shareOfIdealSaving: +((full! - ms) / (full! - ideal)).toFixed(3),
      });
    });
  } finally {
    if (m !== model) await m.dispose();
  }
}
await model.dispose();
console.log(`prefill of ${T} tokens, ${L} layers, hidden ${hidden}, bf16, ${threads} threads:`);
console.table(prefill);
console.log('batch-1 decode with k layers skipped (static), per format:');
console.table(decode);
console.log(
  `saved ${saveResult(values.out!, {
    benchmark: 'cpu-routing',
    commit: gitCommit(),
    loadAverage: os.loadavg().map((x) => +x.toFixed(2)),
    command: ['npm run bench:routing', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
    date: new Date().toISOString(),
    machine: machine(),
    model: { ...shape, flexidepth: 'all layers', parameters: info.parameters },
    threads,
    promptTokens: T,
    note: 'ideal prefill = dense time x routed multiply-adds / dense multiply-adds; ideal decode = full time x weight bytes still read / full bytes (skipped layers still read Wk, Wv): bytes only, so per-layer costs that are not weight bytes make real times fall below it; figures are medians of runs on a shared machine',
    routerBytesPerLayer,
    prefill,
    decode,
  })}`,
);
