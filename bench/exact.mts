// Exact mode (self-speculative decoding) on the default model: decode tokens/s against `none` for
// each draft policy and a sweep of maxDraft and minConfidence, greedy and sampled, on held-out
// prompts; acceptance; whether greedy output is identical to `none`; and the cost of one draft
// pass against a verify pass of k + 1 rows, on the default model and on the realistic-shape bench
// model (random weights: costs only).
// With --concurrent N (default 4; 0 = off), also N generations at once per configuration: their
// combined tokens/s against N plain ones, and how many passes under a draft policy carried another
// sequence's verification too (draft and verify rows of different sequences in one pass).
//   npm run bench:exact -- [--runs 3] [--tokens 48] [--prompts 4] [--bench-model] [--concurrent 4]
// Writes bench/results/exact-default.json. Medians with min and max over runs; every run goes
// through every configuration in turn, so a busy machine slows them all alike.
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { benchModelDir, depthgate, gitCommit, machine, median, saveResult } from './machine.mjs';

type Policy = import('../dist/index.js').Policy;
type SkipPolicy = import('../dist/index.js').SkipPolicy;
type Model = import('../dist/index.js').Model;

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '48' },
    prompts: { type: 'string', default: '4' },
    threads: { type: 'string', default: '2' },
    'cost-reps': { type: 'string', default: '30' },
    'bench-model': { type: 'boolean', default: false },
    // Only the configurations whose names contain one of these (comma-separated), besides none.
    only: { type: 'string' },
    'no-sampled': { type: 'boolean', default: false },
    concurrent: { type: 'string', default: '4' },
    out: { type: 'string', default: 'exact-default.json' },
  },
});
const loadAtStart = os.loadavg();
const runs = Number(values.runs);
const maxTokens = Number(values.tokens);
const threads = Number(values.threads);
const root = new URL('../..', import.meta.url).pathname;

// Held-out prompts: the first words of verses spread through the held-out split.
const lines = fs
  .readFileSync(path.join(root, 'bench', 'data', 'kjv-heldout.txt'), 'utf8')
  .split('\n')
  .filter(Boolean);
const nPrompts = Number(values.prompts);
const prompts = Array.from({ length: nPrompts }, (_, i) =>
  lines[Math.floor(((i + 0.5) * lines.length) / nPrompts)]!.split(' ').slice(0, 5).join(' '),
);

const drafts: [string, SkipPolicy][] = [
  ['flexidepth', { type: 'flexidepth' }],
  ['skiplayer', { type: 'skiplayer' }],
  ['d3', { type: 'd3', alpha: 0.9 }],
  // The four layers block_influence.json says matter least.
  ['static', { type: 'static', skipLayers: [3, 4, 8, 11] }],
];
interface Config {
  name: string;
  policy: Policy;
}
let greedyConfigs: Config[] = [{ name: 'none', policy: { type: 'none' } }];
for (const [name, draft] of drafts)
  for (const maxDraft of [2, 4])
    for (const minConfidence of [0, 0.6])
      greedyConfigs.push({
        name: `${name} k=${maxDraft} conf=${minConfidence}`,
        policy: { type: 'speculative', draft, maxDraft, minConfidence },
      });
for (const [name, draft] of drafts)
  greedyConfigs.push({
    name: `${name} k=6 adaptive(0.8)`,
    policy: { type: 'speculative', draft, maxDraft: 6, targetAcceptance: 0.8 },
  });
// Draft-only speed (approximate output), for reference.
for (const [name, draft] of drafts) greedyConfigs.push({ name: `${name} (draft alone, not exact)`, policy: draft });
let sampledConfigs: Config[] = [{ name: 'none', policy: { type: 'none' } }];
for (const [name, draft] of drafts)
  sampledConfigs.push({ name: `${name} k=2 conf=0`, policy: { type: 'speculative', draft, maxDraft: 2 } });
const only = values.only?.split(',');
const keep = (cs: Config[]) =>
  only ? cs.filter((c) => c.name === 'none' || only.some((o) => c.name.includes(o))) : cs;
