/**
 * Exact mode (the speculative policy): greedy output identical to `none` for every draft policy,
 * on tiny random models and the default model, through stops, eos, the end of the context, an
 * abort in the middle of a draft, multi-turn sequences and concurrent generations; and the KV
 * cache equal to a plain full-depth run's, layer by layer, wherever a generation ends.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  InvalidOptionError,
  formatPolicy,
  loadModel,
  parsePolicy,
  validatePolicy,
  type GenerateOptions,
  type Model,
  type Policy,
  type Sequence,
} from '../src';
import type { SkipPolicy } from '../src/policy';
import type { NativeModel, NativeSequence } from '../src/binding';
import { defaultModelDir } from '../src/defaultModel';
import { cleanup, observePasses, randomTokens, tinyModel } from './helpers';

afterAll(cleanup);

const TINY_DRAFTS: [string, SkipPolicy][] = [
  ['flexidepth', { type: 'flexidepth' }],
  ['skiplayer', { type: 'skiplayer' }],
  ['d3', { type: 'd3', alpha: 0.8 }],
  ['static', { type: 'static', skipLayers: [2, 4], skipMlp: [1] }],
];
const spec = (draft: SkipPolicy, extra: Partial<Extract<Policy, { type: 'speculative' }>> = {}): Policy => ({
  type: 'speculative',
  draft,
  maxDraft: 4,
  ...extra,
});
const NONE: Policy = { type: 'none' };

/** A tiny model with FlexiDepth routers on layers 2-5 and SkipLayer routers on 1-4. */
function tinyRouted(seed: number): string {
  return tinyModel({
    layers: 6,
    seed,
    maxPositions: 128,
    flexidepth: { layers: [2, 3, 4, 5] },
    skiplayer: { mode: 'layer', layers: [1, 2, 3, 4] },
  });
}

/**
 * Largest |a - b| over the cached K and V of every layer, relative to the largest |b|; the
 * fraction of elements that differ at all; and the positions.
 */
function cacheDistance(
  a: Sequence,
  b: Sequence,
  layers: number,
): { rel: number; differing: number; positions: [number, number] } {
  let num = 0;
  let den = 0;
  let differing = 0;
  let total = 0;
  let positions: [number, number] = [0, 0];
  for (let l = 0; l < layers; l++) {
    const x = a.kvCache(l);
    const y = b.kvCache(l);
    positions = [x.positions, y.positions];
    if (x.k.length !== y.k.length) return { rel: Infinity, differing: 1, positions };
    for (const [p, q] of [
      [x.k, y.k],
      [x.v, y.v],
    ] as const)
      for (let i = 0; i < q.length; i++) {
        num = Math.max(num, Math.abs(p[i]! - q[i]!));
        den = Math.max(den, Math.abs(q[i]!));
        differing += p[i] === q[i] ? 0 : 1;
        total++;
      }
  }
  return { rel: num / den, differing: differing / total, positions };
}

