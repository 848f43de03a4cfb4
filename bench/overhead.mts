// Per-token fixed cost (issue 17): where a decode step's time goes, against the bytes floor.
//   npm run bench:overhead                      (writes bench/results/cpu-overhead.json)
//   npm run bench:overhead -- --llama-bench PATH/llama-bench   (default: the one that
//                                   scripts/build-llama-bench.sh builds, when it is there)
//   npm run bench:overhead -- --callgrind       (adds instruction counts per op, needs valgrind)
//
// For the default model and the realistic-shape bench model, each in a fresh process, full depth,
// greedy, batch 1:
// - generate(): ms per token through the whole API (scheduler, N-API call, tokens to text), with
//   decode ahead (the next step runs while JavaScript handles a token) and without it;
// - native: the same steps driven straight through the binding's forward() with the token fed
//   back, so generate (without decode ahead) - native is the JavaScript side of a step;
// - the floor: weight bytes read per token / streaming-read bandwidth with the same threads
//   (bench/machine.mts readBandwidth: a vectorised sum over 1 GiB), and the single-memcpy copy
//   figure beside it;
// - llama-bench (llama.cpp's own benchmark, when it is built; never committed) on the same
//   weights converted to a BF16 GGUF without changing a bit, -p 0 -n TOKENS, the same threads.
// Engines alternate (A B B A) so the machine's drift falls on all alike; medians with min and max.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  benchModelDir,
  copyBandwidth,
  depthgate,
  gitCommit,
  machine,
  readBandwidth,
  saveResult,
  spread,
  testing,
} from './machine.mjs';

const { values } = parseArgs({
  options: {
    child: { type: 'string' }, // 'generate' | 'native'
    model: { type: 'string', default: 'default' },
    models: { type: 'string', default: 'default,bench' },
    threads: { type: 'string' },
    tokens: { type: 'string', default: '128' },
    runs: { type: 'string', default: '5' },
    'llama-bench': { type: 'string' },
    callgrind: { type: 'boolean', default: false },
    out: { type: 'string', default: 'cpu-overhead.json' },
  },
});

const tokens = Number(values.tokens);
const threads = Number(values.threads ?? depthgate.getBuildInfo().usableProcessors);
const promptTokens = Array.from({ length: 8 }, (_, i) => 1 + i);

if (values.child) {
  // One measurement in this process: ms per decoded token, and the model's bytes per token.
  const dir = values.model === 'default' ? depthgate.defaultModelDir() : values.model!;
  const model = await depthgate.loadModel(dir, { threads, generationConfig: false });
  const policy = { type: 'none' as const };
  let msPerToken: number;
  let stepBytes = 0;
  let breakdown: Breakdown | undefined;
  if (values.child === 'generate') {
    const opts = { stopOnEos: false, policy, temperature: 0 };
    await model.generate({ tokens: promptTokens }, { ...opts, maxTokens: 8 });
    const r = await model.generate({ tokens: promptTokens }, { ...opts, maxTokens: tokens });
    msPerToken = 1000 / r.timings.decodeTokensPerSecond;
  } else {
    // The binding's forward() with one request per step, as the scheduler issues them, and no
    // other JavaScript: prompt, then decode steps feeding back the sampled token.
    type Nm = import('../dist/binding.js').NativeModel;
    const nm = (model as unknown as { live(): Nm }).live();
    const sample = {
      temperature: 0,
      topK: 0,
      topP: 1,
      repetitionPenalty: 1,
      frequencyPenalty: 0,
      presencePenalty: 0,
      penaltyWindow: 0,
    };
    const run = async (n: number) => {
      const seq = nm.createSequence(promptTokens.length + n + 1, 1);
      let [r] = await nm.forward([{ sequence: seq, tokens: Int32Array.from(promptTokens), logits: 'none', sample }]);
      const sum = { queueMs: 0, passMs: 0, deliverMs: 0 };
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) {
        [r] = await nm.forward([
          { sequence: seq, tokens: Int32Array.of(r!.token!), logits: 'none', sample, genIndex: i + 1 },
        ]);
        sum.queueMs += r!.timing.queueMs;
        sum.passMs += r!.timing.passMs;
        sum.deliverMs += r!.timing.deliverMs;
      }
      stepBytes = r!.weightBytes;
      const total = Number(process.hrtime.bigint() - t0) / 1e6 / n;
      breakdown = { queueMs: sum.queueMs / n, passMs: sum.passMs / n, deliverMs: sum.deliverMs / n };
      return total;
    };
    await run(8);
    msPerToken = await run(tokens);
  }
  console.log(JSON.stringify({ msPerToken, stepBytes, breakdown }));
  await model.dispose();
  process.exit(0);
}

