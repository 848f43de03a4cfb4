/**
 * Decode ahead (native/engine_ahead.cc): the model's thread runs a generation's next decode step
 * while JavaScript handles the token just returned. It must change nothing but the time: every
 * generation equals the same generation with it turned off (DEPTHGATE_DECODE_AHEAD=0), token for
 * token, layer trace for layer trace, KV cache for KV cache, through stops, eos, aborts, the end
 * of the context, seeds, penalties, every policy, multi-turn sequences and concurrent streams; and
 * a step run ahead that nobody asks for is undone before the sequence is read or changed.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { loadModel, type GenerateOptions, type Model, type Policy, type Sequence } from '../src';
import type { NativeModel, NativeRequest, NativeResponse, NativeSequence } from '../src/binding';
import { cleanup, randomTokens, relError, tinyModel } from './helpers';

afterAll(cleanup);

let model: Model;
let nm: NativeModel;
beforeAll(async () => {
  const dir = tinyModel({
    layers: 6,
    seed: 11,
    maxPositions: 160,
    flexidepth: { layers: [2, 3, 4, 5] },
    skiplayer: { mode: 'layer', layers: [1, 2, 3, 4] },
  });
  model = await loadModel(dir, { threads: 2, kvCacheType: 'f32' });
  nm = (model as unknown as { live(): NativeModel }).live();
});
afterAll(async () => model?.dispose());

/** Runs f with decode ahead on (the default) or off. */
async function withAhead<T>(on: boolean, f: () => Promise<T>): Promise<T> {
  const before = process.env.DEPTHGATE_DECODE_AHEAD;
  if (on) delete process.env.DEPTHGATE_DECODE_AHEAD;
  else process.env.DEPTHGATE_DECODE_AHEAD = '0';
  try {
    return await f();
  } finally {
    if (before === undefined) delete process.env.DEPTHGATE_DECODE_AHEAD;
    else process.env.DEPTHGATE_DECODE_AHEAD = before;
  }
}