describe.each(['f32', 'bf16'] as const)('tiny models, %s KV cache', (kv) => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(tinyRouted(5), { kvCacheType: kv, threads: 2 });
  });
  afterAll(async () => model?.dispose());

  const prompts = [0, 1, 2, 3, 4].map((k) => randomTokens(3 + 2 * k, 0, 256, 50 + k));
  const opts: GenerateOptions = { maxTokens: 24, stopOnEos: false };

  test.each(TINY_DRAFTS)(
    'greedy output equals none with a %s draft, over many prompts and draft lengths',
    async (_n, draft) => {
      let drafted = 0;
      for (const [i, p] of prompts.entries()) {
        const want = await model.generate({ tokens: p }, { ...opts, policy: NONE });
        for (const maxDraft of [1, 3, 6]) {
          const got = await model.generate(
            { tokens: p },
            { ...opts, policy: spec(draft, { maxDraft, minConfidence: i % 2 ? 0.3 : 0 }) },
          );
          expect(got.tokens).toEqual(want.tokens);
          expect(got.text).toBe(want.text);
          expect(got.finishReason).toBe(want.finishReason);
          const s = got.speculative!;
          expect(s.accepted).toBeLessThanOrEqual(s.drafted);
          expect(s.meanDraftLength).toBeLessThanOrEqual(maxDraft);
          // Every emitted token after the first came from a verification.
          expect(s.accepted + s.verifications).toBe(got.tokens.length - 1);
          drafted += s.drafted;
        }
      }
      expect(drafted).toBeGreaterThan(0);
    },
  );

  test('a draft that skips nothing is always accepted (the verify pass agrees with the draft pass)', async () => {
    const r = await model.generate({ tokens: prompts[0]! }, { ...opts, policy: spec({ type: 'none' }) });
    expect(r.speculative!.drafted).toBeGreaterThan(10);
    expect(r.speculative!.acceptanceRate).toBe(1);
    expect(r.speculative!.layersPerToken).toBeGreaterThan(model.config.numLayers);
  });

  test('stop strings end both runs at the same place with the same text', async () => {
    for (const p of prompts.slice(0, 3)) {
      const full = await model.generate({ tokens: p }, { ...opts, policy: NONE });
      // A stop string from the middle of the plain output.
      const stop = full.text.slice(Math.floor(full.text.length / 2), Math.floor(full.text.length / 2) + 2);
      if (stop.length < 2) continue;
      const want = await model.generate({ tokens: p }, { ...opts, stop: [stop], policy: NONE });
      for (const [, draft] of TINY_DRAFTS) {
        const got = await model.generate({ tokens: p }, { ...opts, stop: [stop], policy: spec(draft) });
        expect([got.text, got.tokens, got.finishReason]).toEqual([want.text, want.tokens, want.finishReason]);
        expect(got.finishReason).toBe('stop');
      }
    }
  });

  test('streamed chunks equal the plain stream chunk for chunk', async () => {
    const p = prompts[2]!;
    const collect = async (policy: Policy) => {
      const out: [number, string, number][] = [];
      for await (const c of model.stream({ tokens: p }, { ...opts, policy })) out.push([c.token, c.text, c.index]);
      return out;
    };
    const want = await collect(NONE);
    expect(await collect(spec({ type: 'skiplayer' }))).toEqual(want);
  });

  test('the end of the context ends both runs alike', async () => {
    const p = prompts[1]!;
    const ctx = p.length + 9;
    const run = async (policy: Policy) => {
      const seq = model.createSequence({ contextSize: ctx });
      try {
        return await seq.generate({ tokens: p }, { maxTokens: 50, stopOnEos: false, policy });
      } finally {
        seq.dispose();
      }
    };
    const want = await run(NONE);
    expect(want.finishReason).toBe('context');
    for (const [, draft] of TINY_DRAFTS) {
      const got = await run(spec(draft, { maxDraft: 6 }));
      expect([got.tokens, got.finishReason]).toEqual([want.tokens, want.finishReason]);
    }
  });

  test('multi-turn sequences: each turn equals the plain one, and modes can be mixed between turns', async () => {
    const turns = [prompts[0]!, randomTokens(4, 0, 256, 90), randomTokens(5, 0, 256, 91)];
    const plain = model.createSequence();
    const wanted: number[][] = [];
    for (const t of turns)
      wanted.push((await plain.generate({ tokens: t }, { maxTokens: 9, stopOnEos: false, policy: NONE })).tokens);
    for (const [, draft] of TINY_DRAFTS) {
      const seq = model.createSequence();
      for (const [i, t] of turns.entries()) {
        const policy = i === 1 ? NONE : spec(draft);
        const r = await seq.generate({ tokens: t }, { maxTokens: 9, stopOnEos: false, policy });
        expect(r.tokens).toEqual(wanted[i]);
      }
      expect(seq.tokens).toEqual(plain.tokens);
      const d = cacheDistance(seq, plain, model.config.numLayers);
      // f32: the batched verify rows' rounding; bf16: that rounding rarely crosses a bf16 step,
      // so almost every element is bit-equal (a draft's K/V differ almost everywhere).
      if (kv === 'f32') expect(d.rel).toBeLessThan(2e-6);
      else expect(d.differing).toBeLessThan(2e-3);
      seq.dispose();
    }
    plain.dispose();
  });

  test.each(TINY_DRAFTS)(
    "with a %s draft, concurrent sequences share passes: one sequence's verify rows run with others' draft rows",
    async (_n, draft) => {
      const want = await Promise.all(prompts.map((p) => model.generate({ tokens: p }, { ...opts, policy: NONE })));
      // Different draft lengths keep the sequences out of step, so verifications meet drafts.
      const obs = observePasses(model);
      let got;
      try {
        got = await Promise.all(
          prompts.map((p, i) => model.generate({ tokens: p }, { ...opts, policy: spec(draft, { maxDraft: 2 + i }) })),
        );
      } finally {
        obs.stop();
      }
      expect(got.map((r) => r.tokens)).toEqual(want.map((r) => r.tokens));
      // A pass under the draft policy carrying a one-row draft and a full-depth verification of several rows.
      const mixed = obs.passes.filter(
        (p) =>
          p.policy === draft.type &&
          p.requests.some((r) => !r.fullDepth && r.rows === 1) &&
          p.requests.some((r) => r.fullDepth && r.rows > 1),
      );
      expect(mixed.length).toBeGreaterThan(3);
    },
  );

  test('greedy with penalties equals none with the same penalties, for every draft', async () => {
    const variants: GenerateOptions[] = [
      { repetitionPenalty: 1.4 },
      { presencePenalty: 0.8, frequencyPenalty: 0.3 },
      { repetitionPenalty: 1.2, frequencyPenalty: 0.5, penaltyWindow: 5 },
    ];
    let changed = 0;
    let rejected = 0;
    for (const pen of variants)
      for (const p of prompts.slice(0, 3)) {
        const plain = await model.generate({ tokens: p }, { ...opts, policy: NONE });
        const want = await model.generate({ tokens: p }, { ...opts, ...pen, policy: NONE });
        if (want.tokens.join() !== plain.tokens.join()) changed++;
        for (const [, draft] of TINY_DRAFTS) {
          const got = await model.generate({ tokens: p }, { ...opts, ...pen, policy: spec(draft) });
          expect([got.tokens, got.finishReason]).toEqual([want.tokens, want.finishReason]);
          rejected += got.speculative!.drafted - got.speculative!.accepted;
        }
      }
    // The penalties change the output (so the equality above says something), and rejected drafts
    // (whose tokens must not enter the window) happen.
    expect(changed).toBeGreaterThan(3);
    expect(rejected).toBeGreaterThan(20);
  });

  test('concurrent speculative generations equal the plain ones', async () => {
    const want = await Promise.all(prompts.map((p) => model.generate({ tokens: p }, { ...opts, policy: NONE })));
    const got = await Promise.all(
      prompts.map((p, i) =>
        model.generate({ tokens: p }, { ...opts, policy: i === 4 ? NONE : spec(TINY_DRAFTS[i]![1]) }),
      ),
    );
    expect(got.map((r) => r.tokens)).toEqual(want.map((r) => r.tokens));
  });
});