greedyConfigs = keep(greedyConfigs);
sampledConfigs = values['no-sampled'] ? [] : keep(sampledConfigs);
const SAMPLING = { temperature: 0.8, topK: 40, topP: 0.95 };

// Greedy unless a run sets a temperature (generationConfig: false: the model's file would sample).
const model = await depthgate.loadModel(depthgate.defaultModelDir(), {
  addons: ['flexidepth-p3e-4.safetensors', 'skiplayer.safetensors'].map((f) =>
    path.join(depthgate.defaultModelDir(), f),
  ),
  threads,
  generationConfig: false,
});

interface RunResult {
  tps: number;
  tokens: number[][];
  drafted: number;
  accepted: number;
  verifications: number;
  layersPerToken: number;
}
async function runConfig(c: Config, sampled: boolean, run: number): Promise<RunResult> {
  let decodeMs = 0;
  let decoded = 0;
  let drafted = 0;
  let accepted = 0;
  let verifications = 0;
  let layers = 0;
  const tokens: number[][] = [];
  for (const [i, p] of prompts.entries()) {
    const r = await model.generate(p, {
      maxTokens,
      stopOnEos: false,
      policy: c.policy,
      ...(sampled ? { ...SAMPLING, seed: 1000 * run + i } : {}),
    });
    decodeMs += r.timings.decodeMs;
    decoded += r.tokens.length - 1;
    tokens.push(r.tokens);
    if (r.speculative) {
      drafted += r.speculative.drafted;
      accepted += r.speculative.accepted;
      verifications += r.speculative.verifications;
      layers += r.speculative.layersPerToken * (r.tokens.length - 1);
    }
  }
  return {
    tps: (decoded * 1000) / decodeMs,
    tokens,
    drafted,
    accepted,
    verifications,
    layersPerToken: layers / decoded,
  };
}

const stats = (xs: number[]) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });

async function sweep(configs: Config[], sampled: boolean) {
  await runConfig(configs[0]!, sampled, 0); // warm-up
  const perRun: RunResult[][] = [];
  for (let run = 0; run < runs; run++) {
    const row: RunResult[] = [];
    for (const c of configs) row.push(await runConfig(c, sampled, run));
    perRun.push(row);
    console.error(`${sampled ? 'sampled' : 'greedy'} run ${run + 1}/${runs} done`);
  }
  return configs.map((c, j) => {
    const rs = perRun.map((row) => row[j]!);
    const r0 = rs[0]!;
    const speedups = perRun.map((row) => row[j]!.tps / row[0]!.tps);
    return {
      config: c.name,
      policy: c.policy,
      tokensPerSecond: stats(rs.map((r) => r.tps)),
      speedupVsNone: stats(speedups),
      ...(c.policy.type === 'speculative'
        ? {
            acceptanceRate: r0.drafted ? r0.accepted / r0.drafted : 0,
            meanDraftLength: r0.verifications ? r0.drafted / r0.verifications : 0,
            tokensPerVerification: r0.verifications ? (r0.accepted + r0.verifications) / r0.verifications : 0,
            layersPerToken: r0.layersPerToken,
          }
        : {}),
      ...(sampled
        ? {}
        : { identicalToNone: rs.every((r, k) => JSON.stringify(r.tokens) === JSON.stringify(perRun[k]![0]!.tokens)) }),
    };
  });
}

