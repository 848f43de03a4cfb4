// The OpenAI-compatible server under concurrent streaming clients: completion tokens/s (all
// streams together) and request latency p50/p99 at 1, 4, 16 and 64 concurrent streams, with the
// policy `none` and with a skip policy, on the default model and on the realistic-shape bench
// model. The server batches the running streams into shared forward passes.
//   npm run bench:serve                          (writes bench/results/serve.json)
//   npm run bench:serve -- --streams 1,16 --runs 1 --models bench
// Each round runs every configuration once, policies alternating (none, skip, none, ...), so a
// busy machine slows both alike; figures are medians over rounds with min and max. Clients are
// node:http streams in the same process as the server (their share of the CPU is small beside
// the passes: one SSE parse per token).
import * as http from 'node:http';
import { parseArgs } from 'node:util';
import { BENCH_SHAPE, benchModelDir, depthgate, gitCommit, machine, median, saveResult } from './machine.mjs';

const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'default,bench' },
    streams: { type: 'string', default: '1,4,16,64' },
    runs: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '' },
    'bench-skip': { type: 'string', default: 'static:skip=3+5+7+9+11+13' },
    out: { type: 'string', default: 'serve.json' },
  },
});
const streamCounts = values.streams!.split(',').map(Number);
const runs = Number(values.runs);

interface ModelCase {
  name: string;
  load(): Promise<import('../dist/model.js').Model>;
  policies: [string, string];
  tokens: number;
  prompt: string | number[];
}

const cases: Record<string, ModelCase> = {
  default: {
    name: 'default',
    load: () => {
      const d = depthgate.defaultModelSetup();
      return depthgate.loadModel(d.dir, { addons: d.addons });
    },
    policies: ['none', 'flexidepth'],
    tokens: Number(values.tokens || 128),
    prompt: 'And God said unto Moses,',
  },
  bench: {
    name: `bench (${BENCH_SHAPE.hidden}x${BENCH_SHAPE.layers} ${BENCH_SHAPE.dtype}, random weights)`,
    load: () => depthgate.loadModel(benchModelDir()),
    policies: ['none', values['bench-skip']!],
    tokens: Number(values.tokens || 32),
    prompt: Array.from({ length: 16 }, (_, i) => (i * 37) % 256),
  },
};

interface Sample {
  wallS: number;
  completionTokens: number;
  tokensPerSecond: number;
  latencyMs: number[];
  firstTokenMs: number[];
  meanLayers: number;
}

