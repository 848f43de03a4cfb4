/**
 * The server's lifecycle under real clients: a client that disconnects (streaming, not
 * streaming, while queued) stops its generation within one step and gives back its slot and its
 * sequence's KV reservation; a shutdown cancels what does not finish in time; a bounded load
 * test (64 concurrent clients) answers every request completely with the outputs of the same
 * requests run one at a time, and leaves nothing held.
 */
import * as http from 'node:http';
import { createServer, defaultModelSetup, loadModel, type DepthgateServer, type Model } from '../src';
import { cleanup, randomTokens, tinyModel } from './helpers';
import { RecordLog, client, metrics, parseSse, post, until } from './serverHelpers';

const servers: DepthgateServer[] = [];
const models: Model[] = [];

afterAll(async () => {
  for (const s of servers) await s.close({ timeoutMs: 0 });
  for (const m of models) await m.dispose();
  cleanup();
});

/** The default model, with a KV budget of exactly `contexts` full contexts (256 positions each). */
async function kjvModel(contexts: number): Promise<Model> {
  const d = defaultModelSetup();
  const probe = await loadModel(d.dir, { addons: d.addons, threads: 1 });
  const perContext = probe.info.kvBytesPerToken * probe.contextSize;
  await probe.dispose();
  const m = await loadModel(d.dir, { addons: d.addons, threads: 1, memoryLimit: contexts * perContext });
  models.push(m);
  return m;
}

/** Whether the model's KV budget is whole again: a sequence of the full budget can be created. */
function budgetIsFree(m: Model, contexts: number): boolean {
  // `contexts` sequences of the full context (one that long would pass max_position_embeddings).
  const made = [];
  try {
    for (let i = 0; i < contexts; i++) made.push(m.createSequence({ contextSize: m.contextSize }));
    return true;
  } catch {
    return false;
  } finally {
    for (const s of made) s.dispose();
  }
}

describe('a client that disconnects', () => {
  let model: Model;
  let server: DepthgateServer;
  let url: string;
  const log = new RecordLog();

  beforeAll(async () => {
    model = await kjvModel(2);
    server = createServer(model, { parallel: 1, queueLength: 4, onRequest: log.onRequest });
    servers.push(server);
    url = (await server.listen(0)).url;
  });

  test('mid-stream: its generation stops within one step, the active count drops, its KV reservation comes back', async () => {
    expect(budgetIsFree(model, 2)).toBe(true);
    const stream = await client(url).completions.create({
      model: 'default',
      prompt: 'And God said',
      max_tokens: 240,
      temperature: 0,
      stream: true,
    });
    let received = 0;
    let id = '';
    for await (const ch of stream) {
      id = ch.id;
      if (++received === 3) break; // leaving the loop aborts the HTTP request
    }
    const rec = await log.next((r) => r.id === id);
    expect(rec.cancelled).toBe('client');
    expect(rec.tokensAfterCancel).toBeLessThanOrEqual(1);
    expect(rec.completionTokens).toBeLessThan(100); // the whole generation would be 240 tokens
    expect(rec.status).toBe(200); // the stream had started
    console.log(
      `disconnect after ${received} chunks: the server generated ${rec.completionTokens} of 240 tokens, ` +
        `${rec.tokensAfterCancel} after it saw the disconnect`,
    );
    const m = await metrics(url);
    expect(m.get('depthgate_active_sequences')).toBe(0);
    expect(m.get('depthgate_kv_reserved_bytes')).toBe(0);
    expect(m.get('depthgate_cancelled_total')).toBe(1);
    expect(server.stats()).toMatchObject({ active: 0, liveSequences: 0 });
    // The model's own reservation was returned: its whole budget can be taken again.
    expect(budgetIsFree(model, 2)).toBe(true);
  });

  test('while waiting for a response (no stream), and while queued: both give up their place at once', async () => {
    const long = post(url, '/v1/completions', { prompt: 'And God said', max_tokens: 200, temperature: 0 });
    await until(() => server.stats().active === 1);
    // Queued behind it, then gone.
    const queued = http.request(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
    });
    queued.on('error', () => undefined);
    queued.end(JSON.stringify({ prompt: 'And', max_tokens: 5, stream: true }));
    await until(() => server.stats().queued === 1);
    queued.destroy();
    await until(() => server.stats().queued === 0, 2000);
    const q = await log.next((r) => r.cancelled === 'client' && r.completionTokens === undefined);
    expect(q.status).toBe(200); // its event stream had opened (keep-alive pings flow while queued)
    expect((await long).status).toBe(200);
    // A non-streamed request whose client leaves mid-generation.
    const req = http.request(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
    });
    req.on('error', () => undefined);
    const prompt = 'In the beginning God created the heaven';
    const promptTokens = model.tokenize(prompt).length;
    expect(promptTokens).not.toBe(model.tokenize('And God said').length);
    req.end(JSON.stringify({ prompt, max_tokens: 200, temperature: 0 }));
    await until(() => server.stats().active === 1);
    await new Promise((r) => setTimeout(r, 30));
    req.destroy();
    const rec = await log.next((r) => r.cancelled === 'client' && r.promptTokens === promptTokens);
    expect(rec.status).toBe(499);
    expect(rec.tokensAfterCancel).toBeLessThanOrEqual(1);
    expect(rec.completionTokens).toBeLessThan(200);
    expect(server.stats().active).toBe(0);
    expect(server.stats()).toMatchObject({ queued: 0, liveSequences: 0, kvReservedBytes: 0 });
    expect(budgetIsFree(model, 2)).toBe(true);
  });
});