/** Median ms of one pass: a single row under each draft policy, and full-depth passes of k + 1 rows. */
async function passCosts(model: Model, draftsHere: [string, SkipPolicy][], reps: number) {
  // The internal pass API (Model.run), to time single passes.
  type Run = (r: import('../dist/binding.js').NativeRequest, p?: Policy) => Promise<unknown>;
  const m = model as unknown as { run: Run };
  const seq = model.createSequence({ contextSize: 256 });
  const ns = (seq as unknown as { ns: import('../dist/binding.js').NativeSequence }).ns;
  const prompt = Int32Array.from({ length: 32 }, (_, i) => (i * 37) % 256);
  await m.run({ sequence: ns, tokens: prompt, logits: 'none' });
  const base = ns.length;
  const time = async (tokens: number, policy: Policy, logits: 'last' | 'all') => {
    const ms: number[] = [];
    for (let r = 0; r < reps; r++) {
      ns.truncate(base);
      const t0 = performance.now();
      await m.run(
        { sequence: ns, tokens: Int32Array.from({ length: tokens }, (_, i) => 5 + i), logits, genIndex: 1 },
        policy,
      );
      ms.push(performance.now() - t0);
    }
    return stats(ms);
  };
  const draft: Record<string, unknown> = { none: await time(1, { type: 'none' }, 'last') };
  for (const [name, p] of draftsHere) draft[name] = await time(1, p, 'last');
  const verify: Record<string, unknown> = {};
  for (let k = 0; k <= 6; k++) verify[`${k + 1} rows`] = await time(k + 1, { type: 'none' }, 'all');
  seq.dispose();
  return { draftPassMs: draft, verifyPassMs: verify };
}