describe('eos', () => {
  test('an eos token inside a verified step ends the run where the plain run ends', async () => {
    const dir = tinyRouted(8);
    const first = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
    const p = randomTokens(6, 0, 256, 77);
    const full = await first.generate({ tokens: p }, { maxTokens: 24, stopOnEos: false, policy: NONE });
    await first.dispose();
    // Make a token the plain run emits late the model's eos.
    const eos = full.tokens[9]!;
    for (const f of ['config.json', 'generation_config.json']) {
      const file = path.join(dir, f);
      fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), eos_token_id: eos }));
    }
    const model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
    try {
      const want = await model.generate({ tokens: p }, { maxTokens: 24, policy: NONE });
      expect(want.finishReason).toBe('eos');
      for (const [, draft] of TINY_DRAFTS) {
        const got = await model.generate({ tokens: p }, { maxTokens: 24, policy: spec(draft, { maxDraft: 5 }) });
        expect([got.tokens, got.text, got.finishReason]).toEqual([want.tokens, want.text, 'eos']);
      }
    } finally {
      await model.dispose();
    }
  });
});

describe('the KV cache after exact mode', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(tinyRouted(6), { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());
  const L = () => model.config.numLayers;

  test('equals a plain full-depth run layer by layer, wherever the generation ends (after accepted and rejected drafts)', async () => {
    const p = randomTokens(5, 0, 256, 61);
    let rejected = 0;
    let accepted = 0;
    for (let n = 1; n <= 14; n++) {
      const plain = model.createSequence();
      await plain.generate({ tokens: p }, { maxTokens: n, stopOnEos: false, policy: NONE });
      for (const [, draft] of TINY_DRAFTS) {
        const seq = model.createSequence();
        const r = await seq.generate({ tokens: p }, { maxTokens: n, stopOnEos: false, policy: spec(draft) });
        rejected += r.speculative!.drafted - r.speculative!.accepted;
        accepted += r.speculative!.accepted;
        const d = cacheDistance(seq, plain, L());
        expect(d.positions).toEqual([p.length + n - 1, p.length + n - 1]);
        // Batched rows sum in another order than single rows (f32 rounding): 1e-6 of the range.
        expect(d.rel).toBeLessThan(2e-6);
        seq.dispose();
      }
      plain.dispose();
    }
    expect(rejected).toBeGreaterThan(20);
    expect(accepted).toBeGreaterThan(0);
  });

  test('the draft alone writes K/V far from the full-depth values (so the test above would see it)', async () => {
    const p = randomTokens(5, 0, 256, 61);
    const plain = model.createSequence();
    await plain.generate({ tokens: p }, { maxTokens: 10, stopOnEos: false, policy: NONE });
    const drafted = model.createSequence();
    // Feed the same tokens under the draft: the K/V of the skipped-layer states.
    await drafted.evaluate(p, { policy: NONE });
    await drafted.evaluate(plain.tokens.slice(p.length), {
      policy: { type: 'static', skipLayers: [2, 4], skipMlp: [1] },
    });
    const d = cacheDistance(drafted, plain, L());
    expect(d.rel).toBeGreaterThan(1e-2);
    expect(d.differing).toBeGreaterThan(0.2);
    drafted.dispose();
    plain.dispose();
  });

  test('an abort in the middle of a draft leaves the cache of the tokens kept, and the sequence continues exactly', async () => {
    const p = randomTokens(5, 0, 256, 62);
    const draft: SkipPolicy = { type: 'skiplayer' };
    const want = await model.generate({ tokens: p }, { maxTokens: 30, stopOnEos: false, policy: NONE });
    const seq = model.createSequence();
    const ac = new AbortController();
    const run = model.run.bind(model);
    let draftPasses = 0;
    const spy = jest.spyOn(model, 'run').mockImplementation((request, policy) => {
      // The 7th draft pass: mid-draft (maxDraft 4), after some verified steps.
      if (policy?.type === 'skiplayer' && ++draftPasses === 7) ac.abort();
      return run(request, policy);
    });
    let r;
    try {
      r = await seq.generate(
        { tokens: p },
        { maxTokens: 30, stopOnEos: false, signal: ac.signal, stopOnAbort: true, policy: spec(draft) },
      );
    } finally {
      spy.mockRestore();
    }
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeGreaterThan(1);
    expect(r.tokens).toEqual(want.tokens.slice(0, r.tokens.length));
    // The cache holds the prompt and the tokens fed, nothing drafted past them.
    const fresh = model.createSequence();
    await fresh.evaluate(seq.tokens, { policy: NONE });
    const d = cacheDistance(seq, fresh, L());
    expect(d.positions[0]).toBe(seq.tokens.length);
    expect(d.rel).toBeLessThan(2e-6);
    // Continuing after the abort gives the rest of the plain run.
    const rest = await seq.generate(
      { tokens: [] },
      { maxTokens: 30 - r.tokens.length, stopOnEos: false, policy: spec(draft) },
    );
    expect([...r.tokens, ...rest.tokens]).toEqual(want.tokens);
    fresh.dispose();
    seq.dispose();
  });
});

