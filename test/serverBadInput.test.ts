/**
 * Bad input to the server: malformed JSON, wrong types, unknown fields, huge bodies, slow
 * clients, invalid UTF-8, cut connections and random bodies. Each gets a 4xx in OpenAI's error
 * shape naming what is wrong (never a 5xx, never a crash), and the server keeps serving.
 */
import fc from 'fast-check';
import { createServer, loadModel, type DepthgateServer, type Model } from '../src';
import { cleanup, tinyModel } from './helpers';
import { connect, parseSse, post, raw, readAll } from './serverHelpers';

let model: Model;
let server: DepthgateServer;
let url: string;

beforeAll(async () => {
  model = await loadModel(tinyModel({ seed: 5, maxPositions: 64 }), { threads: 1 });
  server = createServer(model, { bodyLimit: 64 * 1024, bodyTimeoutMs: 400, modelId: 'tiny' });
  url = (await server.listen(0)).url;
});

afterAll(async () => {
  await server?.close({ timeoutMs: 0 });
  await model?.dispose();
  cleanup();
});

/** The error body's shape, for any 4xx. */
function expectErrorShape(text: string): { message: string; type: string; param: string | null; code: string | null } {
  const body = JSON.parse(text);
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof body.error.message).toBe('string');
  return body.error;
}

async function stillServes(): Promise<void> {
  const ok = await post(url, '/v1/completions', { prompt: 'Once', max_tokens: 2 });
  expect(ok.status).toBe(200);
}

test('malformed JSON, bodies that are not objects, and empty bodies are 400s', async () => {
  for (const body of [
    '{',
    '{"prompt": }',
    '{"prompt": "x",}',
    "{'prompt': 'x'}",
    'nul',
    '',
    '   ',
    '[1, 2',
    '{"a": 1e999999}x',
  ]) {
    const r = await raw(url, 'POST', '/v1/completions', body);
    expect(r.status).toBe(400);
    expect(expectErrorShape(r.text).code).toBe('invalid_json');
  }
  for (const body of ['null', '[]', '"prompt"', '42', 'true', '[{"prompt": "x"}]']) {
    const r = await raw(url, 'POST', '/v1/chat/completions', body);
    expect(r.status).toBe(400);
    expect(expectErrorShape(r.text)).toMatchObject({ param: 'body', code: 'invalid_type' });
  }
  // Nesting deep enough to overflow a recursive parser.
  const deep = await raw(url, 'POST', '/v1/completions', '{"prompt": ' + '['.repeat(200_00) + ']'.repeat(200_00) + '}');
  expect(deep.status).toBe(400);
  expectErrorShape(deep.text);
  await stillServes();
});

