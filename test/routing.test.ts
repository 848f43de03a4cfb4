/**
 * Token-routed layers: the engine (compacted active rows, gather/scatter, K/V for every token)
 * against a dense-then-mask float64 reference that computes every layer for every token and then
 * masks as the policy says. Decisions must be identical and logits within 1e-4.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InvalidOptionError, DepthgateError, loadModel, type Model, type Policy } from '../src';
import { d3Depth as engineD3Depth, d3LayerSet as engineD3Set } from '../src/policy';
import type { TinyModelOptions } from '../src/testing';
import { argmax } from './reference/reference';
import { d3Depth, d3LayerSet, loadRoutedReference, referenceRouted, type RefPolicy } from './reference/routed';
import type { NativeModel } from '../src/binding';
import { cleanup, editF32Tensors, observePasses, randomTokens, relError, tinyModel } from './helpers';

afterAll(cleanup);
const TOL = 1e-5; // measured about 4e-7 with an f32 KV cache (engine.test.ts)

/** Engine decisions and logits at every position equal the reference's. */
async function expectMatches(
  model: Model,
  dir: string,
  tokens: number[],
  policy: Policy,
  ref: RefPolicy,
  addons: string[] = [],
) {
  const want = referenceRouted(loadRoutedReference(dir, addons), tokens, ref);
  const got = await model.evaluate(tokens, { policy });
  for (let p = 0; p < tokens.length; p++) {
    expect(Array.from(got.executed[p])).toEqual(want.executed[p]);
    expect(relError(got.logits[p], want.logits[p])).toBeLessThan(TOL);
    want.weights[p].forEach((w, l) => {
      if (Number.isNaN(w)) expect(got.routerWeights[p][l]).toBeNaN();
      else expect(Math.abs(got.routerWeights[p][l] - w)).toBeLessThan(1e-5);
    });
  }
  return { got, want };
}

/** Some token skips layer l while a later token runs it: its K/V must have been written. */
function skippedThenRead(executed: number[][]): boolean {
  for (let l = 0; l < executed[0].length; l++)
    for (let p = 0; p < executed.length; p++)
      if (!executed[p][l] && executed.slice(p + 1).some((row) => row[l])) return true;
  return false;
}