const self = fileURLToPath(import.meta.url);

/** A native decode step's mean milliseconds: queued, in the pass, delivered back (NativeTiming). */
interface Breakdown {
  queueMs: number;
  passMs: number;
  deliverMs: number;
}

interface Measured {
  msPerToken: number;
  breakdown?: Breakdown;
  /** Weight bytes one decode step read (the native child reports it from forward()). */
  stepBytes?: number;
}

function child(kind: 'generate' | 'native', model: string, wrap: string[] = [], env: NodeJS.ProcessEnv = {}): Measured {
  const args = [
    process.execPath,
    self,
    '--child',
    kind,
    '--model',
    model,
    '--threads',
    String(threads),
    '--tokens',
    String(tokens),
  ];
  const cmd = [...wrap, ...args];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8', timeout: 1200000, env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`measurement failed (${kind}, ${model}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Measured;
}

// llama-bench on a GGUF of the same weights: its tokens/s for -p 0 -n tokens.
function llamaBench(exe: string, gguf: string): number {
  const r = spawnSync(
    exe,
    ['-m', gguf, '-t', String(threads), '-p', '0', '-n', String(tokens), '-r', '1', '-o', 'json'],
    {
      encoding: 'utf8',
      timeout: 600000,
    },
  );
  if (r.status !== 0) throw new Error(`llama-bench failed: ${r.stderr}`);
  const rows = JSON.parse(r.stdout) as { avg_ts: number; n_gen: number }[];
  const row = rows.find((x) => x.n_gen > 0);
  if (!row) throw new Error('llama-bench printed no generation row');
  return 1000 / row.avg_ts;
}