describe('penalised logits rows (what exact mode builds p and q from)', () => {
  let model: Model;
  let nm: NativeModel;
  beforeAll(async () => {
    model = await loadModel(tinyRouted(7), { kvCacheType: 'f32', threads: 2 });
    nm = (model as unknown as { nm: NativeModel }).nm;
  });
  afterAll(async () => model?.dispose());

  const pen = { repetitionPenalty: 1.7, frequencyPenalty: 0.3, presencePenalty: 0.5 };
  /** kernels.h's applyPenalty in f32 steps: the reference the native rows are checked against. */
  const penalize = (l: number, n: number) => {
    const x =
      l > 0 ? Math.fround(l / Math.fround(pen.repetitionPenalty)) : Math.fround(l * Math.fround(pen.repetitionPenalty));
    return Math.fround(
      Math.fround(x - Math.fround(n * Math.fround(pen.frequencyPenalty))) - Math.fround(pen.presencePenalty),
    );
  };
  const counts = (window: number[]) => {
    const m = new Map<number, number>();
    for (const t of window) m.set(t, (m.get(t) ?? 0) + 1);
    return m;
  };
  /** Row `got` is `plain` with the penalties over `window` applied, and untouched elsewhere. */
  const expectPenalised = (got: Float32Array, plain: Float32Array, window: number[]) => {
    const c = counts(window);
    for (let t = 0; t < plain.length; t++) {
      const n = c.get(t);
      if (n === undefined) expect(got[t]).toBe(plain[t]);
      else expect(got[t]).toBeCloseTo(penalize(plain[t]!, n), 5);
    }
  };
  const V = () => model.config.vocabSize;
  async function pass(ns: NativeSequence, tokens: number[], logits: 'none' | 'last' | 'all', penaltyWindow?: number) {
    const r = await model.run({
      sequence: ns,
      tokens: Int32Array.from(tokens),
      logits,
      ...(penaltyWindow !== undefined ? { penalties: { ...pen, penaltyWindow } } : {}),
    });
    return r.logits!;
  }

  test.each([0, 3])(
    'each row of a verification is penalised over the window ending at its own token (window %d)',
    async (w) => {
      const P = [9, 14, 9, 33, 71, 14];
      const rows = [33, 9, 120, 9]; // repeats: counts above 1, and tokens entering and leaving a window of 3
      const a = nm.createSequence(64, 1);
      const b = nm.createSequence(64, 1);
      try {
        await pass(a, P, 'none');
        await pass(b, P, 'none');
        const plain = await pass(a, rows, 'all');
        const got = await pass(b, rows, 'all', w);
        for (let j = 0; j < rows.length; j++) {
          const context = [...P, ...rows.slice(0, j + 1)];
          const window = w > 0 ? context.slice(-w) : context;
          expectPenalised(got.subarray(j * V(), (j + 1) * V()), plain.subarray(j * V(), (j + 1) * V()), window);
        }
      } finally {
        a.dispose();
        b.dispose();
      }
    },
  );

  test('drafts that were forgotten (rejected) are not in the window; the tokens kept are', async () => {
    const P = [5, 6, 7, 8];
    const kept = 40;
    const rejected = [41, 42]; // not in P, not kept, not fed after
    const next = 43;
    const a = nm.createSequence(64, 1);
    const b = nm.createSequence(64, 1);
    try {
      for (const ns of [a, b]) {
        await pass(ns, P, 'none');
        await pass(ns, [kept, ...rejected], 'none', 0);
        ns.truncate(P.length + 1);
      }
      const plain = await pass(a, [next], 'last');
      const got = await pass(b, [next], 'last', 0);
      expectPenalised(got, plain, [...P, kept, next]);
      for (const t of rejected) expect(got[t]).toBe(plain[t]);
      expect(got[kept]).not.toBe(plain[kept]);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  test('penalties with a sample are refused (the sample has its own)', async () => {
    const a = nm.createSequence(16, 1);
    try {
      let err: unknown;
      try {
        await nm.forward(
          [
            {
              sequence: a,
              tokens: Int32Array.of(1),
              logits: 'last',
              sample: { temperature: 0, topK: 0, topP: 1, ...pen, penaltyWindow: 0 },
              penalties: { ...pen, penaltyWindow: 0 },
            },
          ],
          { type: 'none' },
        );
      } catch (e) {
        err = e;
      }
      expect(String(err)).toMatch(/request.penalties and request.sample/);
    } finally {
      a.dispose();
    }
  });
});

describe('the default model', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(defaultModelDir(), {
      addons: ['flexidepth-p3e-4.safetensors', 'skiplayer.safetensors'].map((f) => path.join(defaultModelDir(), f)),
      threads: 2,
    });
  });
  afterAll(async () => model?.dispose());

  const prompts = [
    'Ge1:1 In the beginning',
    'Joh3:16 For God so loved',
    'Ps23:1 The LORD is my shepherd',
    'Mat5:3 Blessed are',
    'Ex20:3 Thou shalt',
  ];
  const drafts: SkipPolicy[] = [
    { type: 'flexidepth' },
    { type: 'skiplayer' },
    { type: 'd3', alpha: 0.9 },
    { type: 'static', skipLayers: [3, 4, 11, 8] },
  ];

  test.each(drafts.map((d) => [d.type, d] as const))('greedy output equals none with a %s draft', async (_n, draft) => {
    let accepted = 0;
    for (const p of prompts) {
      // Greedy (the default model's generation_config.json would sample).
      const want = await model.generate(p, { maxTokens: 40, policy: NONE, temperature: 0 });
      const got = await model.generate(p, { maxTokens: 40, policy: spec(draft), temperature: 0 });
      expect([got.text, got.tokens, got.finishReason]).toEqual([want.text, want.tokens, want.finishReason]);
      accepted += got.speculative!.accepted;
    }
    // A trained model's own shallower self agrees with it often.
    expect(accepted).toBeGreaterThan(20);
  });
});