test('every field of the wrong type or out of range is a 400 naming it', async () => {
  const chat = { model: 'tiny', messages: [{ role: 'user', content: 'hi' }] };
  const cases: [object, string, string][] = [
    [{ ...chat, model: 5 }, 'model', 'invalid_type'],
    [{ ...chat, messages: 'hi' }, 'messages', 'invalid_type'],
    [{ ...chat, messages: [] }, 'messages', 'invalid_value'],
    [{ ...chat, messages: [null] }, 'messages[0]', 'invalid_type'],
    [{ ...chat, messages: [{ role: 'user' }] }, 'messages[0].content', 'missing_required_parameter'],
    [{ ...chat, messages: [{ role: 'user', content: 7 }] }, 'messages[0].content', 'invalid_type'],
    [
      { ...chat, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] },
      'messages[0].content[0].type',
      'unsupported_parameter',
    ],
    [{ ...chat, messages: [{ role: 'user', content: 'x', extra: 1 }] }, 'messages[0].extra', 'unknown_parameter'],
    [{ ...chat, messages: [{ role: 'tool', content: 'x' }] }, 'messages[0].role', 'unsupported_parameter'],
    [{ ...chat, max_tokens: 0 }, 'max_tokens', 'invalid_value'],
    [{ ...chat, max_tokens: 1.5 }, 'max_tokens', 'invalid_type'],
    [{ ...chat, max_tokens: 4, max_completion_tokens: 5 }, 'max_completion_tokens', 'invalid_value'],
    [{ ...chat, max_completion_tokens: -1 }, 'max_completion_tokens', 'invalid_value'],
    [{ ...chat, temperature: '1' }, 'temperature', 'invalid_type'],
    [{ ...chat, temperature: -0.1 }, 'temperature', 'invalid_value'],
    [{ ...chat, top_p: 0 }, 'top_p', 'invalid_value'],
    [{ ...chat, top_p: 1.01 }, 'top_p', 'invalid_value'],
    [{ ...chat, top_k: -2 }, 'top_k', 'invalid_value'],
    [{ ...chat, top_k: 2 ** 31 }, 'top_k', 'invalid_value'],
    [{ ...chat, seed: -1 }, 'seed', 'invalid_value'],
    [{ ...chat, seed: 'x' }, 'seed', 'invalid_type'],
    [{ ...chat, stop: 5 }, 'stop', 'invalid_type'],
    [{ ...chat, stop: [''] }, 'stop[0]', 'invalid_value'],
    [{ ...chat, stop: ['a', 3] }, 'stop[1]', 'invalid_type'],
    [{ ...chat, stop: new Array(17).fill('x') }, 'stop', 'invalid_value'],
    [{ ...chat, n: 0 }, 'n', 'invalid_value'],
    [{ ...chat, stream: 'yes' }, 'stream', 'invalid_type'],
    [{ ...chat, stream_options: { include_usage: true } }, 'stream_options', 'invalid_value'],
    [{ ...chat, stream: true, stream_options: { include_usage: 1 } }, 'stream_options.include_usage', 'invalid_type'],
    [{ ...chat, stream: true, stream_options: { continuous: true } }, 'stream_options.continuous', 'unknown_parameter'],
    [{ ...chat, frequency_penalty: 'x' }, 'frequency_penalty', 'invalid_type'],
    [{ ...chat, frequency_penalty: 3 }, 'frequency_penalty', 'invalid_value'],
    [{ ...chat, repetition_penalty: 0 }, 'repetition_penalty', 'invalid_value'],
    [{ ...chat, logprobs: 'yes' }, 'logprobs', 'invalid_type'],
    [{ ...chat, top_logprobs: 3 }, 'top_logprobs', 'unsupported_parameter'],
    [{ ...chat, tools: [{ type: 'function' }] }, 'tools', 'unsupported_parameter'],
    [{ ...chat, response_format: { type: 'json_object' } }, 'response_format', 'unsupported_parameter'],
    [{ ...chat, logit_bias: { '5': 10 } }, 'logit_bias', 'unsupported_parameter'],
    [{ ...chat, user: 5 }, 'user', 'invalid_type'],
    [{ ...chat, depthgate: 'none' }, 'depthgate', 'invalid_type'],
    [{ ...chat, depthgate: { policy: 5 } }, 'depthgate.policy', 'invalid_type'],
    [{ ...chat, depthgate: { policy: 'warp' } }, 'depthgate.policy', 'invalid_value'],
    [{ ...chat, depthgate: { policy: 'd3:alpha=2' } }, 'depthgate.policy', 'invalid_value'],
    [{ ...chat, depthgate: { trace: 'yes' } }, 'depthgate.trace', 'invalid_type'],
    [{ ...chat, depthgate: { color: 1 } }, 'depthgate.color', 'unknown_parameter'],
    [{ ...chat, __proto__: { x: 1 }, constructor: 1 }, 'constructor', 'unknown_parameter'],
  ];
  for (const [body, param, code] of cases) {
    const r = await post(url, '/v1/chat/completions', body);
    expect([r.status, JSON.stringify(body)]).toEqual([400, JSON.stringify(body)]);
    expect([expectErrorShape(r.text), JSON.stringify(body)]).toEqual([
      expect.objectContaining({ param, code }),
      JSON.stringify(body),
    ]);
  }
  const completions: [object, string, string][] = [
    [{ model: 'tiny' }, 'prompt', 'missing_required_parameter'],
    [{ prompt: 5 }, 'prompt', 'invalid_type'],
    [{ prompt: [] }, 'prompt', 'invalid_value'],
    [{ prompt: [1, 'a'] }, 'prompt[1]', 'invalid_type'],
    [{ prompt: [1, 99999] }, 'prompt[1]', 'invalid_value'],
    [{ prompt: [1.5] }, 'prompt[0]', 'invalid_type'],
    [{ prompt: [[]] }, 'prompt[0]', 'invalid_value'],
    [{ prompt: [[1], [2]] }, 'prompt', 'unsupported_parameter'],
    [{ prompt: 'x', echo: true }, 'echo', 'unsupported_parameter'],
    [{ prompt: 'x', suffix: 'y' }, 'suffix', 'unsupported_parameter'],
    [{ prompt: 'x', best_of: 2 }, 'best_of', 'unsupported_parameter'],
    [{ prompt: 'x', logprobs: 2 }, 'logprobs', 'unsupported_parameter'],
    [{ prompt: 'x', messages: [] }, 'messages', 'unknown_parameter'],
  ];
  for (const [body, param, code] of completions) {
    const r = await post(url, '/v1/completions', body);
    expect(r.status).toBe(400);
    expect([expectErrorShape(r.text), JSON.stringify(body)]).toEqual([
      expect.objectContaining({ param, code }),
      JSON.stringify(body),
    ]);
  }
  await stillServes();
});

