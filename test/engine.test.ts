/**
 * The engine's logits against an independent float64 reference, on tiny random checkpoints of
 * every supported architecture and option.
 */
import { loadModel, type Model } from '../src';
import type { TinyModelOptions } from '../src/testing';
import { argmax, loadReference, referenceGreedy, referenceLogits, type KvCacheType } from './reference/reference';
import { cleanup, randomTokens, relError, tinyModel } from './helpers';

afterAll(cleanup);

// Weights of every dtype are decoded exactly by both sides, so only the engine's f32 arithmetic
// differs from float64: measured 2.6e-7 to 4.8e-7 of the logit range with an f32 cache. With a
// bf16 or f16 cache the reference stores K and V rounded the same way (roundBf16/roundF16); what
// is left is an f32 K or V element landing on the other side of a rounding boundary than its
// float64 value: measured up to 4e-7 (bf16) and 1.1e-5 (f16), so those get 1e-4 (a rounding
// error of the cache the reference did not model, or no rounding at all, is 4e-4 to 5e-3).
const TOL: Record<KvCacheType, number> = { f32: 1e-5, bf16: 1e-4, f16: 1e-4 };
const TOL_F32 = TOL.f32;
// Below this, against a reference that does not round K and V, the cache would not be rounded.
const ROUNDING_SEEN = { bf16: 1e-3, f16: 1e-4 };

const cases: [string, TinyModelOptions][] = [
  ['llama f32 GQA', { arch: 'llama', dtype: 'f32', heads: 4, kvHeads: 2 }],
  ['llama f32 MHA tied', { arch: 'llama', dtype: 'f32', heads: 4, kvHeads: 4, tied: true }],
  ['llama bf16', { arch: 'llama', dtype: 'bf16' }],
  ['llama f16', { arch: 'llama', dtype: 'f16' }],
  ['llama attention_bias', { arch: 'llama', bias: true }],
  ['llama rope llama3', { arch: 'llama', ropeScaling: 'llama3', ropeTheta: 500000 }],
  ['llama rope linear', { arch: 'llama', ropeScaling: 'linear' }],
  ['llama explicit head_dim', { arch: 'llama', hidden: 64, heads: 4, kvHeads: 1, headDim: 32 }],
  ['llama 3 shards eos list', { arch: 'llama', shards: 3, eosList: true, layers: 3 }],
  ['mistral sliding window', { arch: 'mistral', slidingWindow: 5 }],
  ['qwen2 biases bf16 tied', { arch: 'qwen2', dtype: 'bf16', tied: true }],
];

describe.each(cases)('%s', (_name, options) => {
  let model: Model;
  let dir: string;
  beforeAll(async () => {
    dir = tinyModel({ seed: 7, ...options });
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test('logits at every position match the float64 reference', async () => {
    const ref = loadReference(dir);
    const tokens = randomTokens(12, 0, model.config.vocabSize, 3);
    const want = referenceLogits(ref, tokens);
    const got = await model.evaluate(tokens);
    expect(got.logits).toHaveLength(tokens.length);
    for (let i = 0; i < tokens.length; i++) expect(relError(got.logits[i], want[i])).toBeLessThan(TOL_F32);
  });

  test.each(['bf16', 'f16'] as const)(
    'with a %s KV cache, logits match the reference that rounds K and V the same way',
    async (kv) => {
      const ref = loadReference(dir);
      const tokens = randomTokens(12, 0, model.config.vocabSize, 3);
      const want = referenceLogits(ref, tokens, { kvCacheType: kv });
      const unrounded = referenceLogits(ref, tokens);
      const m = await loadModel(dir, { kvCacheType: kv, threads: 2 });
      try {
        expect(m.info.kvCacheType).toBe(kv);
        expect(m.info.kvBytesPerToken).toBe(2 * 2 * m.config.numLayers * m.config.numKvHeads * m.config.headDim);
        const got = await m.evaluate(tokens);
        for (let i = 0; i < tokens.length; i++) expect(relError(got.logits[i], want[i])).toBeLessThan(TOL[kv]);
        // The cache really is rounded: against the unrounded reference the error is far larger.
        expect(Math.max(...got.logits.map((row, i) => relError(row, unrounded[i]!)))).toBeGreaterThan(
          ROUNDING_SEEN[kv],
        );
      } finally {
        await m.dispose();
      }
    },
  );

  test('greedy continuation matches the reference', async () => {
    const ref = loadReference(dir);
    const prompt = randomTokens(5, 0, 256, 11);
    const want = referenceGreedy(ref, prompt, 8);
    const r = await model.generate({ tokens: prompt }, { maxTokens: 8, stopOnEos: false });
    expect(r.tokens).toEqual(want);
  });
});

describe('batching and caching', () => {
  let model: Model;
  let dir: string;
  beforeAll(async () => {
    dir = tinyModel({ seed: 3, maxPositions: 640 });
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test('a prompt longer than one internal chunk (256 rows) matches the reference', async () => {
    const ref = loadReference(dir);
    const tokens = randomTokens(300, 0, 300, 5);
    const want = referenceLogits(ref, tokens);
    const got = await model.evaluate(tokens);
    for (const i of [0, 100, 255, 256, 257, 299]) expect(relError(got.logits[i], want[i])).toBeLessThan(TOL_F32);
  });

  test('concurrent generations batched together equal the same generations one by one', async () => {
    const prompts = [0, 1, 2, 3, 4, 5].map((k) => randomTokens(3 + k, 0, 256, 100 + k));
    const alone: number[][] = [];
    for (const p of prompts)
      alone.push((await model.generate({ tokens: p }, { maxTokens: 10, stopOnEos: false })).tokens);
    const together = await Promise.all(
      prompts.map((p) => model.generate({ tokens: p }, { maxTokens: 10, stopOnEos: false })),
    );
    expect(together.map((r) => r.tokens)).toEqual(alone);
  });

  test('a sequence continues from its cache exactly as a fresh pass over the whole history', async () => {
    const seq = model.createSequence();
    const a = randomTokens(7, 0, 256, 21);
    const b = randomTokens(5, 0, 256, 22);
    const first = await seq.evaluate(a);
    const second = await seq.evaluate(b);
    const whole = await model.evaluate([...a, ...b]);
    expect(relError(first.logits[6], whole.logits[6])).toBeLessThan(1e-6);
    for (let i = 0; i < b.length; i++) expect(relError(second.logits[i], whole.logits[7 + i])).toBeLessThan(1e-5);
    expect(seq.tokens).toEqual([...a, ...b]);
    seq.dispose();
  });

  test('generate on a sequence keeps its history for the next turn', async () => {
    const ref = loadReference(dir);
    const seq = model.createSequence();
    const p1 = randomTokens(4, 0, 256, 31);
    const r1 = await seq.generate({ tokens: p1 }, { maxTokens: 4, stopOnEos: false });
    const p2 = randomTokens(3, 0, 256, 32);
    const r2 = await seq.generate({ tokens: p2 }, { maxTokens: 4, stopOnEos: false });
    // The whole conversation, re-run from scratch by the reference, gives the same tokens.
    const history = [...p1, ...r1.tokens, ...p2];
    expect(r2.tokens).toEqual(referenceGreedy(ref, history, 4));
    seq.dispose();
  });

  test('argmax of the evaluated logits is the greedy token', async () => {
    const tokens = randomTokens(6, 0, 256, 41);
    const e = await model.evaluate(tokens);
    const g = await model.generate({ tokens }, { maxTokens: 1, stopOnEos: false });
    expect(g.tokens[0]).toBe(argmax(e.logits[5]));
  });
});