describe('adaptive minConfidence', () => {
  test('moves toward the target acceptance per sequence, across turns, and the output stays the plain one', async () => {
    const model = await loadModel(tinyRouted(5), { kvCacheType: 'f32', threads: 2 });
    try {
      const p = randomTokens(5, 0, 256, 51);
      const want = await model.generate({ tokens: p }, { maxTokens: 30, stopOnEos: false, policy: NONE });
      // A draft that is rarely right: the threshold rises from Self-SD's greedy start of 0.8.
      const poor = spec({ type: 'd3', alpha: 0.5 }, { targetAcceptance: 0.9 });
      const seq = model.createSequence();
      const r1 = await seq.generate({ tokens: p }, { maxTokens: 30, stopOnEos: false, policy: poor });
      expect(r1.tokens).toEqual(want.tokens);
      const after1 = r1.speculative!.minConfidence;
      // One move of 0.01 per verification with drafts (the EMA starts at the first rate, which may be high).
      expect(after1).toBeGreaterThan(0.85);
      expect(after1).toBeLessThanOrEqual(Math.min(1, 0.8 + 0.01 * r1.speculative!.verifications + 1e-9));
      // The next turn on the same sequence starts where the last one ended (a fresh start would be 0.8).
      const r2 = await seq.generate({ tokens: [7, 8] }, { maxTokens: 10, stopOnEos: false, policy: poor });
      expect(r2.tokens.length).toBe(10);
      expect(r2.speculative!.minConfidence).toBeGreaterThan(after1 - 0.01 * r2.speculative!.verifications - 1e-9);
      expect(r2.speculative!.minConfidence).toBeGreaterThan(0.8 + 0.01 * r2.speculative!.verifications);
      seq.dispose();
      // A draft that is always right, under a low target: the threshold falls from the given start.
      const good = await model.generate(
        { tokens: p },
        {
          maxTokens: 30,
          stopOnEos: false,
          policy: spec({ type: 'none' }, { targetAcceptance: 0.5, minConfidence: 0.6 }),
        },
      );
      expect(good.tokens).toEqual(want.tokens);
      // Every verification with drafts accepts all: one step down each (the last, with one token left, drafts none).
      const v = good.speculative!.verifications;
      expect(good.speculative!.minConfidence).toBeGreaterThan(0.6 - 0.01 * v - 1e-9);
      expect(good.speculative!.minConfidence).toBeLessThan(0.6 - 0.01 * (v - 1) + 1e-9);
      // Without a target the threshold stays put.
      const fixed = await model.generate(
        { tokens: p },
        { maxTokens: 30, stopOnEos: false, policy: spec({ type: 'none' }, { minConfidence: 0.6 }) },
      );
      expect(fixed.speculative!.minConfidence).toBe(0.6);
    } finally {
      await model.dispose();
    }
  });
});