/** One streaming request; resolves with its latency, time to first token, tokens and mean layers. */
function streamOnce(
  agent: http.Agent,
  port: number,
  body: string,
): Promise<{ ms: number; ttft: number; tokens: number; layers: number }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: '/v1/completions',
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json' },
      },
      (res) => {
        let buf = '';
        let ttft = -1;
        let usage: { completion_tokens: number; depthgate: { mean_layers: number } } | null = null;
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (ttft < 0) ttft = performance.now() - t0;
          buf += c;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const ev = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
            const j = JSON.parse(ev.slice(6));
            if (j.error) return reject(new Error(j.error.message));
            if (j.usage) usage = j.usage;
          }
        });
        res.on('end', () => {
          if (res.statusCode !== 200 || !usage) return reject(new Error(`status ${res.statusCode}: ${buf}`));
          resolve({
            ms: performance.now() - t0,
            ttft,
            tokens: usage.completion_tokens,
            layers: usage.depthgate.mean_layers,
          });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function measure(url: string, c: ModelCase, policy: string, streams: number): Promise<Sample> {
  const port = Number(new URL(url).port);
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const body = JSON.stringify({
    prompt: c.prompt,
    max_tokens: c.tokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
    depthgate: { policy },
  });
  const t0 = performance.now();
  const out = await Promise.all(Array.from({ length: streams }, () => streamOnce(agent, port, body)));
  const wallS = (performance.now() - t0) / 1000;
  agent.destroy();
  const completionTokens = out.reduce((s, o) => s + o.tokens, 0);
  return {
    wallS,
    completionTokens,
    tokensPerSecond: completionTokens / wallS,
    latencyMs: out.map((o) => o.ms),
    firstTokenMs: out.map((o) => o.ttft),
    meanLayers: out.reduce((s, o) => s + o.layers * o.tokens, 0) / completionTokens,
  };
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

const results: Record<string, unknown>[] = [];
for (const key of values.models!.split(',')) {
  const c = cases[key];
  if (!c) throw new Error(`unknown model '${key}' (default, bench)`);
  const model = await c.load();
  const maxStreams = Math.max(...streamCounts);
  const server = depthgate.createServer(model, {
    parallel: maxStreams,
    queueLength: maxStreams,
    contextSize: Math.min(model.contextSize, 512),
  });
  const { url } = await server.listen(0);
  console.error(`${c.name}: warming up ...`);
  for (const p of c.policies) await measure(url, c, p, 2);
  const samples = new Map<string, Sample[]>();
  for (let r = 0; r < runs; r++)
    for (const n of streamCounts)
      for (const p of r % 2 === 0 ? c.policies : [...c.policies].reverse()) {
        const s = await measure(url, c, p, n);
        const k = `${p}|${n}`;
        samples.set(k, [...(samples.get(k) ?? []), s]);
        console.error(
          `  round ${r + 1}: ${p.padEnd(28)} ${String(n).padStart(3)} streams: ${s.tokensPerSecond.toFixed(1).padStart(7)} tokens/s, ` +
            `p50 ${percentile(s.latencyMs, 0.5).toFixed(0)} ms, p99 ${percentile(s.latencyMs, 0.99).toFixed(0)} ms, ${s.meanLayers.toFixed(2)} layers/token`,
        );
      }
  await server.close();
  for (const p of c.policies)
    for (const n of streamCounts) {
      const ss = samples.get(`${p}|${n}`)!;
      const stat = (f: (s: Sample) => number) => {
        const xs = ss.map(f);
        return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
      };
      results.push({
        model: key,
        policy: p,
        streams: n,
        tokensPerRequest: c.tokens,
        layers: model.config.numLayers,
        tokensPerSecond: stat((s) => s.tokensPerSecond),
        latencyP50Ms: stat((s) => percentile(s.latencyMs, 0.5)),
        latencyP99Ms: stat((s) => percentile(s.latencyMs, 0.99)),
        firstTokenP50Ms: stat((s) => percentile(s.firstTokenMs, 0.5)),
        meanLayers: stat((s) => s.meanLayers),
        runs: ss.map((s) => ({
          wallS: s.wallS,
          completionTokens: s.completionTokens,
          tokensPerSecond: s.tokensPerSecond,
          meanLayers: s.meanLayers,
        })),
      });
    }
  await model.dispose();
}

type Row = {
  model: string;
  policy: string;
  streams: number;
  tokensPerSecond: { median: number };
  meanLayers: { median: number };
};
const rows = results as unknown as Row[];
const find = (m: string, p: string, n: number) => rows.find((r) => r.model === m && r.policy === p && r.streams === n);
const summary: Record<string, unknown> = {};
for (const key of values.models!.split(',')) {
  const [none, skip] = cases[key].policies;
  const one = find(key, none, 1);
  summary[key] = {
    scalingOverOneStream: Object.fromEntries(
      streamCounts.map((n) => [
        n,
        (find(key, none, n)?.tokensPerSecond.median ?? NaN) / (one?.tokensPerSecond.median ?? NaN),
      ]),
    ),
    skipSpeedupOverNone: Object.fromEntries(
      streamCounts.map((n) => [
        n,
        (find(key, skip, n)?.tokensPerSecond.median ?? NaN) / (find(key, none, n)?.tokensPerSecond.median ?? NaN),
      ]),
    ),
    skipMeanLayers: Object.fromEntries(streamCounts.map((n) => [n, find(key, skip, n)?.meanLayers.median])),
  };
}

const result = {
  benchmark: 'serve',
  command: ['npm run bench:serve', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  commit: gitCommit(),
  date: new Date().toISOString(),
  machine: machine(),
  loadAverage: (await import('node:os')).loadavg(),
  setup:
    'in-process server (node:http) and node:http streaming clients; parallel = the largest stream count; greedy; one streaming request per client; figures: median over rounds [min, max]',
  rounds: runs,
  results,
  summary,
};
console.table(
  rows.map((r) => {
    const x = r as unknown as {
      tokensPerSecond: { median: number; min: number; max: number };
      latencyP50Ms: { median: number };
      latencyP99Ms: { median: number };
    };
    return {
      model: r.model,
      policy: r.policy,
      streams: r.streams,
      'tokens/s (median [min, max])': `${x.tokensPerSecond.median.toFixed(1)} [${x.tokensPerSecond.min.toFixed(1)}, ${x.tokensPerSecond.max.toFixed(1)}]`,
      'p50 ms': x.latencyP50Ms.median.toFixed(0),
      'p99 ms': x.latencyP99Ms.median.toFixed(0),
      'layers/token': r.meanLayers.median.toFixed(2),
    };
  }),
);
console.log(JSON.stringify(summary, null, 2));
console.log(`saved ${saveResult(values.out!, result)}`);