describe.each<[string, TinyModelOptions]>([
  ['f32', { dtype: 'f32' }],
  ['bf16 GQA qwen2', { arch: 'qwen2', dtype: 'bf16' }],
])('FlexiDepth (%s)', (_n, base) => {
  let model: Model;
  let dir: string;
  beforeAll(async () => {
    dir = tinyModel({ ...base, layers: 6, seed: 11, flexidepth: { layers: [2, 3, 4, 5] } });
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test('decisions, router weights and logits match the reference; decisions split both ways', async () => {
    const tokens = randomTokens(24, 0, 300, 5);
    const { want } = await expectMatches(model, dir, tokens, { type: 'flexidepth' }, { type: 'flexidepth' });
    const routed = want.executed.flatMap((row) => row.slice(2));
    const runs = routed.filter(Boolean).length;
    expect(runs).toBeGreaterThan(routed.length * 0.2);
    expect(runs).toBeLessThan(routed.length * 0.8);
    expect(want.executed.every((row) => row[0] === 1 && row[1] === 1)).toBe(true); // layers 0, 1 are plain
    expect(skippedThenRead(want.executed)).toBe(true);
  });

  test('another threshold', async () => {
    await expectMatches(
      model,
      dir,
      randomTokens(16, 0, 300, 6),
      { type: 'flexidepth', threshold: 0.3 },
      { type: 'flexidepth', threshold: 0.3 },
    );
  });

  test('decode, one token at a time through the cache, equals the full-sequence reference', async () => {
    const tokens = randomTokens(14, 0, 300, 7);
    const want = referenceRouted(loadRoutedReference(dir), tokens, { type: 'flexidepth' });
    const seq = model.createSequence();
    await seq.evaluate(tokens.slice(0, 6), { policy: { type: 'flexidepth' } });
    for (let p = 6; p < tokens.length; p++) {
      const r = await seq.evaluate([tokens[p]], { policy: { type: 'flexidepth' } });
      expect(Array.from(r.executed[0])).toEqual(want.executed[p]);
      expect(relError(r.logits[0], want.logits[p])).toBeLessThan(TOL);
    }
    seq.dispose();
  });

  test('the prompt is routed and generated tokens report their layers', async () => {
    const prompt = randomTokens(6, 0, 256, 8);
    const r = await model.generate(
      { tokens: prompt },
      { maxTokens: 6, stopOnEos: false, policy: { type: 'flexidepth' } },
    );
    const all = [...prompt, ...r.tokens];
    const want = referenceRouted(loadRoutedReference(dir), all, { type: 'flexidepth' });
    // Token i is produced at position P-1+i: greedy argmax there, and the layers reported are that row's.
    r.tokens.forEach((t, i) => expect(t).toBe(argmax(want.logits[prompt.length - 1 + i])));
    const counts = want.executed.slice(prompt.length - 1, prompt.length - 1 + r.tokens.length);
    expect(r.depth.layerCounts).toEqual(
      counts.reduce((acc, row) => acc.map((a, l) => a + row[l]), new Array(6).fill(0)),
    );
    expect(r.depth.meanLayers).toBeCloseTo(counts.flat().reduce((a, b) => a + b, 0) / r.tokens.length, 10);
  });
});

test('FlexiDepth weights from an add-on file applied to a base model give the same result', async () => {
  const dir = tinyModel({
    layers: 6,
    seed: 11,
    flexidepth: { layers: [2, 3, 4, 5], addonFile: 'flexidepth.safetensors' },
  });
  const addon = path.join(dir, 'flexidepth.safetensors');
  const plain = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
  await expect(plain.evaluate([1, 2, 3], { policy: { type: 'flexidepth' } })).rejects.toThrow(
    /no FlexiDepth router weights/,
  );
  await plain.dispose();
  const model = await loadModel(dir, { kvCacheType: 'f32', threads: 2, addons: [addon] });
  expect(model.info.flexiDepthLayers).toEqual([2, 3, 4, 5]);
  await expectMatches(model, dir, randomTokens(16, 0, 300, 9), { type: 'flexidepth' }, { type: 'flexidepth' }, [addon]);
  await model.dispose();
});

describe.each(['layer', 'module'] as const)('SkipLayer per %s', (mode) => {
  let model: Model;
  let dir: string;
  beforeAll(async () => {
    dir = tinyModel({ layers: 5, seed: 4, skiplayer: { mode } });
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test('decisions and logits match the reference; decisions split both ways', async () => {
    const { want } = await expectMatches(
      model,
      dir,
      randomTokens(20, 0, 300, 3),
      { type: 'skiplayer' },
      { type: 'skiplayer' },
    );
    const flat = want.executed.flat();
    expect(flat.some((x) => x === 1)).toBe(true);
    expect(flat.some((x) => x === 0)).toBe(true);
    expect(skippedThenRead(want.executed)).toBe(true);
  });

  test('decode, one token at a time through the cache: decisions and logits equal the full-sequence reference', async () => {
    const tokens = randomTokens(14, 0, 300, 23);
    const want = referenceRouted(loadRoutedReference(dir), tokens, { type: 'skiplayer' });
    const seq = model.createSequence();
    await seq.evaluate(tokens.slice(0, 5), { policy: { type: 'skiplayer' } });
    for (let p = 5; p < tokens.length; p++) {
      const r = await seq.evaluate([tokens[p]], { policy: { type: 'skiplayer' } });
      expect(Array.from(r.executed[0])).toEqual(want.executed[p]);
      expect(relError(r.logits[0], want.logits[p])).toBeLessThan(TOL);
    }
    expect(want.executed.slice(5).flat()).toContain(0);
    seq.dispose();
  });

  test('a tie between the skip and run logits skips (README: "a tie skips")', async () => {
    // Identical [skip, run] rows give equal logits for every input: every routed decision is a tie.
    const tieDir = tinyModel({ layers: 5, seed: 4, skiplayer: { mode } });
    const names = Array.from({ length: 5 }, (_, l) =>
      mode === 'layer'
        ? [`model.layers.${l}.skip_router.weight`]
        : [`model.layers.${l}.self_attn.skip_router.weight`, `model.layers.${l}.mlp.skip_router.weight`],
    ).flat();
    editF32Tensors(
      path.join(tieDir, 'model.safetensors'),
      Object.fromEntries(names.map((n) => [n, (w: Float32Array) => w.copyWithin(w.length / 2, 0, w.length / 2)])),
    );
    const tied = await loadModel(tieDir, { kvCacheType: 'f32', threads: 1 });
    const tokens = randomTokens(10, 0, 300, 24);
    const r = await tied.evaluate(tokens, { policy: { type: 'skiplayer' } });
    expect(r.executed.every((row) => row.every((x) => x === 0))).toBe(true);
    // Every layer skipped is the identity everywhere: the logits are those of static skip-all.
    const all = await tied.evaluate(tokens, { policy: { type: 'static', skipLayers: [0, 1, 2, 3, 4] } });
    r.logits.forEach((row, p) => expect(relError(row, all.logits[p])).toBeLessThan(TOL));
    await tied.dispose();
  });
});

test('a policy that runs every layer gives exactly the no-skip logits', async () => {
  const dir = tinyModel({ layers: 4, seed: 2, skiplayer: { mode: 'layer' } });
  const model = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
  const tokens = randomTokens(30, 0, 300, 12);
  const none = await model.evaluate(tokens);
  const routedAll = await model.evaluate(tokens, { policy: { type: 'static' } });
  routedAll.logits.forEach((row, i) => expect(Array.from(row)).toEqual(Array.from(none.logits[i])));
  expect(routedAll.executed.every((row) => row.every((x) => x === 1))).toBe(true);
  await model.dispose();
});

test('a learned router: positions that ran every layer, after positions that all did too, are bit-identical to no-skip', async () => {
  // Routers on layers 1 and 2 of 4. The prompt is chosen token by token so that its first 6
  // positions run every layer (each candidate is tried through the engine's own decisions); the
  // rest is random, so later positions skip and the batch the full rows sit in is compacted.
  const dir = tinyModel({ layers: 4, seed: 2, skiplayer: { mode: 'layer', layers: [1, 2] } });
  const model = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
  const prefix: number[] = [];
  const candidates = randomTokens(400, 0, 300, 41);
  for (const t of candidates) {
    if (prefix.length === 6) break;
    const r = await model.evaluate([...prefix, t], { policy: { type: 'skiplayer' } });
    if (r.executed[prefix.length].every((x) => x === 1)) prefix.push(t);
  }
  expect(prefix).toHaveLength(6);
  const tokens = [...prefix, ...randomTokens(24, 0, 300, 12)];
  const none = await model.evaluate(tokens);
  const sl = await model.evaluate(tokens, { policy: { type: 'skiplayer' } });
  let full = 0;
  while (full < tokens.length && sl.executed[full].every((x) => x === 1)) full++;
  expect(full).toBeGreaterThanOrEqual(6);
  expect(sl.executed.slice(full).some((row) => row.includes(0))).toBe(true); // the router is live
  for (let p = 0; p < full; p++) expect(Array.from(sl.logits[p])).toEqual(Array.from(none.logits[p]));
  // After the first skip the logits differ (the check above could not pass by accident).
  expect(relError(sl.logits[tokens.length - 1], none.logits[tokens.length - 1])).toBeGreaterThan(1e-4);
  await model.dispose();
});

describe('static and D3', () => {
  let model: Model;
  let dir: string;
  beforeAll(async () => {
    dir = tinyModel({ layers: 8, seed: 21, maxPositions: 512 });
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test.each<[string, Policy]>([
    ['skipLayers', { type: 'static', skipLayers: [2, 5] }],
    ['skipAttention and skipMlp', { type: 'static', skipAttention: [1, 6], skipMlp: [3, 6] }],
    ['every layer', { type: 'static', skipLayers: [0, 1, 2, 3, 4, 5, 6, 7] }],
  ])('static %s matches the reference and its documented layer set', async (_n, policy) => {
    const { got } = await expectMatches(model, dir, randomTokens(12, 0, 300, 4), policy, policy as RefPolicy);
    const p = policy as { skipLayers?: number[]; skipAttention?: number[]; skipMlp?: number[] };
    const off = new Set([...(p.skipLayers ?? []), ...(p.skipAttention ?? []), ...(p.skipMlp ?? [])]);
    for (const row of got.executed)
      expect(Array.from(row)).toEqual(Array.from({ length: 8 }, (_, l) => (off.has(l) ? 0 : 1)));
  });

  test('D3 depth schedule and layer sets are the documented ones (and agree with the reference)', () => {
    expect(engineD3Set(16, 10)).toEqual([0, 1, 2, 3, 4, 11, 12, 13, 14, 15]);
    expect(engineD3Set(12, 6)).toEqual([0, 1, 2, 9, 10, 11]);
    expect(engineD3Set(12, 3)).toEqual([0, 1, 11]);
    expect(engineD3Set(12, 2)).toEqual([0, 11]);
    for (const [L, a, s, m] of [
      [12, 0.5, 0, 2],
      [16, 0.9, 3, 4],
      [8, 0.7, 1, 2],
      [32, 0.95, 0, 8],
    ])
      for (let i = 0; i < 40; i++) {
        expect(engineD3Depth(L, i, a, s, m)).toBe(d3Depth(L, i, a, s, m));
        expect(engineD3Set(L, engineD3Depth(L, i, a, s, m))).toEqual(d3LayerSet(L, i, a, s, m));
      }
  });

  test.each<[string, { alpha: number; start?: number; minLayers?: number }]>([
    ['alpha 0.7', { alpha: 0.7 }],
    ['alpha 0.8, start 3, min 4', { alpha: 0.8, start: 3, minLayers: 4 }],
  ])('D3 %s: generated tokens run the documented layers and match the reference', async (_n, o) => {
    const prompt = randomTokens(5, 0, 256, 13);
    const chunks: Uint8Array[] = [];
    const r = await model.generate(
      { tokens: prompt },
      {
        maxTokens: 10,
        stopOnEos: false,
        policy: { type: 'd3', ...o },
        onToken: (c) => chunks.push(c.executed),
      },
    );
    r.tokens.forEach((_, i) => {
      const set = d3LayerSet(8, i, o.alpha, o.start ?? 0, o.minLayers ?? 2);
      expect(Array.from(chunks[i])).toEqual(Array.from({ length: 8 }, (_, l) => (set.includes(l) ? 1 : 0)));
    });
    // The reference runs the whole history with each generated token at its own depth.
    const all = [...prompt, ...r.tokens.slice(0, -1)];
    const want = referenceRouted(loadRoutedReference(dir), all, { type: 'd3', ...o, promptLength: prompt.length });
    r.tokens.forEach((t, i) => expect(t).toBe(argmax(want.logits[prompt.length - 1 + i])));
    // Decisions made through the cache, token by token, are the reference's for each row.
    r.tokens.forEach((_, i) => expect(Array.from(chunks[i])).toEqual(want.executed[prompt.length - 1 + i]));
    expect(r.depth.meanLayers).toBeLessThan(8);
  });

  test.each([0, 1, 2, 3])(
    'D3 through the engine: depth never falls below max(minLayers, 2) (minLayers %d)',
    async (minLayers) => {
      // alpha 0.1 on 8 layers: floor(8 * 0.1^i) is 0 from token 1 on, so every later token sits on the floor.
      const chunks: Uint8Array[] = [];
      await model.generate(
        { tokens: randomTokens(4, 0, 256, 14) },
        {
          maxTokens: 5,
          stopOnEos: false,
          policy: { type: 'd3', alpha: 0.1, minLayers },
          onToken: (c) => chunks.push(c.executed),
        },
      );
      expect(chunks).toHaveLength(5);
      expect(Array.from(chunks[0])).toEqual([1, 1, 1, 1, 1, 1, 1, 1]); // token 0 comes from the full-depth prompt pass
      const floor = Math.max(minLayers, 2);
      const kept = Array.from({ length: 8 }, (_, l) =>
        l < Math.ceil(floor / 2) || l >= 8 - Math.floor(floor / 2) ? 1 : 0,
      );
      for (const c of chunks.slice(1)) expect(Array.from(c)).toEqual(kept);
    },
  );

  test('a later full-depth turn reads the K/V that skipped tokens wrote at skipped layers', async () => {
    const prompt = randomTokens(4, 0, 256, 17);
    const seq = model.createSequence();
    const r = await seq.generate(
      { tokens: prompt },
      { maxTokens: 5, stopOnEos: false, policy: { type: 'd3', alpha: 0.5 } },
    );
    // The last generated token is pending (not yet fed); the next turn starts with it.
    const turn2 = randomTokens(3, 0, 256, 18);
    const next = await seq.evaluate(turn2); // full depth
    const history = [...prompt, ...r.tokens, ...turn2];
    const firstTurn2 = prompt.length + r.tokens.length - 1; // the pending token leads turn 2
    const want = referenceRouted(loadRoutedReference(dir), history, {
      type: 'd3',
      alpha: 0.5,
      promptLength: prompt.length,
      fullDepthFrom: firstTurn2,
    });
    expect(want.executed.slice(prompt.length, firstTurn2).some((row) => row.includes(0))).toBe(true);
    expect(next.tokens).toEqual([r.tokens.at(-1), ...turn2]);
    next.logits.forEach((row, i) => expect(relError(row, want.logits[firstTurn2 + i])).toBeLessThan(TOL));
    // The skipped tokens' K/V matter: the same history at full depth gives other logits.
    const dense = await model.evaluate(history);
    expect(relError(next.logits[0], dense.logits[firstTurn2])).toBeGreaterThan(1e-3);
    seq.dispose();
  });

  test('sequences at different D3 depths share one batch and get the same tokens as alone', async () => {
    const prompts = [randomTokens(4, 0, 256, 31), randomTokens(6, 0, 256, 32), randomTokens(3, 0, 256, 33)];
    const policy: Policy = { type: 'd3', alpha: 0.75 };
    const alone: import('../src').GenerateResult[] = [];
    for (const p of prompts)
      alone.push(await model.generate({ tokens: p }, { maxTokens: 8, stopOnEos: false, policy }));
    // Start them staggered so that their generated-token indices differ inside shared batches.
    const started: Promise<import('../src').GenerateResult>[] = [];
    const first = model.generate(
      { tokens: prompts[0] },
      {
        maxTokens: 8,
        stopOnEos: false,
        policy,
        onToken: (c) => {
          if (c.index === 2)
            started.push(model.generate({ tokens: prompts[1] }, { maxTokens: 8, stopOnEos: false, policy }));
          if (c.index === 4)
            started.push(model.generate({ tokens: prompts[2] }, { maxTokens: 8, stopOnEos: false, policy }));
        },
      },
    );
    const results = [await first, ...(await Promise.all(started))];
    results.forEach((r, i) => {
      expect(r.tokens).toEqual(alone[i].tokens);
      expect(r.depth.layerCounts).toEqual(alone[i].depth.layerCounts);
    });
  });
});

describe('full-depth rows in a pass under a skip policy (exact mode: verify rows beside draft rows)', () => {
  let model: Model;
  let dir: string;
  beforeAll(async () => {
    dir = tinyModel({
      layers: 6,
      seed: 41,
      flexidepth: { layers: [2, 3, 4, 5] },
      skiplayer: { mode: 'module', layers: [1, 2, 3, 4] },
    });
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test.each<[string, Policy]>([
    ['flexidepth', { type: 'flexidepth' }],
    ['skiplayer', { type: 'skiplayer' }],
    ['static', { type: 'static', skipLayers: [2], skipMlp: [4] }],
  ])(
    '%s: the policy rows follow the policy and the full-depth rows equal a plain pass and the reference',
    async (_n, policy) => {
      const nm = (model as unknown as { nm: NativeModel }).nm;
      const ref = loadRoutedReference(dir);
      const drafts = [randomTokens(10, 0, 300, 42), randomTokens(10, 0, 300, 43)];
      const verified = randomTokens(15, 0, 300, 44);
      const [a1, a2, b, c] = [0, 1, 2, 3].map(() => nm.createSequence(64, 1));
      const obs = observePasses(model);
      try {
        await model.run({ sequence: a1, tokens: Int32Array.from(drafts[0]!.slice(0, 7)), logits: 'none' }, policy);
        await model.run({ sequence: a2, tokens: Int32Array.from(drafts[1]!.slice(0, 7)), logits: 'none' }, policy);
        for (const s of [b, c])
          await model.run({ sequence: s, tokens: Int32Array.from(verified.slice(0, 6)), logits: 'none' });
        const wantA = drafts.map((t) => referenceRouted(ref, t, policy as RefPolicy));
        const wantB = referenceRouted(ref, verified, { type: 'none' });
        const executedA: number[] = [];
        for (let round = 0; round < 3; round++) {
          const rows = Int32Array.from(verified.slice(6 + 3 * round, 9 + 3 * round));
          obs.passes.length = 0;
          // Queued in one tick: one pass under the policy, b's rows marked full-depth.
          const [r1, r2, rb] = await Promise.all([
            model.run({ sequence: a1, tokens: Int32Array.of(drafts[0]![7 + round]!), logits: 'last' }, policy),
            model.run({ sequence: a2, tokens: Int32Array.of(drafts[1]![7 + round]!), logits: 'last' }, policy),
            model.run({ sequence: b, tokens: rows, logits: 'all' }, { type: 'none' }),
          ]);
          expect(obs.passes).toEqual([
            {
              policy: policy.type,
              requests: [
                { rows: 1, fullDepth: false, penalties: false },
                { rows: 1, fullDepth: false, penalties: false },
                { rows: 3, fullDepth: true, penalties: false },
              ],
            },
          ]);
          const plain = await model.run({ sequence: c, tokens: rows, logits: 'all' }, { type: 'none' });
          const V = model.config.vocabSize;
          const L = model.config.numLayers;
          [r1, r2].forEach((r, i) => {
            const p = 7 + round;
            expect(Array.from(r.executed)).toEqual(wantA[i]!.executed[p]);
            executedA.push(...r.executed);
            expect(relError(r.logits!, wantA[i]!.logits[p]!)).toBeLessThan(TOL);
            wantA[i]!.weights[p]!.forEach((w, l) => {
              if (Number.isNaN(w)) expect(r.routerWeights[l]).toBeNaN();
              else expect(Math.abs(r.routerWeights[l]! - w)).toBeLessThan(1e-5);
            });
          });
          for (let j = 0; j < 3; j++) {
            const got = rb.logits!.subarray(j * V, (j + 1) * V);
            expect(relError(got, wantB.logits[6 + 3 * round + j]!)).toBeLessThan(TOL);
            // Against the same rows in a plain full-depth pass: f32 rounding only.
            expect(relError(got, plain.logits!.subarray(j * V, (j + 1) * V))).toBeLessThan(1e-6);
          }
          expect(Array.from(rb.executed)).toEqual(new Array(3 * L).fill(1));
          expect(Array.from(rb.routerWeights).every(Number.isNaN)).toBe(true);
        }
        // The policy rows skipped something, so the full-depth rows ran beside real skips.
        expect(executedA).toContain(0);
      } finally {
        obs.stop();
        for (const s of [a1, a2, b, c]) s.dispose();
      }
    },
  );
});

describe('policy options', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(tinyModel({ layers: 4 }), { kvCacheType: 'f32', threads: 1 });
  });
  afterAll(async () => model?.dispose());

  test.each<[unknown, string]>([
    [{ type: 'bogus' }, 'policy.type'],
    [{ type: 'static', skipLayers: [9] }, 'policy.skipLayers'],
    [{ type: 'static', skipLayers: 'x' }, 'policy.skipLayers'],
    [{ type: 'static', foo: 1 }, 'policy.foo'],
    [{ type: 'flexidepth', threshold: 2 }, 'policy.threshold'],
    [{ type: 'd3' }, 'policy.alpha'],
    [{ type: 'd3', alpha: 1.5 }, 'policy.alpha'],
    [{ type: 'd3', alpha: 0.5, start: -1 }, 'policy.start'],
    [{ type: 'd3', alpha: 0.5, minLayers: 9 }, 'policy.minLayers'],
    ['static', 'policy'],
  ])('%j is refused naming %s', async (policy, option) => {
    const err = await model.generate({ tokens: [1, 2] }, { policy: policy as Policy }).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InvalidOptionError).option).toBe(option);
    const err2 = await model.evaluate([1, 2], { policy: policy as Policy }).catch((e) => e);
    expect(err2).toBeInstanceOf(InvalidOptionError);
  });

  test('a learned policy on a model without router weights is a clear error', async () => {
    for (const type of ['flexidepth', 'skiplayer'] as const) {
      const err = await model.evaluate([1, 2], { policy: { type } }).catch((e) => e);
      expect(err).toBeInstanceOf(DepthgateError);
      expect(String(err.message)).toMatch(
        type === 'flexidepth' ? /no FlexiDepth router weights/ : /no SkipLayer router weights/,
      );
    }
    expect((await model.generate({ tokens: [1, 2] }, { maxTokens: 2 })).tokens).toHaveLength(2);
  });

  test('incomplete FlexiDepth weights in a checkpoint are refused at load', async () => {
    const dir = tinyModel({ layers: 3, flexidepth: { layers: [1], addonFile: 'fd.safetensors' } });
    const file = path.join(dir, 'fd.safetensors');
    // Drop one tensor from the add-on header.
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    delete header['model.layers.1.router_proj.up_proj.weight'];
    const text = Buffer.from(JSON.stringify(header).padEnd(n, ' '));
    fs.writeFileSync(file, Buffer.concat([buf.subarray(0, 8), text, buf.subarray(8 + n)]));
    await expect(loadModel(dir, { addons: [file] })).rejects.toThrow(/incomplete FlexiDepth weights for layer 1/);
  });
});

describe('weights that are not needed are not read', () => {
  test('a skipped layer reads only its K/V projections; a layer with no active token reads no query, output or MLP weights', async () => {
    const dir = tinyModel({ layers: 6, seed: 11, dtype: 'bf16', flexidepth: { layers: [2, 3, 4, 5] } });
    const model = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
    const c = model.config;
    const b = 2; // bf16
    const d = c.hiddenSize,
      qd = c.numHeads * c.headDim,
      ff = c.intermediateSize;
    const queryOutMlp = b * (2 * d * qd + 3 * d * ff);
    const one = async (policy: Policy) => (await model.evaluate([42], { policy })).weightBytes;
    const none = await one({ type: 'none' });
    expect(none).toBe(b * d + 6 * (b * 2 * d * c.numKvHeads * c.headDim) + 6 * queryOutMlp + b * c.vocabSize * d);
    expect(none - (await one({ type: 'static', skipLayers: [1, 4] }))).toBe(2 * queryOutMlp);
    expect(none - (await one({ type: 'static', skipMlp: [3] }))).toBe(b * 3 * d * ff);
    // FlexiDepth on one token: each routed layer either runs (query/output/MLP) or takes the adapter.
    const e = await model.evaluate([42], { policy: { type: 'flexidepth' } });
    const r = Math.max(2, Math.floor(d / 16));
    const m = Math.max(2, Math.floor(ff / 16));
    const router = b * (r * d + d * r + d);
    const adapter = b * 3 * d * m;
    const skipped = [2, 3, 4, 5].filter((l) => e.executed[0][l] === 0).length;
    expect(skipped).toBeGreaterThan(0);
    expect(e.weightBytes).toBe(none + 4 * router + skipped * (adapter - queryOutMlp));
    await model.dispose();
  });

  test("a skipped layer's query, output and MLP weights are never read: NaN there leaves the logits unchanged", async () => {
    const dir = tinyModel({ layers: 5, seed: 12 });
    const tokens = randomTokens(20, 0, 300, 15);
    const policy: Policy = { type: 'static', skipLayers: [2] };
    // Prefill (many rows) and decode (one row at a time through the cache) use different kernels.
    const run = async (m: Model) => {
      const whole = await m.evaluate(tokens, { policy });
      const seq = m.createSequence();
      await seq.evaluate(tokens.slice(0, 8), { policy });
      const steps: Float32Array[] = [];
      for (const t of tokens.slice(8)) steps.push((await seq.evaluate([t], { policy })).logits[0]);
      seq.dispose();
      return { whole: whole.logits, steps };
    };
    const clean = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
    const want = await run(clean);
    await clean.dispose();
    const p = 'model.layers.2';
    const unread = [
      'self_attn.q_proj',
      'self_attn.o_proj',
      'mlp.gate_proj',
      'mlp.up_proj',
      'mlp.down_proj',
      'post_attention_layernorm',
    ];
    editF32Tensors(
      path.join(dir, 'model.safetensors'),
      Object.fromEntries(unread.map((n) => [`${p}.${n}.weight`, (w: Float32Array) => w.fill(NaN)])),
    );
    const poisoned = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
    const got = await run(poisoned);
    got.whole.forEach((row, i) => expect(Array.from(row)).toEqual(Array.from(want.whole[i])));
    got.steps.forEach((row, i) => expect(Array.from(row)).toEqual(Array.from(want.steps[i])));
    expect(got.whole.every((row) => row.every(Number.isFinite))).toBe(true);
    // The poison is real: a pass that runs layer 2 gives NaN logits.
    const full = await poisoned.evaluate(tokens.slice(0, 3));
    expect(full.logits.every((row) => row.some((x) => Number.isNaN(x)))).toBe(true);
    await poisoned.dispose();
  });
});