/** Every native forward pass of `model` while `fn` runs: its policy, and per request its rows and whether it ran at full depth. */
async function observed<T>(
  fn: () => Promise<T>,
): Promise<{ value: T; passes: { policy: string; rows: [number, boolean][] }[] }> {
  type Forward = (rq: { tokens: Int32Array; fullDepth?: boolean }[], p?: { type?: string }) => Promise<unknown>;
  const holder = model as unknown as { nm: { forward: Forward } };
  const nm = holder.nm;
  const passes: { policy: string; rows: [number, boolean][] }[] = [];
  holder.nm = new Proxy(nm, {
    get(target, prop) {
      if (prop === 'forward')
        return (rq: Parameters<Forward>[0], p?: { type?: string }) => {
          passes.push({ policy: p?.type ?? 'none', rows: rq.map((r) => [r.tokens.length, r.fullDepth === true]) });
          return target.forward(rq, p);
        };
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  try {
    return { value: await fn(), passes };
  } finally {
    holder.nm = nm;
  }
}

/** N greedy generations at once (the prompts in turn): combined generated tokens/s over the wall time, prefill included. */
async function runConcurrent(c: Config, n: number) {
  const t0 = performance.now();
  const { value: rs, passes } = await observed(() =>
    Promise.all(
      Array.from({ length: n }, (_, i) =>
        model.generate(prompts[i % prompts.length]!, { maxTokens, stopOnEos: false, policy: c.policy }),
      ),
    ),
  );
  const ms = performance.now() - t0;
  const underDraft = passes.filter((p) => p.policy !== 'none');
  return {
    tps: (rs.reduce((a, r) => a + r.tokens.length, 0) * 1000) / ms,
    tokens: rs.map((r) => r.tokens),
    passes: passes.length,
    draftPolicyPasses: underDraft.length,
    // A one-row draft beside a full-depth verification of several rows.
    mixedPasses: underDraft.filter((p) => p.rows.some(([k, f]) => !f && k === 1) && p.rows.some(([k, f]) => f && k > 1))
      .length,
  };
}

async function concurrentSweep(n: number) {
  const names = [
    'none',
    'skiplayer k=2 conf=0',
    'flexidepth k=4 conf=0.6',
    'flexidepth k=6 adaptive(0.8)',
    'static k=4 conf=0.6',
  ];
  const configs = greedyConfigs.filter((c) => names.includes(c.name));
  await runConcurrent(configs[0]!, n); // warm-up
  const perRun: Awaited<ReturnType<typeof runConcurrent>>[][] = [];
  for (let run = 0; run < runs; run++) {
    const row = [];
    for (const c of configs) row.push(await runConcurrent(c, n));
    perRun.push(row);
    console.error(`concurrent run ${run + 1}/${runs} done`);
  }
  return configs.map((c, j) => {
    const rs = perRun.map((row) => row[j]!);
    return {
      config: c.name,
      streams: n,
      tokensPerSecond: stats(rs.map((r) => r.tps)),
      speedupVsNone: stats(perRun.map((row) => row[j]!.tps / row[0]!.tps)),
      passes: rs[0]!.passes,
      draftPolicyPasses: rs[0]!.draftPolicyPasses,
      mixedDraftVerifyPasses: rs[0]!.mixedPasses,
      identicalToNone: rs.every((r, k) => JSON.stringify(r.tokens) === JSON.stringify(perRun[k]![0]!.tokens)),
    };
  });
}

const reps = Number(values['cost-reps']);
const nConcurrent = Number(values.concurrent);
const greedy = await sweep(greedyConfigs, false);
const sampled = sampledConfigs.length ? await sweep(sampledConfigs, true) : [];
const concurrent = nConcurrent > 0 ? await concurrentSweep(nConcurrent) : [];
const costsDefault = await passCosts(model, drafts, reps);
await model.dispose();

let costsBench: unknown = 'not run (pass --bench-model)';
if (values['bench-model']) {
  const bm = await depthgate.loadModel(benchModelDir(), { threads });
  // No routers in the random bench model: the host-planned drafts at about a third skipped.
  costsBench = await passCosts(
    bm,
    [
      ['d3 alpha=0.9 (depth 14 at token 1)', { type: 'd3', alpha: 0.9 }],
      ['static skip 5 of 16', { type: 'static', skipLayers: [3, 5, 7, 9, 11] }],
    ],
    Math.max(5, Math.floor(reps / 3)),
  );
  await bm.dispose();
}

const result = {
  benchmark: 'exact-default',
  command: ['npm run bench:exact', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  date: new Date().toISOString(),
  commit: gitCommit(),
  machine: machine(),
  // 1, 5 and 15 minute load averages when the run began and ended (the machine is shared).
  loadAverage: { start: loadAtStart, end: os.loadavg() },
  note: `${
    loadAtStart[0]! < 1
      ? 'quiet machine (1-minute load average below 1 when the run began; the run itself adds about 2)'
      : 'shared machine, busy during the run (see loadAverage): absolute figures are noisy'
  }; speedups are per-run ratios to none measured in the same run`,
  model: 'models/default (12 layers, hidden 256, 8.1 M parameters, bf16) + flexidepth-p3e-4 and skiplayer add-ons',
  threads,
  prompts,
  maxTokens,
  runs,
  sampling: SAMPLING,
  greedy,
  sampled,
  concurrent,
  passCosts: { defaultModel: costsDefault, benchModel: costsBench },
};
const file = saveResult(values.out!, result);
const show = (rows: typeof greedy) =>
  console.table(
    Object.fromEntries(
      rows.map((r) => [
        r.config,
        {
          'tok/s': r.tokensPerSecond.median.toFixed(1),
          speedup: `${r.speedupVsNone.median.toFixed(2)} (${r.speedupVsNone.min.toFixed(2)}-${r.speedupVsNone.max.toFixed(2)})`,
          accept: 'acceptanceRate' in r ? (r.acceptanceRate as number).toFixed(2) : '',
          'tok/verify': 'tokensPerVerification' in r ? (r.tokensPerVerification as number).toFixed(2) : '',
          identical: 'identicalToNone' in r ? String(r.identicalToNone) : '',
        },
      ]),
    ),
  );
show(greedy);
show(sampled);
if (concurrent.length)
  console.table(
    Object.fromEntries(
      concurrent.map((r) => [
        `${r.config} x${r.streams}`,
        {
          'tok/s': r.tokensPerSecond.median.toFixed(1),
          speedup: `${r.speedupVsNone.median.toFixed(2)} (${r.speedupVsNone.min.toFixed(2)}-${r.speedupVsNone.max.toFixed(2)})`,
          passes: r.passes,
          'mixed draft+verify': `${r.mixedDraftVerifyPasses} of ${r.draftPolicyPasses}`,
          identical: String(r.identicalToNone),
        },
      ]),
    ),
  );
console.log(JSON.stringify(result.passCosts, null, 1));
console.log(`wrote ${file}`);