/** Counts the forward() calls a step run ahead answered, until stop(). */
function countAheadHits(): { hits: () => number; calls: () => number; stop(): void } {
  const holder = model as unknown as { nm: NativeModel };
  const real = holder.nm;
  let hits = 0;
  let calls = 0;
  holder.nm = new Proxy(real, {
    get(target, prop) {
      if (prop === 'forward')
        return async (rq: NativeRequest[], p: Policy) => {
          const out = await target.forward(rq, p as never);
          calls++;
          if (out[0]?.timing.ahead) hits++;
          return out;
        };
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { hits: () => hits, calls: () => calls, stop: () => void (holder.nm = real) };
}

const prompt = { tokens: randomTokens(7, 0, 256, 3) };
const POLICIES: [string, Policy][] = [
  ['none', { type: 'none' }],
  ['flexidepth', { type: 'flexidepth' }],
  ['skiplayer', { type: 'skiplayer' }],
  ['d3', { type: 'd3', alpha: 0.8 }],
  ['static', { type: 'static', skipLayers: [2, 4], skipMlp: [1] }],
];

/** What a generation gave: tokens, per-token layer traces and router weights, and the reason it ended. */
async function trace(seq: Sequence | Model, input: Parameters<Model['generate']>[0], o: GenerateOptions) {
  const chunks = [];
  for await (const c of seq.stream(input, o))
    chunks.push({ token: c.token, executed: Array.from(c.executed), w: Array.from(c.routerWeights, String) });
  return chunks;
}

describe('decode ahead gives what the same generation gives without it', () => {
  test.each(POLICIES)('%s: greedy and sampled with penalties, and the steps are taken ahead', async (_, policy) => {
    for (const o of [
      { temperature: 0 },
      { temperature: 0.9, topK: 20, seed: 5, repetitionPenalty: 1.3, penaltyWindow: 6 },
    ] as GenerateOptions[]) {
      const opts: GenerateOptions = { ...o, policy, maxTokens: 40, stopOnEos: false };
      const off = await withAhead(false, () => model.generate(prompt, opts));
      const counter = countAheadHits();
      const on = await withAhead(true, () => model.generate(prompt, opts)).finally(() => counter.stop());
      expect(on.tokens).toEqual(off.tokens);
      expect(on.text).toEqual(off.text);
      expect(on.depth).toEqual(off.depth);
      // Every decode step after the first was answered from a step run ahead.
      expect(counter.calls()).toBe(40);
      expect(counter.hits()).toBe(39);
    }
  });

  test('per-token layer traces and router weights are the same', async () => {
    const o: GenerateOptions = { policy: { type: 'flexidepth' }, maxTokens: 30, stopOnEos: false, temperature: 0 };
    const off = await withAhead(false, () => trace(model, prompt, o));
    const on = await withAhead(true, () => trace(model, prompt, o));
    expect(on).toEqual(off);
  });

  test('a stop string and the end of the context end it as before; the next turns of the sequence are the same', async () => {
    const free = await model.generate(prompt, { maxTokens: 30, stopOnEos: false });
    const stopText = free.text.slice(12, 15);
    const runTurns = async () => {
      const seq = model.createSequence({ contextSize: 100 });
      const a = await seq.generate(prompt, { maxTokens: 30, stop: [stopText], stopOnEos: false });
      const b = await seq.generate(
        { tokens: randomTokens(3, 0, 256, 4) },
        { maxTokens: 30, temperature: 0.8, seed: 9 },
      );
      const c = await seq.generate({ tokens: [1, 2] }, { maxTokens: 200, temperature: 0 }); // to the context end
      const cache = Array.from({ length: 6 }, (_, l) => seq.kvCache(l));
      await seq.dispose();
      return { a: [a.tokens, a.finishReason], b: [b.tokens, b.finishReason], c: [c.tokens, c.finishReason], cache };
    };
    const off = await withAhead(false, runTurns);
    const on = await withAhead(true, runTurns);
    expect(off.a[1]).toBe('stop');
    expect(off.c[1]).toBe('context');
    expect(on).toEqual(off);
  });

  test('an abort in the middle, then the sequence goes on the same', async () => {
    const runAborted = async () => {
      const seq = model.createSequence({ contextSize: 100 });
      const ac = new AbortController();
      let n = 0;
      const s = seq.stream(prompt, { maxTokens: 50, signal: ac.signal, stopOnAbort: true, temperature: 1, seed: 2 });
      for await (const _ of s) if (++n === 7) ac.abort();
      const first = await s.result;
      const next = await seq.generate({ tokens: [5, 6, 7] }, { maxTokens: 10, temperature: 1, seed: 3 });
      const cache = seq.kvCache(3);
      await seq.dispose();
      return { first: [first.tokens, first.finishReason], next: next.tokens, cache };
    };
    const off = await withAhead(false, runAborted);
    const on = await withAhead(true, runAborted);
    expect(off.first[1]).toBe('abort');
    expect(on).toEqual(off);
  });

  test('concurrent generations share passes and give what they give alone', async () => {
    const inputs = [0, 1, 2].map((i) => ({ tokens: randomTokens(4 + i, 0, 256, 20 + i) }));
    const o: GenerateOptions = { maxTokens: 25, stopOnEos: false, temperature: 0.7, seed: 4 };
    const alone = await withAhead(false, async () => {
      const out = [];
      for (const x of inputs) out.push((await model.generate(x, o)).tokens);
      return out;
    });
    const together = await withAhead(true, () => Promise.all(inputs.map((x) => model.generate(x, o))));
    expect(together.map((r) => r.tokens)).toEqual(alone);
  });
});

test('disposing the sequence and the model while a step runs ahead frees them in order (in a child process: it crashed once)', () => {
  // A stop string ends each run with the next step in flight; the forward job then held the last
  // references to the sequence and the engine, and freed the engine first (a use after free).
  const root = path.join(__dirname, '..');
  const script = `const dg = require('./dist/index.js');
    (async () => {
      for (let i = 0; i < 20; i++) {
        const m = await dg.loadModel(dg.defaultModelDir(), { threads: 2 });
        const s = m.createSequence({ contextSize: 64 });
        const r = await s.generate({ tokens: [1, 2, 3] }, { maxTokens: 50, stop: ['e'], stopOnEos: false });
        if (r.finishReason !== 'stop') throw new Error('no stop: ' + r.finishReason);
        await s.dispose();
        await m.dispose();
      }
      console.log('ok');
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', timeout: 120000 });
  expect(r.stderr).toBe('');
  expect(r.signal).toBeNull();
  expect(r.status).toBe(0);
  expect(r.stdout.trim()).toBe('ok');
});

describe('a step run ahead at the binding', () => {
  const sample = {
    temperature: 0.8,
    topK: 0,
    topP: 1,
    repetitionPenalty: 1,
    frequencyPenalty: 0,
    presencePenalty: 0,
    penaltyWindow: 0,
  };
  const ids = Int32Array.from(randomTokens(5, 0, 256, 8));

  /** A sequence after the prompt pass asked to run ahead, and that pass's response. */
  async function primed(seed = 1): Promise<[NativeSequence, NativeResponse]> {
    const seq = nm.createSequence(64, seed);
    const [r] = await nm.forward([{ sequence: seq, tokens: ids, logits: 'none', sample, ahead: true }]);
    return [seq, r!];
  }
  /** The logits a plain sequence gives after `tokens` (no step ever run ahead). */
  async function plainLogits(tokens: number[]): Promise<Float32Array> {
    const seq = nm.createSequence(64, 1);
    const [r] = await nm.forward([{ sequence: seq, tokens: Int32Array.from(tokens), logits: 'last' }]);
    seq.dispose();
    return r!.logits!;
  }

  test('the length seen from JavaScript leaves the step out; the asked-for step is taken', async () => {
    const [seq, r] = await primed();
    expect(seq.length).toBe(ids.length); // read while the step may still run
    const [next] = await nm.forward([
      { sequence: seq, tokens: Int32Array.of(r.token!), logits: 'none', sample, genIndex: 1 },
    ]);
    expect(next!.timing.ahead).toBe(true);
    expect(seq.length).toBe(ids.length + 1);
    seq.dispose();
  });

  test('a different next request undoes the step and gets a plain pass', async () => {
    const [seq, r] = await primed();
    const other = (r.token! + 1) % 256;
    const [next] = await nm.forward([{ sequence: seq, tokens: Int32Array.of(other), logits: 'last' }]);
    expect(next!.timing.ahead).toBe(false);
    expect(seq.length).toBe(ids.length + 1);
    // (a plain pass over all six tokens at once rounds a little differently from 5 + 1 rows)
    expect(relError(next!.logits!, await plainLogits([...ids, other]))).toBeLessThan(1e-5);
    seq.dispose();
  });

  test('truncate, setSeed and readKv wait for the step and undo it', async () => {
    // truncate right after the answer, while the step may still be running
    const [a, ra] = await primed();
    a.truncate(3);
    expect(a.length).toBe(3);
    const [x] = await nm.forward([{ sequence: a, tokens: Int32Array.of(ra.token!), logits: 'last' }]);
    expect(x!.timing.ahead).toBe(false);
    expect(relError(x!.logits!, await plainLogits([...ids.slice(0, 3), ra.token!]))).toBeLessThan(1e-5);
    a.dispose();
    // readKv sees the prompt's positions only
    const [b] = await primed();
    expect(b.readKv(0).k.length).toBe(ids.length * (model.config.numKvHeads * model.config.headDim));
    b.dispose();
    // setSeed: the next draw comes from the new seed, as it does with no step run ahead
    const draw = async (ahead: boolean) => {
      const s = nm.createSequence(64, 1);
      const [r] = await nm.forward([{ sequence: s, tokens: ids, logits: 'none', sample, ahead }]);
      s.setSeed(77);
      const [n] = await nm.forward([
        { sequence: s, tokens: Int32Array.of(r!.token!), logits: 'last', sample, genIndex: 1 },
      ]);
      s.dispose();
      return n!;
    };
    const [reseeded, plain] = [await draw(true), await draw(false)];
    expect(reseeded.timing.ahead).toBe(false);
    expect(reseeded.token).toBe(plain.token);
    expect(Array.from(reseeded.logits!)).toEqual(Array.from(plain.logits!));
  });

  test('no step runs past a stop token, the context end, or for a batch of several requests', async () => {
    const [seq, r] = await primed();
    // the same prompt pass with its own token as a stop token
    const s2 = nm.createSequence(64, 1);
    const [p] = await nm.forward([
      { sequence: s2, tokens: ids, logits: 'none', sample, ahead: true, aheadStop: Int32Array.of(r.token!) },
    ]);
    const [n] = await nm.forward([
      { sequence: s2, tokens: Int32Array.of(p!.token!), logits: 'none', sample, genIndex: 1 },
    ]);
    expect(n!.timing.ahead).toBe(false);
    // a context with room for the prompt and one more token only
    const s3 = nm.createSequence(ids.length + 1, 1);
    const [q] = await nm.forward([{ sequence: s3, tokens: ids, logits: 'none', sample, ahead: true }]);
    const [m] = await nm.forward([
      { sequence: s3, tokens: Int32Array.of(q!.token!), logits: 'none', sample, genIndex: 1, ahead: true },
    ]);
    expect(m!.timing.ahead).toBe(true);
    expect(s3.length).toBe(ids.length + 1);
    // two requests in one call
    const s4 = nm.createSequence(64, 1);
    const s5 = nm.createSequence(64, 2);
    const both = await nm.forward([
      { sequence: s4, tokens: ids, logits: 'none', sample, ahead: true },
      { sequence: s5, tokens: ids, logits: 'none', sample, ahead: true },
    ]);
    const [again] = await nm.forward([
      { sequence: s4, tokens: Int32Array.of(both[0]!.token!), logits: 'none', sample, genIndex: 1 },
    ]);
    expect(again!.timing.ahead).toBe(false);
    for (const s of [seq, s2, s3, s4, s5]) s.dispose();
  });

  test('a malformed aheadStop is a typed error', async () => {
    const seq = nm.createSequence(16, 1);
    for (const bad of [[1], 'x', new Uint32Array(1)])
      expect(() =>
        nm.forward([{ sequence: seq, tokens: ids, logits: 'none', sample, ahead: true, aheadStop: bad as never }]),
      ).toThrow(/request.aheadStop must be an Int32Array/);
    // and the sequence still works
    const [ok] = await nm.forward([{ sequence: seq, tokens: ids, logits: 'none', sample }]);
    expect(ok!.token).toBeGreaterThanOrEqual(0);
    seq.dispose();
  });
});