test('a body over the limit is a 413 whether or not it is announced (even a lying length), and the server keeps serving', async () => {
  const big = JSON.stringify({ prompt: 'y'.repeat(200 * 1024) });
  const announced = await raw(url, 'POST', '/v1/completions', big);
  expect(announced.status).toBe(413);
  expect(expectErrorShape(announced.text).code).toBe('request_too_large');
  const chunked = await raw(url, 'POST', '/v1/completions', big, { 'transfer-encoding': 'chunked' });
  expect(chunked.status).toBe(413);
  // A lying Content-Length far above the limit is refused before anything is read.
  const s = await connect(url);
  const first = new Promise<string>((r) => s.once('data', (c: Buffer) => r(c.toString('utf8'))));
  s.write(
    'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{"prompt":',
  );
  expect(await first).toMatch(/^HTTP\/1\.1 413 /);
  s.destroy();
  await stillServes();
});

test('a client that trickles its body in gets a 408 and is disconnected; the server keeps serving others meanwhile', async () => {
  const s = await connect(url);
  const answer = readAll(s, 5000);
  const body = JSON.stringify({ prompt: 'Once upon a time', max_tokens: 2 });
  s.write(
    `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
  );
  const t0 = Date.now();
  let i = 0;
  const drip = setInterval(() => {
    if (i < body.length - 1 && !s.destroyed) s.write(body[i++]);
  }, 100);
  await stillServes(); // others are served while the slow one dribbles
  const r = await answer;
  clearInterval(drip);
  expect(r.closed).toBe(true);
  expect(Date.now() - t0).toBeLessThan(3000);
  expect(r.text).toMatch(/^HTTP\/1\.1 408 /);
  expect(expectErrorShape(r.text.split('\r\n\r\n')[1]).code).toBe('request_timeout');
  await stillServes();
});

test('invalid UTF-8 is a 400; a body cut off by a closed connection is no crash', async () => {
  const bad = Buffer.concat([Buffer.from('{"prompt": "'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}')]);
  const r = await raw(url, 'POST', '/v1/completions', bad);
  expect(r.status).toBe(400);
  expect(expectErrorShape(r.text).code).toBe('invalid_utf8');
  const overlong = Buffer.concat([Buffer.from('{"prompt": "'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}')]);
  expect((await raw(url, 'POST', '/v1/completions', overlong)).status).toBe(400);
  // Lone surrogates escaped in JSON are valid JSON; the tokenizer gets a string with U+FFFD-free text or refuses cleanly.
  const lone = await raw(url, 'POST', '/v1/completions', '{"prompt": "\\ud800 x", "max_tokens": 2}');
  expect([200, 400]).toContain(lone.status);
  const s = await connect(url);
  s.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt"');
  await new Promise((res) => setTimeout(res, 20));
  s.destroy();
  await stillServes();
});

test('random bodies (fuzz): always 200 or a 4xx in the error shape, never a 5xx, and the server lives on', async () => {
  // Mostly valid values, sometimes any JSON at all, for every field; now and then an unknown one.
  const sometimesAnything = <T>(valid: fc.Arbitrary<T>) =>
    fc.oneof({ weight: 15, arbitrary: valid }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) });
  const text = fc.oneof(fc.constantFrom('Once', 'Hello there', ''), fc.string({ maxLength: 12, unit: 'binary' }));
  const fields = {
    max_tokens: sometimesAnything(fc.integer({ min: 1, max: 8 })),
    temperature: sometimesAnything(fc.double({ min: 0, max: 2, noNaN: true })),
    top_p: sometimesAnything(fc.double({ min: 0.01, max: 1, noNaN: true })),
    top_k: sometimesAnything(fc.integer({ min: -1, max: 50 })),
    seed: sometimesAnything(fc.nat()),
    stop: sometimesAnything(
      fc.oneof(
        fc.string({ minLength: 1, maxLength: 3 }),
        fc.array(fc.string({ minLength: 1, maxLength: 3 }), { maxLength: 3 }),
      ),
    ),
    stream: sometimesAnything(fc.boolean()),
    n: sometimesAnything(fc.constant(1)),
    depthgate: sometimesAnything(
      fc.record(
        { policy: fc.constantFrom('none', 'static:skip=0', 'd3:alpha=0.5', 'static:attn=1'), trace: fc.boolean() },
        { requiredKeys: [] },
      ),
    ),
    frequency_penalty: sometimesAnything(fc.constant(0)),
    model: sometimesAnything(fc.constant('tiny')),
  };
  const optional = fc.record(fields, { requiredKeys: [] });
  const unknown = fc.oneof(
    { weight: 9, arbitrary: fc.constant({}) },
    { weight: 1, arbitrary: fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 1 }) },
  );
  const chat = fc.record({
    messages: sometimesAnything(
      fc.array(fc.record({ role: fc.constantFrom('system', 'user', 'assistant', 'developer'), content: text }), {
        minLength: 1,
        maxLength: 3,
      }),
    ),
  });
  const completion = fc.record({
    prompt: sometimesAnything(
      fc.oneof(text, fc.array(fc.integer({ min: 0, max: 330 }), { minLength: 1, maxLength: 8 })),
    ),
  });
  const statuses = new Map<number, number>();
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.tuple(fc.constant('/v1/chat/completions'), chat),
        fc.tuple(fc.constant('/v1/completions'), completion),
      ),
      optional,
      unknown,
      async ([path, base], extra, unk) => {
        const body = { ...unk, ...base, ...extra };
        const r = await raw(url, 'POST', path, JSON.stringify(body));
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status === 200) {
          if (body.stream === true) expect(parseSse(r.text).done).toBe(true);
          else expect(r.json().choices).toHaveLength(1);
        } else {
          if (r.status < 400 || r.status >= 500)
            throw new Error(`status ${r.status} for ${JSON.stringify(body)}: ${r.text}`);
          expectErrorShape(r.text);
        }
      },
    ),
    { numRuns: 300, seed: 19 },
  );
  console.log(`fuzzed bodies by status: ${JSON.stringify(Object.fromEntries(statuses))}`);
  expect(statuses.get(200)).toBeGreaterThan(90); // the bodies reach generation, not only validation
  await stillServes();
  expect(server.stats()).toMatchObject({ active: 0, queued: 0, liveSequences: 0 });
});
