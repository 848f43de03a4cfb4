/**
 * The OpenAI-compatible server through the official `openai` client: chat and completions,
 * streaming and not, usage, stop strings, seeds, per-request policies and traces, models,
 * health and metrics, and every error status with its body. Expected outputs come from the
 * library's own generate() with the same options, so the server is checked against the engine.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import OpenAI, { APIError } from 'openai';
import {
  createServer,
  defaultModelSetup,
  formatPolicy,
  loadModel,
  parsePolicy,
  type DepthgateServer,
  type Model,
} from '../src';
import { cleanup, tinyModel } from './helpers';
import { RecordLog, client, connect, deferred, metrics, parseSse, post, raw, readAll, until } from './serverHelpers';

let tiny: Model;
let kjv: Model;
let tinyServer: DepthgateServer;
let kjvServer: DepthgateServer;
let tinyUrl: string;
let kjvUrl: string;
const log = new RecordLog();
const servers: DepthgateServer[] = [];

async function start(model: Model | Promise<Model>, options: Parameters<typeof createServer>[1] = {}) {
  const s = createServer(model, options);
  servers.push(s);
  return { server: s, url: (await s.listen(0)).url };
}

beforeAll(async () => {
  tiny = await loadModel(tinyModel({ seed: 3, maxPositions: 512 }), { threads: 1 });
  const d = defaultModelSetup();
  kjv = await loadModel(d.dir, { addons: d.addons, threads: 1 });
  ({ server: tinyServer, url: tinyUrl } = await start(tiny, { modelId: 'tiny', onRequest: log.onRequest }));
  ({ server: kjvServer, url: kjvUrl } = await start(kjv, { onRequest: log.onRequest }));
});

afterAll(async () => {
  for (const s of servers) await s.close({ timeoutMs: 0 });
  await tiny?.dispose();
  await kjv?.dispose();
  cleanup();
});

async function apiError(p: Promise<unknown>): Promise<APIError> {
  const e = await p.then(
    () => {
      throw new Error('expected the request to fail');
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(APIError);
  return e as APIError;
}

const hello = [{ role: 'user' as const, content: 'Hello there' }];

describe('chat completions', () => {
  test('a chat completion equals the library run of the same messages, with usage and mean layers', async () => {
    const c = client(tinyUrl);
    const r = await c.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 12, temperature: 0 });
    const ref = await tiny.generate(hello, { maxTokens: 12, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.model).toBe('tiny');
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0].message).toEqual({ role: 'assistant', content: ref.text });
    expect(r.choices[0].finish_reason).toBe(ref.finishReason === 'eos' ? 'stop' : 'length');
    const promptTokens = tiny.tokenize(tiny.applyChatTemplate(hello), { addSpecialTokens: false }).length;
    expect(r.usage).toMatchObject({
      prompt_tokens: promptTokens,
      completion_tokens: ref.tokens.length,
      total_tokens: promptTokens + ref.tokens.length,
    });
    expect((r.usage as any).depthgate).toEqual({ mean_layers: ref.depth.meanLayers, num_layers: 2, policy: 'none' });
  });

  test('a streamed chat completion: role first, deltas that add up to the whole text, finish_reason, then usage with no choices', async () => {
    const c = client(tinyUrl);
    const full = await c.chat.completions.create({
      messages: hello,
      max_completion_tokens: 20,
      temperature: 0,
      model: 'tiny',
    });
    const stream = await c.chat.completions.create({
      model: 'tiny',
      messages: hello,
      max_completion_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const ch of stream) chunks.push(ch);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    const text = chunks.map((ch) => ch.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe(full.choices[0].message.content);
    const last = chunks[chunks.length - 1];
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(full.usage);
    const fin = chunks[chunks.length - 2];
    expect(fin.choices[0].finish_reason).toBe(full.choices[0].finish_reason);
    expect(fin.choices[0].delta).toEqual({});
    for (const ch of chunks.slice(0, -1)) expect(ch.usage).toBeNull(); // include_usage: null on every other chunk
    expect(new Set(chunks.map((ch) => ch.id)).size).toBe(1);
  });

  test('a chat request to a model without a chat template is a 400 that says so', async () => {
    const dir = tinyModel({ seed: 4 });
    const tcFile = path.join(dir, 'tokenizer_config.json');
    const { chat_template: _dropped, ...tc } = JSON.parse(fs.readFileSync(tcFile, 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(tcFile, JSON.stringify(tc));
    const bare = await loadModel(dir, { threads: 1 });
    const { server, url } = await start(bare, { modelId: 'bare' });
    const e = await apiError(client(url).chat.completions.create({ model: 'bare', messages: hello }));
    await server.close({ timeoutMs: 0 });
    await bare.dispose();
    expect(e.status).toBe(400);
    expect(e.param).toBe('messages');
    expect(e.message).toMatch(/no chat_template/);
  });
});

describe('completions', () => {
  test('text completions, streamed and not, equal the library run; stop strings end the text before them', async () => {
    const c = client(kjvUrl);
    for (const stop of [undefined, [','], 'Behold']) {
      const opts = {
        model: 'default',
        prompt: 'And God said',
        max_tokens: 24,
        temperature: 0,
        ...(stop ? { stop } : {}),
      };
      const ref = await kjv.generate('And God said', {
        maxTokens: 24,
        temperature: 0,
        ...(stop ? { stop: typeof stop === 'string' ? [stop] : stop } : {}),
      });
      const r = await c.completions.create(opts);
      expect(r.object).toBe('text_completion');
      expect(r.choices[0].text).toBe(ref.text);
      expect(r.choices[0].finish_reason).toBe(stop ? 'stop' : 'length');
      expect(r.usage).toMatchObject({ prompt_tokens: 4, completion_tokens: ref.tokens.length });
      let streamed = '';
      let finish: string | null = null;
      for await (const ch of await c.completions.create({ ...opts, stream: true })) {
        streamed += ch.choices[0].text;
        finish = ch.choices[0].finish_reason ?? finish;
      }
      expect(streamed).toBe(ref.text);
      expect(finish).toBe(r.choices[0].finish_reason);
    }
    const withStop = await c.completions.create({
      model: 'default',
      prompt: 'And God said',
      max_tokens: 24,
      temperature: 0,
      stop: [','],
    });
    expect(withStop.choices[0].text).not.toMatch(/,/);
    expect(withStop.choices[0].text.length).toBeGreaterThan(0);
  });

  test('a prompt of token ids is fed as given', async () => {
    const ids = kjv.tokenize('In the beginning');
    const r = await client(kjvUrl).completions.create({ model: 'default', prompt: ids, max_tokens: 6, temperature: 0 });
    expect(r.choices[0].text).toBe((await kjv.generate({ tokens: ids }, { maxTokens: 6, temperature: 0 })).text);
    expect(r.usage!.prompt_tokens).toBe(ids.length);
  });

  test('the same seed gives the same sampled text (the library’s), another seed another text', async () => {
    const c = client(kjvUrl);
    const ask = (seed: number) =>
      c.completions.create({
        model: 'default',
        prompt: 'And the LORD',
        max_tokens: 24,
        temperature: 1,
        top_p: 0.95,
        top_k: 50,
        seed,
      } as OpenAI.CompletionCreateParamsNonStreaming);
    const [a, b, other] = [await ask(7), await ask(7), await ask(8)];
    expect(a.choices[0].text).toBe(b.choices[0].text);
    expect(other.choices[0].text).not.toBe(a.choices[0].text);
    const ref = await kjv.generate('And the LORD', { maxTokens: 24, temperature: 1, topP: 0.95, topK: 50, seed: 7 });
    expect(a.choices[0].text).toBe(ref.text);
  });

  test("fields a request leaves out take the model's generation_config.json defaults; penalties are applied as the library applies them", async () => {
    const c = client(kjvUrl);
    // No temperature, top_p or top_k: the default model's file says do_sample, temperature 0.8, top_p 0.95.
    const bare = await c.completions.create({ model: 'default', prompt: 'And the LORD', max_tokens: 16, seed: 5 });
    const ref = await kjv.generate('And the LORD', { maxTokens: 16, seed: 5 });
    expect(ref.sampling).toMatchObject({ temperature: 0.8, topP: 0.95, topK: 50 });
    expect(bare.choices[0].text).toBe(ref.text);
    // The request's own fields win; the penalties reach the sampler.
    for (const [fields, opts] of [
      [{ repetition_penalty: 1.3 }, { repetitionPenalty: 1.3 }],
      [{ frequency_penalty: 0.5 }, { frequencyPenalty: 0.5 }],
      [
        { presence_penalty: 1, frequency_penalty: -0.2 },
        { presencePenalty: 1, frequencyPenalty: -0.2 },
      ],
    ] as const) {
      const r = await c.completions.create({
        model: 'default',
        prompt: 'And God said',
        max_tokens: 40,
        temperature: 0,
        ...fields,
      } as any);
      const lib = await kjv.generate('And God said', { maxTokens: 40, temperature: 0, ...opts });
      expect(r.choices[0].text).toBe(lib.text);
      expect(lib.text).not.toBe((await kjv.generate('And God said', { maxTokens: 40, temperature: 0 })).text);
    }
  });

  test('max_tokens and max_completion_tokens bound the completion; without either it may use the rest of the context', async () => {
    const c = client(tinyUrl);
    const r = await c.completions.create({ model: 'tiny', prompt: 'Once', max_tokens: 5, temperature: 0 });
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(5);
    const chat = await c.chat.completions.create({
      model: 'tiny',
      messages: hello,
      max_completion_tokens: 3,
      temperature: 0,
    });
    expect(chat.usage!.completion_tokens).toBeLessThanOrEqual(3);
    const rest = 512 - tiny.tokenize('Once').length;
    const ref = await tiny.generate('Once', { maxTokens: rest, temperature: 0 });
    const open = await c.completions.create({ model: 'tiny', prompt: 'Once', temperature: 0 });
    expect(open.choices[0].text).toBe(ref.text);
    expect(open.usage!.completion_tokens).toBe(ref.tokens.length);
    expect(open.usage!.prompt_tokens + open.usage!.completion_tokens).toBeLessThanOrEqual(512);
  });
});

describe('per-request depth', () => {
  test('depthgate.policy picks the policy of one request; depthgate.trace returns the layers of every token', async () => {
    const c = client(kjvUrl);
    const ask = (depthgate: object) =>
      c.completions.create({
        model: 'default',
        prompt: 'And God said',
        max_tokens: 10,
        temperature: 0,
        depthgate,
      } as any) as Promise<any>;
    const none = await ask({ policy: 'none', trace: true });
    expect(none.usage.depthgate).toEqual({ mean_layers: 12, num_layers: 12, policy: 'none' });
    const tokens = none.choices[0].depthgate.tokens;
    expect(tokens).toHaveLength(none.usage.completion_tokens);
    for (const t of tokens) expect(t).toMatchObject({ layers: 12, executed: new Array(12).fill(1) });
    // The default model's default policy is FlexiDepth: fewer layers, as the library reports.
    const fd = await ask({ trace: true });
    const ref = await kjv.generate('And God said', { maxTokens: 10, temperature: 0 });
    expect(fd.usage.depthgate.policy).toBe('flexidepth');
    expect(fd.usage.depthgate.mean_layers).toBeCloseTo(ref.depth.meanLayers, 10);
    expect(fd.usage.depthgate.mean_layers).toBeLessThan(12);
    const layers = fd.choices[0].depthgate.tokens.map((t: any) => t.layers);
    expect(layers.reduce((a: number, b: number) => a + b, 0) / layers.length).toBeCloseTo(ref.depth.meanLayers, 10);
    for (const t of fd.choices[0].depthgate.tokens)
      expect(t.layers).toBe(t.executed.reduce((a: number, b: number) => a + b, 0));
    // The CLI syntax with parameters, and a policy object.
    const st = await ask({ policy: 'static:skip=3+5' });
    expect(st.usage.depthgate).toMatchObject({ mean_layers: 10, policy: 'static:skip=3+5' });
    const obj = await ask({ policy: { type: 'flexidepth', threshold: 0.9 } });
    expect(obj.usage.depthgate.policy).toBe('flexidepth:threshold=0.9');
    expect(obj.usage.depthgate.mean_layers).toBeLessThanOrEqual(fd.usage.depthgate.mean_layers);
    // Streamed: each chunk carries its tokens' layers; mean layers in the usage chunk.
    const chunks: any[] = [];
    for await (const ch of (await c.completions.create({
      model: 'default',
      prompt: 'And God said',
      max_tokens: 10,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      depthgate: { trace: true, policy: 'static:skip=3+5' },
    } as any)) as any)
      chunks.push(ch);
    const traced = chunks.flatMap((ch) => ch.choices[0]?.depthgate?.tokens ?? []);
    expect(traced.map((t: any) => t.layers)).toEqual(new Array(10).fill(10));
    expect(chunks[chunks.length - 1].usage.depthgate.mean_layers).toBe(10);
  });
});

test('policy labels (usage, metrics) are the --policy syntax: formatPolicy is the inverse of parsePolicy', () => {
  const specs = [
    'none',
    'skiplayer',
    'flexidepth',
    'flexidepth:threshold=0.25',
    'static',
    'static:skip=1+3',
    'static:attn=2,mlp=0+4',
    'static:skip=5,attn=1,mlp=2',
    'd3:alpha=0.9',
    'd3:alpha=0.5,start=4,min=3',
  ];
  for (const s of specs) {
    const p = parsePolicy(s, 8);
    expect(formatPolicy(p)).toBe(s);
    expect(parsePolicy(formatPolicy(p), 8)).toEqual(p);
  }
  expect(formatPolicy({ type: 'static', skipLayers: [5, 3] })).toBe('static:skip=5+3');
});

describe('models, health, metrics', () => {
  test('/v1/models lists the served model; retrieving another is a 404', async () => {
    const c = client(kjvUrl);
    const list = await c.models.list();
    expect(list.data).toHaveLength(1);
    expect(list.data[0]).toMatchObject({ id: 'default', object: 'model', owned_by: 'depthgate' });
    expect((list.data[0] as any).meta).toMatchObject({
      num_layers: 12,
      context_size: 256,
      default_policy: 'flexidepth',
    });
    expect((await c.models.retrieve('default')).id).toBe('default');
    const e = await apiError(c.models.retrieve('gpt-4'));
    expect(e.status).toBe(404);
    expect(e.code).toBe('model_not_found');
  });

  test('/health is 503 while the model loads, 200 after; a failed load is a 503 that says why', async () => {
    const pending = deferred<Model>();
    const { server, url } = await start(pending.promise);
    const loading = await raw(url, 'GET', '/health');
    expect(loading.status).toBe(503);
    expect(loading.json()).toEqual({
      error: { message: 'Loading model', type: 'unavailable_error', param: null, code: 'model_loading' },
    });
    expect(loading.headers['retry-after']).toBe('1');
    const early = await post(url, '/v1/completions', { prompt: 'x' });
    expect(early.status).toBe(503);
    expect(early.json().error.code).toBe('model_loading');
    expect((await metrics(url)).get('depthgate_model_loaded')).toBe(0);
    pending.resolve(tiny);
    await server.ready;
    expect((await raw(url, 'GET', '/health')).json()).toEqual({ status: 'ok' });
    const failing = deferred<Model>();
    const f = await start(failing.promise);
    failing.reject(new Error('config.json: no such file'));
    await expect(f.server.ready).rejects.toThrow('no such file');
    const h = await raw(f.url, 'GET', '/health');
    expect(h.status).toBe(503);
    expect(h.json().error).toMatchObject({ code: 'model_load_failed', message: expect.stringMatching(/no such file/) });
  });

  test('/metrics counts requests by status, tokens and layers per policy, in the Prometheus text format', async () => {
    const { url } = await start(kjv);
    const c = client(url);
    await c.completions.create({
      model: 'default',
      prompt: 'And God said',
      max_tokens: 8,
      temperature: 0,
      depthgate: { policy: 'none' },
    } as any);
    await c.completions.create({ model: 'default', prompt: 'And God said', max_tokens: 8, temperature: 0 });
    await post(url, '/v1/completions', { prompt: 'x', temprature: 1 });
    const m = await metrics(url);
    expect(m.get('depthgate_requests_total{endpoint="/v1/completions",status="200"}')).toBe(2);
    expect(m.get('depthgate_requests_total{endpoint="/v1/completions",status="400"}')).toBe(1);
    expect(m.get('depthgate_prompt_tokens_total')).toBe(8);
    expect(m.get('depthgate_completion_tokens_total')).toBe(16);
    expect(m.get('depthgate_policy_layers_total{policy="none"}')).toBe(96);
    expect(m.get('depthgate_mean_layers_per_token{policy="none"}')).toBe(12);
    expect(m.get('depthgate_mean_layers_per_token{policy="flexidepth"}')).toBeLessThan(12);
    expect(m.get('depthgate_decode_tokens_per_second')).toBeGreaterThan(0);
    for (const g of ['depthgate_queue_depth', 'depthgate_active_sequences', 'depthgate_kv_reserved_bytes'])
      expect(m.get(g)).toBe(0);
    expect(m.get('depthgate_model_loaded')).toBe(1);
  });
});

describe('errors in OpenAI’s shape', () => {
  test('400: validation names the field and the rule; unsupported fields say so', async () => {
    const c = client(tinyUrl);
    const cases: [Promise<unknown>, string, string, RegExp][] = [
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, temperature: 3 }),
        'temperature',
        'invalid_value',
        /at most 2/,
      ],
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: '5' as any }),
        'max_tokens',
        'invalid_type',
        /expected an integer/,
      ],
      [c.chat.completions.create({ model: 'tiny', messages: hello, n: 2 }), 'n', 'unsupported_parameter', /must be 1/],
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, logprobs: true }),
        'logprobs',
        'unsupported_parameter',
        /log-probabilities/,
      ],
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, frequency_penalty: 2.5 }),
        'frequency_penalty',
        'invalid_value',
        /at most 2/,
      ],
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, presence_penalty: -3 }),
        'presence_penalty',
        'invalid_value',
        /at least -2/,
      ],
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, repetition_penalty: 0 } as any),
        'repetition_penalty',
        'invalid_value',
        /greater than 0/,
      ],
      [
        c.chat.completions.create({ model: 'tiny', messages: hello, temprature: 1 } as any),
        'temprature',
        'unknown_parameter',
        /Unknown parameter: 'temprature'/,
      ],
      [
        c.chat.completions.create({ model: 'tiny', messages: [{ role: 'wizard', content: 'x' }] as any }),
        'messages[0].role',
        'invalid_value',
        /wizard/,
      ],
      [c.completions.create({ model: 'tiny', prompt: ['a', 'b'] }), 'prompt', 'unsupported_parameter', /one prompt/],
      [
        c.completions.create({ model: 'tiny', prompt: 'a', depthgate: { policy: 'flexidepth' } } as any),
        'depthgate.policy',
        'invalid_value',
        /no FlexiDepth routers/,
      ],
      [
        c.completions.create({ model: 'tiny', prompt: 'a', depthgate: { policy: 'static:skip=9' } } as any),
        'depthgate.policy',
        'invalid_value',
        /layer numbers 0\.\.1/,
      ],
    ];
    for (const [p, param, code, message] of cases) {
      const e = await apiError(p);
      expect(e.status).toBe(400);
      expect({ param: e.param, code: e.code, type: e.type }).toEqual({ param, code, type: 'invalid_request_error' });
      expect(e.message).toMatch(message);
    }
    // Penalties in range are accepted.
    const ok = await c.chat.completions.create({
      model: 'tiny',
      messages: hello,
      max_tokens: 2,
      frequency_penalty: 0.5,
      presence_penalty: -1,
      repetition_penalty: 1.1,
    } as any);
    expect(ok.choices).toHaveLength(1);
  });

  test('400 context_length_exceeded for a prompt, or prompt plus max_tokens, that does not fit', async () => {
    const c = client(kjvUrl);
    const long = 'And God said unto Moses, '.repeat(60);
    const n = kjv.tokenize(long).length;
    expect(n).toBeGreaterThan(256);
    let e = await apiError(c.completions.create({ model: 'default', prompt: long }));
    expect([e.status, e.code, e.param]).toEqual([400, 'context_length_exceeded', 'prompt']);
    expect(e.message).toContain(`maximum context length is 256 tokens. However, your prompt resulted in ${n} tokens`);
    e = await apiError(c.completions.create({ model: 'default', prompt: 'And God said', max_tokens: 253 }));
    expect([e.status, e.code, e.param]).toEqual([400, 'context_length_exceeded', 'max_tokens']);
    expect(e.message).toContain('you requested 257 tokens (4 in the prompt, 253 in the completion)');
    const fits = await c.completions.create({
      model: 'default',
      prompt: 'And God said',
      max_tokens: 252,
      stop: ['.'],
      temperature: 0,
    });
    expect(fits.choices).toHaveLength(1);
  });

  test('401 without the API key or with a wrong one (one character short or long too); /health needs none', async () => {
    const { url } = await start(tiny, { apiKey: 'sk-test-123', modelId: 'tiny' });
    for (const key of ['wrong', 'sk-test-12', 'sk-test-1234']) {
      const e = await apiError(client(url, key).completions.create({ model: 'tiny', prompt: 'x', max_tokens: 1 }));
      expect(e.status).toBe(401);
      expect(e.error).toEqual({
        message: expect.stringMatching(/API key/),
        type: 'authentication_error',
        param: null,
        code: 'invalid_api_key',
      });
    }
    const none = await post(url, '/v1/completions', { prompt: 'x' });
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Bearer');
    expect((await raw(url, 'GET', '/metrics')).status).toBe(401);
    expect((await raw(url, 'GET', '/health')).status).toBe(200);
    const ok = await client(url, 'sk-test-123').completions.create({ model: 'tiny', prompt: 'x', max_tokens: 1 });
    expect(ok.choices).toHaveLength(1);
  });

  test('404 for an unknown route or model, 405 for a wrong method, both in the error shape', async () => {
    const r = await raw(tinyUrl, 'GET', '/v1/engines');
    expect(r.status).toBe(404);
    expect(r.json()).toEqual({
      error: {
        message: 'Invalid URL (GET /v1/engines)',
        type: 'invalid_request_error',
        param: null,
        code: 'not_found',
      },
    });
    const e = await apiError(client(tinyUrl).chat.completions.create({ model: 'gpt-4o', messages: hello }));
    expect([e.status, e.code, e.param]).toEqual([404, 'model_not_found', 'model']);
    const m = await raw(tinyUrl, 'GET', '/v1/chat/completions');
    expect(m.status).toBe(405);
    expect(m.headers.allow).toBe('POST');
    expect(m.json().error.code).toBe('method_not_allowed');
  });

  test('413 for a body over the limit, announced or not', async () => {
    const { url } = await start(tiny, { bodyLimit: 4096 });
    const big = JSON.stringify({ prompt: 'x'.repeat(10_000) });
    const r = await raw(url, 'POST', '/v1/completions', big);
    expect(r.status).toBe(413);
    expect(r.json().error).toMatchObject({ code: 'request_too_large', type: 'invalid_request_error' });
    const chunked = await raw(url, 'POST', '/v1/completions', big, { 'transfer-encoding': 'chunked' });
    expect(chunked.status).toBe(413);
    expect((await post(url, '/v1/completions', { prompt: 'x', max_tokens: 1 })).status).toBe(200);
  });

  test('429 when every slot is busy and the queue is full; the waiting request is served after', async () => {
    const { url } = await start(kjv, { parallel: 1, queueLength: 1 });
    const long = post(url, '/v1/completions', { prompt: 'And God said', max_tokens: 200, temperature: 0 });
    await until(async () => (await metrics(url)).get('depthgate_active_sequences') === 1);
    const queued = post(url, '/v1/completions', { prompt: 'And God said', max_tokens: 2, temperature: 0 });
    await until(async () => (await metrics(url)).get('depthgate_queue_depth') === 1);
    const e = await apiError(client(url).completions.create({ model: 'default', prompt: 'x', max_tokens: 1 }));
    expect(e.status).toBe(429);
    expect(e.error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full' });
    expect(e.headers?.get('retry-after')).toBe('1');
    expect((await long).status).toBe(200);
    expect((await queued).status).toBe(200);
  });

  test('503 while shutting down: waiting requests are refused, new ones on open connections too', async () => {
    const { server, url } = await start(kjv, { parallel: 1 });
    const running = post(url, '/v1/completions', { prompt: 'And God said', max_tokens: 120, temperature: 0 });
    await until(() => server.stats().active === 1);
    const waiting = post(url, '/v1/completions', { prompt: 'And God said', max_tokens: 2 });
    await until(() => server.stats().queued === 1);
    // A request already on its way (headers sent, body not yet) when the shutdown begins.
    const late = await connect(url);
    const lateBody = JSON.stringify({ prompt: 'And', max_tokens: 2 });
    const arrived = new Promise((r) => server.httpServer.once('request', r));
    late.write(
      `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${lateBody.length}\r\n\r\n`,
    );
    const lateAnswer = readAll(late);
    await arrived;
    const closed = server.close({ timeoutMs: 30_000 });
    const w = await waiting;
    expect(w.status).toBe(503);
    expect(w.json().error).toMatchObject({ type: 'unavailable_error', code: 'shutting_down' });
    late.write(lateBody);
    const answer = await lateAnswer;
    expect(answer.text).toMatch(/^HTTP\/1\.1 503 /);
    expect(answer.text).toMatch(/\r\nConnection: close\r\n/i);
    expect(JSON.parse(answer.text.split('\r\n\r\n')[1]).error.code).toBe('shutting_down');
    expect(answer.closed).toBe(true);
    // Nothing new is accepted.
    await expect(post(url, '/health', undefined)).rejects.toThrow(/ECONNREFUSED/);
    expect((await running).status).toBe(200); // a running generation finishes within the deadline
    await closed;
    expect(server.stats().state).toBe('closed');
  });
});

test('503 when the KV budget cannot hold the request right now; smaller requests still pass', async () => {
  const perToken = tiny.info.kvBytesPerToken;
  const small = await loadModel(tiny.dir, { threads: 1, memoryLimit: 100 * perToken });
  try {
    const { url } = await start(small, { modelId: 'tiny' });
    const r = await post(url, '/v1/completions', { prompt: 'Once', max_tokens: 200 });
    expect(r.status).toBe(503);
    expect(r.json().error).toMatchObject({
      type: 'unavailable_error',
      code: 'insufficient_memory',
      message: expect.stringMatching(/KV cache/),
    });
    expect((await post(url, '/v1/completions', { prompt: 'Once', max_tokens: 20 })).status).toBe(200);
  } finally {
    await small.dispose();
  }
});

describe('the wire format', () => {
  test('raw SSE: data lines, one JSON chunk each, the usage chunk, [DONE] last; JSON responses have a length', async () => {
    const r = await post(tinyUrl, '/v1/chat/completions', {
      model: 'tiny',
      messages: hello,
      max_tokens: 6,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(r.headers['cache-control']).toBe('no-cache');
    const { data, done, blocks } = parseSse(r.text);
    expect(done).toBe(true);
    expect(blocks[blocks.length - 1]).toBe('data: [DONE]');
    for (const d of data)
      expect(d).toMatchObject({
        id: data[0].id,
        object: 'chat.completion.chunk',
        created: data[0].created,
        model: 'tiny',
      });
    expect(data[0].choices[0]).toEqual({
      index: 0,
      delta: { role: 'assistant', content: '' },
      logprobs: null,
      finish_reason: null,
    });
    const usage = data[data.length - 1];
    expect(usage.choices).toEqual([]);
    expect(usage.usage.total_tokens).toBe(usage.usage.prompt_tokens + usage.usage.completion_tokens);
    const plain = await post(tinyUrl, '/v1/completions', { prompt: 'x', max_tokens: 2 });
    expect(plain.headers['content-type']).toBe('application/json');
    expect(Number(plain.headers['content-length'])).toBe(Buffer.byteLength(plain.text));
  });

  test('keep-alive comments while a streamed request waits for a slot', async () => {
    const { url } = await start(kjv, { parallel: 1, keepAliveMs: 40 });
    const busy = post(url, '/v1/completions', { prompt: 'And God said', max_tokens: 150, temperature: 0 });
    await until(async () => (await metrics(url)).get('depthgate_active_sequences') === 1);
    const r = await post(url, '/v1/completions', { prompt: 'And', max_tokens: 2, stream: true, temperature: 0 });
    const { comments, data, done } = parseSse(r.text);
    expect(comments.length).toBeGreaterThan(0);
    expect(new Set(comments)).toEqual(new Set([': ping']));
    expect(r.text.startsWith(': ping\n\n')).toBe(true); // pings came before any data
    expect(data.length).toBeGreaterThan(0);
    expect(done).toBe(true);
    await busy;
  });

  test('CORS is off by default; with allowed origins, those get the headers and a preflight', async () => {
    const off = await raw(tinyUrl, 'GET', '/v1/models', undefined, { origin: 'https://app.example' });
    expect(off.headers['access-control-allow-origin']).toBeUndefined();
    const { url } = await start(tiny, { cors: ['https://app.example'] });
    const on = await raw(url, 'GET', '/v1/models', undefined, { origin: 'https://app.example' });
    expect(on.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(on.headers.vary).toBe('Origin');
    const other = await raw(url, 'GET', '/v1/models', undefined, { origin: 'https://evil.example' });
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
    const pre = await raw(url, 'OPTIONS', '/v1/chat/completions', undefined, {
      origin: 'https://app.example',
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type',
    });
    expect(pre.status).toBe(204);
    expect(pre.headers['access-control-allow-methods']).toBe('GET, POST, OPTIONS');
    expect(pre.headers['access-control-allow-headers']).toBe('authorization, content-type');
  });

  test('one record per request for access logs', async () => {
    const r = await client(tinyUrl).completions.create({
      model: 'tiny',
      prompt: 'Once',
      max_tokens: 3,
      temperature: 0,
    });
    const rec = await log.next((x) => x.id === r.id);
    expect(rec).toMatchObject({
      method: 'POST',
      path: '/v1/completions',
      status: 200,
      promptTokens: r.usage!.prompt_tokens,
      completionTokens: r.usage!.completion_tokens,
      policy: 'none',
    });
    expect(rec.durationMs).toBeGreaterThan(0);
    expect(tinyServer.stats()).toMatchObject({
      state: 'ready',
      active: 0,
      queued: 0,
      liveSequences: 0,
      kvReservedBytes: 0,
    });
    expect(kjvServer.modelId).toBe('default');
  });
});