// Instruction counts inside Engine::forward per op (callgrind toggled on it), default model.
function callgrindBreakdown(): Record<string, number> {
  const out = path.join(os.tmpdir(), `depthgate-overhead-${process.pid}.callgrind`);
  child('native', 'default', [
    'valgrind',
    '--tool=callgrind',
    `--callgrind-out-file=${out}`,
    '--toggle-collect=dg::Engine::forward*',
  ]);
  const ann = spawnSync('callgrind_annotate', ['--inclusive=yes', '--threshold=100', out], { encoding: 'utf8' });
  fs.rmSync(out, { force: true });
  const shares: Record<string, number> = {};
  let total = 0;
  for (const line of ann.stdout.split('\n')) {
    const m = /^\s*([\d,]+) \([^)]*\)\s+[^\s:]+:(.*) \[/.exec(line);
    if (!m) continue;
    const ir = Number(m[1]!.replace(/,/g, ''));
    const fn = m[2]!;
    if (/dg::Engine::forward\(/.test(fn)) total = Math.max(total, ir);
    const op =
      /CpuOps::(\w+)\(/.exec(fn)?.[1] ?? (/dg::(sampleToken|rmsnorm|embedRows)\(/.exec(fn)?.[1] as string | undefined);
    if (op) shares[op] = Math.max(shares[op] ?? 0, ir);
  }
  if (total === 0) throw new Error(`callgrind_annotate showed no Engine::forward: ${ann.stderr}`);
  // Forward calls: decode steps + warm-up steps + the two 8-token prompt passes. Valgrind runs the
  // AVX2 kernels (it has no AVX-512), so these are the AVX2 variant's counts.
  const calls = tokens + 8 + 2;
  const result: Record<string, number> = { instructionsPerForwardCall: Math.round(total / calls) };
  for (const [op, ir] of Object.entries(shares)) result[`share:${op}`] = Number((ir / total).toFixed(4));
  return result;
}

const read = readBandwidth(threads);
const copy = copyBandwidth();
console.log(
  `read bandwidth (${threads} threads, 1 GiB): ${(read / 1e9).toFixed(1)} GB/s; memcpy ${(copy / 1e9).toFixed(1)} GB/s`,
);

// scripts/build-llama-bench.sh's output, unless a path is given.
const builtLlamaBench = path.join(
  fileURLToPath(new URL('../..', import.meta.url)),
  'bench/.peers/llama.cpp/build/bin/llama-bench',
);
const llamaBenchExe = values['llama-bench'] ?? (fs.existsSync(builtLlamaBench) ? builtLlamaBench : undefined);
if (!llamaBenchExe) console.log('llama-bench: not built (bash scripts/build-llama-bench.sh), so not compared');
const models: Record<string, string> = {};
for (const m of values.models!.split(',')) models[m] = m === 'default' ? 'default' : benchModelDir();
const runs = Number(values.runs);
const rows: Record<string, unknown>[] = [];
for (const [name, dir] of Object.entries(models)) {
  let gguf: string | undefined;
  if (llamaBenchExe) {
    gguf = path.join(os.tmpdir(), `depthgate-overhead-${name}-bf16.gguf`);
    if (!fs.existsSync(gguf)) testing.convertToGguf(name === 'default' ? depthgate.defaultModelDir() : dir, gguf);
  }
  const engines: { name: string; run: () => Measured }[] = [
    { name: 'generate', run: () => child('generate', dir) },
    // The same without decode ahead (native/engine_ahead.cc): what the round trip costs when it
    // does not overlap the pass.
    { name: 'generateNoAhead', run: () => child('generate', dir, [], { DEPTHGATE_DECODE_AHEAD: '0' }) },
    { name: 'native', run: () => child('native', dir) },
  ];
  if (gguf) engines.push({ name: 'llama-bench', run: () => ({ msPerToken: llamaBench(llamaBenchExe!, gguf!) }) });
  const got: number[][] = engines.map(() => []);
  const parts: Breakdown[] = [];
  let stepBytes = 0;
  for (let i = 0; i < runs; i++) {
    const order = i % 2 === 0 ? engines.map((_, k) => k) : engines.map((_, k) => engines.length - 1 - k);
    for (const k of order) {
      const r = engines[k]!.run();
      got[k]!.push(r.msPerToken);
      if (r.stepBytes) stepBytes = r.stepBytes;
      if (r.breakdown) parts.push(r.breakdown);
    }
  }
  const floorMs = (stepBytes / read) * 1000;
  const row: Record<string, unknown> = {
    model: name,
    threads,
    tokens,
    bytesPerToken: stepBytes,
    readFloorMs: floorMs,
    copyFloorMs: (stepBytes / copy) * 1000,
  };
  engines.forEach((e, k) => {
    const s = spread(got[k]!);
    row[e.name] = { msPerToken: s, tokensPerSecond: 1000 / s.median, overFloor: s.median / floorMs, runs: got[k] };
    console.log(
      `${name} ${e.name}: ${s.median.toFixed(3)} ms/token [${s.min.toFixed(3)}, ${s.max.toFixed(3)}] = ${(1000 / s.median).toFixed(1)} tokens/s, ${(s.median / floorMs).toFixed(2)}x the read floor (${floorMs.toFixed(3)} ms)`,
    );
  });
  const g = (row.generate as { msPerToken: { median: number } }).msPerToken.median;
  const g0 = (row.generateNoAhead as { msPerToken: { median: number } }).msPerToken.median;
  const n = (row.native as { msPerToken: { median: number } }).msPerToken.median;
  row.javascriptMsPerToken = g0 - n;
  console.log(
    `${name}: JavaScript side of a step ${(g0 - n).toFixed(3)} ms (generate without decode ahead - native); decode ahead saves ${(g0 - g).toFixed(3)} ms of it`,
  );
  // The native step split (medians over the native runs): the rest of it is the promise's
  // continuation and the next call's marshalling on the JavaScript thread.
  const split = {
    queueMs: spread(parts.map((p) => p.queueMs)).median,
    passMs: spread(parts.map((p) => p.passMs)).median,
    deliverMs: spread(parts.map((p) => p.deliverMs)).median,
  };
  if (row['llama-bench']) {
    // Issue 17's target: generate()'s tokens/s at least 90% of llama-bench's on the same weights.
    const l = (row['llama-bench'] as { msPerToken: { median: number } }).msPerToken.median;
    row.generateSpeedVsLlamaBench = l / g;
    console.log(`${name}: generate() at ${((100 * l) / g).toFixed(0)}% of llama-bench's tokens/s`);
  }
  row.nativeSplit = { ...split, restMs: n - split.queueMs - split.passMs - split.deliverMs };
  console.log(
    `${name} native step: queue ${split.queueMs.toFixed(3)} + pass ${split.passMs.toFixed(3)} + deliver ${split.deliverMs.toFixed(3)} + rest ${(n - split.queueMs - split.passMs - split.deliverMs).toFixed(3)} ms`,
  );
  rows.push(row);
}
const result: Record<string, unknown> = {
  machine: machine(),
  commit: gitCommit(),
  command: `npm run bench:overhead -- ${process.argv.slice(2).join(' ')}`.trim(),
  loadAverage: os.loadavg(),
  readBandwidthBytesPerSecond: read,
  copyBandwidthBytesPerSecond: copy,
  rows,
};
if (values.callgrind) {
  result.callgrind = callgrindBreakdown();
  console.log('instructions inside Engine::forward (default model):', result.callgrind);
}
console.log(`saved ${saveResult(values.out!, result)}`);