test('a shutdown cancels the generations that do not finish in time: a 503, or an error event and [DONE]', async () => {
  const model = await kjvModel(2);
  const log = new RecordLog();
  const server = createServer(model, { parallel: 2, onRequest: log.onRequest });
  servers.push(server);
  const { url } = await server.listen(0);
  const streamed = post(url, '/v1/completions', {
    prompt: 'And God said',
    max_tokens: 240,
    temperature: 0,
    stream: true,
  });
  const plain = post(url, '/v1/completions', { prompt: 'In the beginning', max_tokens: 240, temperature: 0 });
  await until(() => server.stats().active === 2);
  await new Promise((r) => setTimeout(r, 20));
  await server.close({ timeoutMs: 50 });
  const p = await plain;
  expect(p.status).toBe(503);
  expect(p.json().error).toMatchObject({ code: 'shutting_down', type: 'unavailable_error' });
  const s = await streamed;
  expect(s.status).toBe(200);
  const { data, done } = parseSse(s.text);
  expect(done).toBe(true);
  expect(data[data.length - 1].error).toMatchObject({ code: 'shutting_down' });
  expect(data.length).toBeGreaterThan(1); // some tokens went out before
  const recs = log.all.filter((r) => r.cancelled === 'shutdown');
  expect(recs).toHaveLength(2);
  for (const r of recs) {
    expect(r.tokensAfterCancel).toBeLessThanOrEqual(1);
    expect(r.completionTokens).toBeLessThan(240);
  }
  expect(server.stats()).toMatchObject({ state: 'closed', active: 0, liveSequences: 0 });
  expect(budgetIsFree(model, 2)).toBe(true);
});