describe('the speculative policy spec', () => {
  test('validation normalises the draft and names the bad field', () => {
    expect(
      validatePolicy({ type: 'speculative', draft: { type: 'static', skipLayers: [4, 2, 2] }, maxDraft: 3 }, 6),
    ).toEqual({
      type: 'speculative',
      draft: { type: 'static', skipLayers: [2, 4] },
      maxDraft: 3,
    });
    const bad: [unknown, string][] = [
      [{ type: 'speculative' }, 'policy.draft'],
      [{ type: 'speculative', draft: { type: 'speculative', draft: { type: 'none' } } }, 'policy.draft'],
      [{ type: 'speculative', draft: { type: 'flexidepth', threshold: 2 } }, 'policy.draft.threshold'],
      [{ type: 'speculative', draft: { type: 'none' }, maxDraft: 0 }, 'policy.maxDraft'],
      [{ type: 'speculative', draft: { type: 'none' }, maxDraft: 65 }, 'policy.maxDraft'],
      [{ type: 'speculative', draft: { type: 'none' }, minConfidence: 1.5 }, 'policy.minConfidence'],
      [{ type: 'speculative', draft: { type: 'none' }, targetAcceptance: 0 }, 'policy.targetAcceptance'],
      [{ type: 'speculative', draft: { type: 'none' }, gamma: 1 }, 'policy.gamma'],
    ];
    for (const [p, option] of bad) {
      let err: unknown;
      try {
        validatePolicy(p, 6);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidOptionError);
      expect((err as InvalidOptionError).option).toBe(option);
    }
  });

  test("the CLI syntax parses, with the draft's own parameters alongside, and formatPolicy writes it back", () => {
    const p = parsePolicy('speculative:draft=static,skip=3+4,maxDraft=2,minConfidence=0.4,target=0.8', 12);
    expect(p).toEqual({
      type: 'speculative',
      draft: { type: 'static', skipLayers: [3, 4] },
      maxDraft: 2,
      minConfidence: 0.4,
      targetAcceptance: 0.8,
    });
    expect(parsePolicy(formatPolicy(p), 12)).toEqual(p);
    expect(parsePolicy('speculative:draft=flexidepth', 12)).toEqual({
      type: 'speculative',
      draft: { type: 'flexidepth' },
    });
    expect(() => parsePolicy('speculative:maxDraft=2', 12)).toThrow(/policy.draft/);
    expect(() => parsePolicy('speculative:draft=d3,alpha=2', 12)).toThrow(/policy.draft.alpha/);
    expect(() => parsePolicy('speculative:draft=none,maxDraft=x', 12)).toThrow(/policy.maxDraft/);
  });

  test('a draft needing routers the model lacks is refused; evaluate under exact mode runs at full depth', async () => {
    const model = await loadModel(tinyModel({ layers: 4, seed: 2 }), { kvCacheType: 'f32', threads: 1 });
    try {
      await expect(
        model.generate({ tokens: [1, 2] }, { maxTokens: 2, policy: spec({ type: 'flexidepth' }) }),
      ).rejects.toMatchObject({ option: 'policy.draft' });
      const tokens = randomTokens(6, 0, 256, 3);
      const full = await model.evaluate(tokens, { policy: NONE });
      const exact = await model.evaluate(tokens, { policy: spec({ type: 'static', skipLayers: [1, 2] }) });
      expect(exact.logits).toEqual(full.logits);
      expect(exact.executed.every((row) => row.every((x) => x === 1))).toBe(true);
    } finally {
      await model.dispose();
    }
  });

  test('the CLI takes --policy speculative:... and reports exact mode in its footer and trace', () => {
    const dir = tinyRouted(9);
    const trace = path.join(path.dirname(dir), 'trace.jsonl');
    const cli = path.join(__dirname, '..', 'dist', 'cli.js');
    const run = (policy: string, extra: string[] = []) =>
      spawnSync(
        process.execPath,
        [cli, 'generate', dir, '--prompt', 'hello there', '--max-tokens', '12', '--policy', policy, ...extra],
        {
          encoding: 'utf8',
          timeout: 60000,
        },
      );
    const plain = run('none');
    const exact = run('speculative:draft=skiplayer,maxDraft=3', ['--trace', trace]);
    expect(exact.status).toBe(0);
    expect(exact.stdout).toBe(plain.stdout);
    expect(exact.stderr).toMatch(
      /exact mode: \d+ of \d+ drafted tokens accepted \(\d+\.\d%\), [\d.]+ drafted per verification, [\d.]+ layers computed per token/,
    );
    const lines = fs
      .readFileSync(trace, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { speculative?: { accepted: boolean; step: number } });
    expect(lines[0]!.speculative).toBeUndefined();
    expect(lines.slice(1).every((l) => typeof l.speculative?.accepted === 'boolean' && l.speculative.step >= 1)).toBe(
      true,
    );
    const bad = run('speculative:draft=d3');
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/policy.draft.alpha/);
  });
});
