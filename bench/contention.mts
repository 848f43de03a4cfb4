// Decode speed when the machine is busy: tokens/s of the default model and of the realistic-shape
// bench model, at 1 and 2 threads and more threads than usable processors (the idle case:
// oversubscription must cost little), beside 0, 1 and 2 busy competitor processes that the
// benchmark starts and stops itself.
//   npm run bench:contention                 (writes bench/results/cpu-contention.json)
//   npm run bench:contention -- --before OLD.node
// --before names an earlier build of the addon: each case then runs both addons in turn
// (A B B A ...), so both see the same machine. Every measurement is a fresh process.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { depthgate, machine, median, saveResult, benchModelDir, gitCommit } from './machine.mjs';

const { values } = parseArgs({
  options: {
    child: { type: 'boolean', default: false },
    model: { type: 'string', default: 'default' },
    // Default: 1, 2, the usable processors, and more threads than that (twice as many, at least 4).
    threads: { type: 'string' },
    competitors: { type: 'string', default: '0,1,2' },
    models: { type: 'string', default: 'default,bench' },
    tokens: { type: 'string', default: '128' },
    runs: { type: 'string', default: '3' },
    before: { type: 'string' },
    out: { type: 'string', default: 'cpu-contention.json' },
  },
});

if (values.child) {
  // One measurement: load, warm up, decode `tokens` tokens at full depth, print tokens/s.
  const dir = values.model === 'default' ? depthgate.defaultModelDir() : values.model!;
  // Greedy, as the recorded results were measured (the default model's generation_config.json would sample).
  const model = await depthgate.loadModel(dir, { threads: Number(values.threads), generationConfig: false });
  const prompt = { tokens: Array.from({ length: 8 }, (_, i) => 1 + i) };
  const opts = { stopOnEos: false, policy: { type: 'none' as const } };
  await model.generate(prompt, { ...opts, maxTokens: 8 });
  // A pathological case (the old pool beside busy processes ran at ~1 token/s) ends after 20 s,
  // with the speed of the tokens it made.
  const r = await model.generate(prompt, {
    ...opts,
    maxTokens: Number(values.tokens),
    signal: AbortSignal.timeout(20000),
    stopOnAbort: true,
  });
  console.log(JSON.stringify({ tokensPerSecond: r.timings.decodeTokensPerSecond }));
  await model.dispose();
  process.exit(0);
}

const self = fileURLToPath(import.meta.url);
const usable = depthgate.getBuildInfo().usableProcessors;
const threadList = (values.threads ?? [...new Set([1, 2, usable, Math.max(4, 2 * usable)])].join(','))
  .split(',')
  .map(Number);
const competitorList = values.competitors!.split(',').map(Number);
const runs = Number(values.runs);
const engines: { name: string; env: NodeJS.ProcessEnv }[] = [{ name: 'this build', env: { ...process.env } }];
if (values.before) {
  const before = path.resolve(values.before);
  if (!fs.existsSync(before)) throw new Error(`--before: ${before} does not exist`);
  engines.push({ name: 'before', env: { ...process.env, DEPTHGATE_NATIVE_PATH: before } });
}
const models: Record<string, string> = {};
for (const m of values.models!.split(',')) models[m] = m === 'default' ? 'default' : benchModelDir();

// A competitor: one busy loop for at most `seconds`, so none outlives the benchmark.
function startCompetitors(n: number, seconds: number) {
  return Array.from({ length: n }, () =>
    spawn(
      process.execPath,
      ['-e', `const end = Date.now() + ${seconds * 1000}; let x = 0; while (Date.now() < end) x++;`],
      { stdio: 'ignore' },
    ),
  );
}