test('load: 64 concurrent clients, 256 requests, every one answered completely with its one-at-a-time output', async () => {
  const PARALLEL = 16;
  const dir = tinyModel({ seed: 11, maxPositions: 64 });
  const probe = await loadModel(dir, { threads: 1 });
  const perContext = probe.info.kvBytesPerToken * 64;
  await probe.dispose();
  const model = await loadModel(dir, { threads: 1, memoryLimit: PARALLEL * perContext });
  models.push(model);
  const server = createServer(model, { parallel: PARALLEL, queueLength: 64, modelId: 'tiny' });
  servers.push(server);
  const { url } = await server.listen(0);
  const c = client(url);
  const requests = Array.from({ length: 256 }, (_, k) => ({
    prompt: randomTokens(2 + (k % 9), 0, 300, 1000 + k),
    max_tokens: 8 + (k % 9),
    stream: k % 2 === 1,
  }));
  type Answer = { text: string; finish: string | null; tokens: number };
  const ask = async (r: (typeof requests)[number]): Promise<Answer> => {
    const body = { model: 'tiny', prompt: r.prompt, max_tokens: r.max_tokens, temperature: 0 };
    if (!r.stream) {
      const x = await c.completions.create(body);
      return { text: x.choices[0].text, finish: x.choices[0].finish_reason, tokens: x.usage!.completion_tokens };
    }
    let text = '';
    let finish: string | null = null;
    let tokens = -1;
    for await (const ch of await c.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    })) {
      text += ch.choices[0]?.text ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
      if (ch.usage) tokens = ch.usage.completion_tokens;
    }
    return { text, finish, tokens };
  };
  const alone: Answer[] = [];
  for (const r of requests) alone.push(await ask(r));
  const rssBefore = process.memoryUsage().rss;
  const latencies: number[] = [];
  const answers: Answer[] = new Array(requests.length);
  let next = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < requests.length) {
      const k = next++;
      const t = performance.now();
      answers[k] = await ask(requests[k]);
      latencies.push(performance.now() - t);
    }
  };
  let timer: NodeJS.Timeout | undefined;
  const cap = new Promise(
    (_, reject) => (timer = setTimeout(() => reject(new Error('load test passed its 60 s cap')), 60_000)),
  );
  await Promise.race([Promise.all(Array.from({ length: 64 }, worker)), cap]);
  clearTimeout(timer);
  const wall = (performance.now() - t0) / 1000;
  expect(answers).toEqual(alone);
  for (const a of answers) {
    expect(a.finish === 'length' || a.finish === 'stop').toBe(true);
    expect(a.tokens).toBeGreaterThan(0);
  }
  const sorted = [...latencies].sort((a, b) => a - b);
  const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  const tokens = answers.reduce((s, a) => s + a.tokens, 0);
  const m = await metrics(url);
  console.log(
    `server load test: 64 clients, ${requests.length} requests (${tokens} completion tokens) in ${wall.toFixed(2)} s: ` +
      `${(requests.length / wall).toFixed(1)} requests/s, ${(tokens / wall).toFixed(0)} tokens/s; latency p50 ${pct(0.5).toFixed(1)} ms, ` +
      `p99 ${pct(0.99).toFixed(1)} ms; resident memory ${((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(1)} MiB above its start`,
  );
  expect(m.get('depthgate_requests_total{endpoint="/v1/completions",status="200"}')).toBe(2 * requests.length);
  expect([...m.keys()].filter((k) => k.startsWith('depthgate_requests_total') && !k.includes('status="200"'))).toEqual(
    [],
  );
  // Nothing is held afterwards: no slot, no queue, no sequence, and the model's whole KV budget is free.
  for (const g of ['depthgate_queue_depth', 'depthgate_active_sequences', 'depthgate_kv_reserved_bytes'])
    expect(m.get(g)).toBe(0);
  expect(server.stats()).toMatchObject({ active: 0, queued: 0, liveSequences: 0, kvReservedBytes: 0 });
  for (const s of Array.from({ length: PARALLEL }, () => model.createSequence({ contextSize: 64 }))) s.dispose();
  await server.close();
});

test('continuous batching: a request that arrives while another generates joins its passes, and they stay together', async () => {
  const model = await kjvModel(2);
  const server = createServer(model, { parallel: 2 });
  servers.push(server);
  const { url } = await server.listen(0);
  // The scheduler's batches, observed from inside (the Scheduler's private batch runner).
  const sizes: number[] = [];
  const scheduler = (model as any).scheduler;
  const runBatch = scheduler.runBatch.bind(scheduler);
  scheduler.runBatch = (nm: unknown, batch: unknown[]) => {
    sizes.push(batch.length);
    return runBatch(nm, batch);
  };
  const first = post(url, '/v1/completions', {
    prompt: 'And God said',
    max_tokens: 120,
    temperature: 0,
    depthgate: { policy: 'none' },
  });
  await until(() => sizes.length >= 10); // the first is decoding
  const second = post(url, '/v1/completions', {
    prompt: 'In the beginning',
    max_tokens: 40,
    temperature: 0,
    depthgate: { policy: 'none' },
  });
  const [a, b] = await Promise.all([first, second]);
  expect([a.status, b.status]).toEqual([200, 200]);
  expect(b.json().usage.completion_tokens).toBe(40);
  // Every step of the second (its prompt pass included) shared a pass with the first: 40 passes of
  // two rows, not 40 passes of one alternating with the first's.
  expect(sizes.filter((n) => n === 2).length).toBeGreaterThanOrEqual(39);
  expect(sizes.length).toBeLessThanOrEqual(121);
});