function measure(engine: (typeof engines)[number], model: string, threads: number): number {
  const r = spawnSync(
    process.execPath,
    [self, '--child', '--model', model, '--threads', String(threads), '--tokens', values.tokens!],
    {
      env: engine.env,
      encoding: 'utf8',
      timeout: 600000,
    },
  );
  if (r.status !== 0) throw new Error(`measurement failed (${engine.name}, ${model}, threads ${threads}): ${r.stderr}`);
  return (JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { tokensPerSecond: number }).tokensPerSecond;
}

interface Row {
  model: string;
  threads: number;
  competitors: number;
  engine: string;
  medianTokensPerSecond: number;
  minTokensPerSecond: number;
  maxTokensPerSecond: number;
  runs: number[];
}
const rows: Row[] = [];
for (const [name, dir] of Object.entries(models)) {
  for (const competitors of competitorList) {
    const hogs = startCompetitors(competitors, 900);
    await new Promise((r) => setTimeout(r, 300)); // let them get going
    try {
      for (const threads of threadList) {
        const got: number[][] = engines.map(() => []);
        for (let i = 0; i < runs; i++) {
          // A B B A ... so a drift of the machine's speed falls on both engines alike.
          const order = i % 2 === 0 ? engines.map((_, k) => k) : engines.map((_, k) => engines.length - 1 - k);
          for (const k of order) got[k].push(measure(engines[k], dir, threads));
        }
        engines.forEach((e, k) => {
          const xs = got[k];
          rows.push({
            model: name,
            threads,
            competitors,
            engine: e.name,
            medianTokensPerSecond: median(xs),
            minTokensPerSecond: Math.min(...xs),
            maxTokensPerSecond: Math.max(...xs),
            runs: xs,
          });
          console.log(
            `${name} threads ${threads} competitors ${competitors} ${e.name}: median ${median(xs).toFixed(1)} tokens/s (${xs.map((x) => x.toFixed(0)).join(', ')})`,
          );
        });
      }
    } finally {
      for (const h of hogs) h.kill('SIGKILL');
    }
  }
}

// The targets, read off this run: with one busy competitor, 2 threads at least as fast as 1;
// no case below half of the 1-thread speed under the same load.
const find = (m: string, t: number, c: number, e = 'this build') =>
  rows.find((r) => r.model === m && r.threads === t && r.competitors === c && r.engine === e)?.medianTokensPerSecond;
const checks = [];
for (const m of Object.keys(models))
  for (const c of competitorList) {
    const one = find(m, 1, c);
    if (one === undefined) continue;
    for (const t of threadList)
      if (t !== 1) {
        const tt = find(m, t, c)!;
        checks.push({
          model: m,
          competitors: c,
          threads: t,
          ratioTo1Thread: tt / one,
          atLeastHalf: tt >= one / 2,
          ...(c === 1 && t === 2 ? { atLeast1Thread: tt >= one } : {}),
        });
      }
  }
// More threads than usable processors on an idle machine: the extra workers park, so it may cost
// at most a little against as many threads as processors (at least 80% of its speed).
const aboveCores = [];
for (const m of Object.keys(models)) {
  const atCores = find(m, usable, 0);
  if (atCores === undefined) continue;
  for (const t of threadList.filter((t) => t > usable)) {
    const tt = find(m, t, 0);
    if (tt !== undefined)
      aboveCores.push({
        model: m,
        threads: t,
        usableProcessors: usable,
        ratioToThreadsAtCores: tt / atCores,
        atLeast80Percent: tt >= 0.8 * atCores,
      });
  }
}
console.table(checks);
console.table(aboveCores);
const result = {
  benchmark: 'cpu-contention',
  command: ['npm run bench:contention', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  commit: gitCommit(),
  date: new Date().toISOString(),
  machine: machine(),
  usableProcessors: depthgate.getBuildInfo().usableProcessors,
  competitor: 'a node process in a busy loop (one per competitor), started before and killed after each group',
  decode: `${values.tokens} tokens after an 8-token prompt, policy none, fresh process per measurement`,
  rows,
  checks,
  aboveCores,
};
console.log(`saved ${saveResult(values.out!, result)}`);
