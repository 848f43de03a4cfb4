/**
 * Sampling defaults from generation_config.json (applied as transformers applies them, the
 * caller's options winning) and the repetition penalties (transformers' repetition_penalty,
 * OpenAI's frequency and presence penalties) through the whole engine path.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  InvalidOptionError,
  ModelFormatError,
  defaultModelSetup,
  loadModel,
  type GenerateOptions,
  type Model,
} from '../src';
import { cleanup, randomTokens, tinyModel } from './helpers';

afterAll(cleanup);

const none = { type: 'none' } as const;
const prompt = randomTokens(6, 10, 200, 3);

/** A tiny model whose generation_config.json holds `fields` (besides its eos/bos ids). */
function withGenerationConfig(fields: Record<string, unknown> | null): string {
  const dir = tinyModel({ layers: 2, seed: 5 });
  const file = path.join(dir, 'generation_config.json');
  if (fields === null) fs.rmSync(file);
  else fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), ...fields }));
  return dir;
}

async function tokens(m: Model, o: GenerateOptions): Promise<number[]> {
  return (await m.generate({ tokens: prompt }, { policy: none, stopOnEos: false, maxTokens: 10, ...o })).tokens;
}

describe('generation_config.json defaults', () => {
  const sampled = {
    do_sample: true,
    temperature: 0.9,
    top_k: 7,
    top_p: 0.8,
    repetition_penalty: 1.2,
    max_new_tokens: 9,
  };

  test('are read, reported in model.info and the result, and applied when the caller sets nothing', async () => {
    const dir = withGenerationConfig(sampled);
    const m = await loadModel(dir);
    const plain = await loadModel(dir, { generationConfig: false });
    try {
      expect(m.info.generationDefaults).toEqual({
        file: path.join(dir, 'generation_config.json'),
        options: { temperature: 0.9, topK: 7, topP: 0.8, repetitionPenalty: 1.2, maxTokens: 9 },
      });
      expect(plain.info.generationDefaults).toEqual({ file: null, options: {} });
      const r = await m.generate({ tokens: prompt }, { policy: none, stopOnEos: false, seed: 11 });
      expect(r.tokens).toHaveLength(9); // max_new_tokens
      expect(r.sampling).toMatchObject({ temperature: 0.9, topK: 7, topP: 0.8, repetitionPenalty: 1.2 });
      expect(r.sampling.fromGenerationConfig.sort()).toEqual([
        'maxTokens',
        'repetitionPenalty',
        'temperature',
        'topK',
        'topP',
      ]);
      // The same as naming the file's values on a model that ignores the file, with the same seed.
      const explicit = { temperature: 0.9, topK: 7, topP: 0.8, repetitionPenalty: 1.2, maxTokens: 9, seed: 11 };
      expect(await tokens(plain, explicit)).toEqual(r.tokens);
      // Reproducible with a seed, and really sampled: not the greedy continuation.
      expect(await tokens(m, { seed: 11, maxTokens: 9 })).toEqual(r.tokens);
      const greedy = await tokens(plain, { temperature: 0, repetitionPenalty: 1.2, maxTokens: 9 });
      expect(r.tokens).not.toEqual(greedy);
      // The file ignored: greedy, no penalty, nothing from the file.
      const ignored = await plain.generate({ tokens: prompt }, { policy: none, stopOnEos: false, maxTokens: 9 });
      expect(ignored.sampling).toMatchObject({
        temperature: 0,
        topK: 0,
        topP: 1,
        repetitionPenalty: 1,
        fromGenerationConfig: [],
      });
      expect(ignored.tokens).toEqual(await tokens(plain, { temperature: 0, maxTokens: 9 }));
    } finally {
      await m.dispose();
      await plain.dispose();
    }
  });

  test("the caller's options win, one by one", async () => {
    const dir = withGenerationConfig(sampled);
    const m = await loadModel(dir);
    const plain = await loadModel(dir, { generationConfig: false });
    try {
      // temperature 0: greedy, with the file's repetition penalty still applied (as transformers does).
      const r = await m.generate({ tokens: prompt }, { policy: none, stopOnEos: false, temperature: 0, maxTokens: 5 });
      expect(r.tokens).toEqual(await tokens(plain, { temperature: 0, repetitionPenalty: 1.2, maxTokens: 5 }));
      expect(r.sampling.fromGenerationConfig).toEqual(['repetitionPenalty']);
      expect(r.sampling).toMatchObject({ temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1.2 });
      const off = await m.generate(
        { tokens: prompt },
        { policy: none, stopOnEos: false, temperature: 0, repetitionPenalty: 1 },
      );
      expect(off.tokens).toEqual(await tokens(plain, { temperature: 0, maxTokens: 9 }));
      expect(off.sampling.fromGenerationConfig).toEqual(['maxTokens']);
      // topK named, the rest from the file.
      const k = await m.generate({ tokens: prompt }, { policy: none, stopOnEos: false, topK: 3, seed: 4 });
      expect(k.sampling.topK).toBe(3);
      expect(k.tokens).toEqual(
        await tokens(plain, { temperature: 0.9, topK: 3, topP: 0.8, repetitionPenalty: 1.2, maxTokens: 9, seed: 4 }),
      );
    } finally {
      await m.dispose();
      await plain.dispose();
    }
  });

  test('do_sample false (or absent) is greedy; a missing file gives no defaults', async () => {
    const reference = await loadModel(withGenerationConfig(null));
    try {
      expect(reference.info.generationDefaults).toEqual({ file: null, options: {} });
      const greedy = await tokens(reference, {});
      expect(greedy).toEqual(await tokens(reference, { temperature: 0 }));
      for (const fields of [
        { do_sample: false, temperature: 0.7, top_p: 0.5 },
        { temperature: 0.7, top_k: 3 },
      ]) {
        const m = await loadModel(withGenerationConfig(fields));
        try {
          expect(m.info.generationDefaults.options).toEqual('do_sample' in fields ? { temperature: 0 } : {});
          const r = await m.generate({ tokens: prompt }, { policy: none, stopOnEos: false, maxTokens: 10 });
          expect(r.tokens).toEqual(greedy);
          expect(r.sampling.temperature).toBe(0);
        } finally {
          await m.dispose();
        }
      }
      // do_sample true alone: transformers' own defaults (temperature 1, top_k 50, top_p 1).
      const hf = await loadModel(withGenerationConfig({ do_sample: true }));
      expect(hf.info.generationDefaults.options).toEqual({ temperature: 1, topK: 50, topP: 1 });
      await hf.dispose();
    } finally {
      await reference.dispose();
    }
  });

  test('a bad field is a ModelFormatError naming the file and the field; generationConfig: false loads anyway', async () => {
    for (const [fields, field] of [
      [{ do_sample: true, top_p: 2 }, 'top_p'],
      [{ do_sample: 'yes' }, 'do_sample'],
      [{ temperature: -1 }, 'temperature'],
      [{ max_new_tokens: 1.5 }, 'max_new_tokens'],
      [{ repetition_penalty: 0 }, 'repetition_penalty'],
    ] as const) {
      const dir = withGenerationConfig(fields);
      const e = await loadModel(dir).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ModelFormatError);
      expect((e as ModelFormatError).file).toBe(path.join(dir, 'generation_config.json'));
      expect((e as Error).message).toContain(`'${field}'`);
      const m = await loadModel(dir, { generationConfig: false });
      await m.dispose();
    }
  });
});

/** transformers' RepetitionPenaltyLogitsProcessor, then OpenAI's frequency and presence penalties, in float64. */
function penalize(
  logits: Float32Array,
  context: number[],
  o: { r: number; f: number; p: number; window?: number },
): Float64Array {
  const out = Float64Array.from(logits);
  const seen = o.window ? context.slice(-o.window) : context;
  const count = new Map<number, number>();
  for (const t of seen) count.set(t, (count.get(t) ?? 0) + 1);
  for (const [t, c] of count) {
    const l = out[t]!;
    out[t] = (l < 0 ? l * o.r : l / o.r) - c * o.f - o.p;
  }
  return out;
}

function top2(v: ArrayLike<number>): { best: number; margin: number } {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  let second = -Infinity;
  for (let i = 0; i < v.length; i++) if (i !== best) second = Math.max(second, v[i]!);
  return { best, margin: v[best]! - second };
}

describe('repetition penalties', () => {
  test('bad values are InvalidOptionErrors naming the option', async () => {
    const m = await loadModel(tinyModel({ layers: 1, seed: 2 }));
    try {
      for (const [o, name] of [
        [{ repetitionPenalty: 0 }, 'repetitionPenalty'],
        [{ repetitionPenalty: -1 }, 'repetitionPenalty'],
        [{ frequencyPenalty: 2.5 }, 'frequencyPenalty'],
        [{ presencePenalty: -3 }, 'presencePenalty'],
        [{ presencePenalty: Number.NaN }, 'presencePenalty'],
        [{ penaltyWindow: 0 }, 'penaltyWindow'],
        [{ penaltyWindow: 1.5 }, 'penaltyWindow'],
      ] as const) {
        const e = await m.generate('x', o as GenerateOptions).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(InvalidOptionError);
        expect((e as InvalidOptionError).option).toBe(name);
      }
    } finally {
      await m.dispose();
    }
  });

  // Each greedy token must be the argmax of the float64 penalised logits of its context (prompt
  // and generated tokens, or the last `window` of them), from evaluate()'s unpenalised logits.
  test.each([
    ['repetition', { repetitionPenalty: 3 }, { r: 3, f: 0, p: 0 }],
    ['frequency', { frequencyPenalty: 1.5 }, { r: 1, f: 1.5, p: 0 }],
    ['presence', { presencePenalty: 2 }, { r: 1, f: 0, p: 2 }],
    [
      'all three, window 5',
      { repetitionPenalty: 1.5, frequencyPenalty: 0.5, presencePenalty: 0.5, penaltyWindow: 5 },
      { r: 1.5, f: 0.5, p: 0.5, window: 5 },
    ],
  ] as const)('%s: greedy tokens match the float64 reference step by step', async (_name, opts, ref) => {
    const m = await loadModel(tinyModel({ layers: 2, seed: 9 }), { kvCacheType: 'f32' });
    try {
      const n = 16;
      const r = await m.generate(
        { tokens: prompt },
        { policy: none, stopOnEos: false, maxTokens: n, temperature: 0, ...opts },
      );
      const all = [...prompt, ...r.tokens];
      const ev = await m.evaluate(all, { policy: none });
      let changed = 0;
      let checked = 0;
      for (let i = 0; i < n; i++) {
        const row = ev.logits[prompt.length - 1 + i]!;
        const want = top2(penalize(row, all.slice(0, prompt.length + i), ref));
        if (top2(row).best !== want.best) changed++;
        if (want.margin < 1e-4) continue; // a near tie: evaluate's batch may round differently
        checked++;
        expect([i, r.tokens[i]]).toEqual([i, want.best]);
      }
      expect(checked).toBeGreaterThan(n / 2);
      expect(changed).toBeGreaterThan(0); // the penalty decided some token
    } finally {
      await m.dispose();
    }
  });

  test("the default model's greedy loop breaks with a penalty", async () => {
    const { dir, addons } = defaultModelSetup();
    const m = await loadModel(dir, { addons, threads: 2 });
    try {
      // Repeated 4-grams of generated tokens: a greedy loop repeats the same phrase.
      const repeats = (t: number[]) => {
        const seen = new Set<string>();
        let r = 0;
        for (let i = 0; i + 4 <= t.length; i++) {
          const k = t.slice(i, i + 4).join(',');
          if (seen.has(k)) r++;
          seen.add(k);
        }
        return r;
      };
      const base = { maxTokens: 60, temperature: 0, stopOnEos: false };
      const loop = repeats((await m.generate('And God said', base)).tokens);
      expect(loop).toBeGreaterThanOrEqual(15);
      const counts: Record<string, number> = {};
      for (const p of [{ repetitionPenalty: 1.3 }, { frequencyPenalty: 0.5 }, { presencePenalty: 1 }])
        counts[JSON.stringify(p)] = repeats((await m.generate('And God said', { ...base, ...p })).tokens);
      console.log(`repeated 4-grams in 60 greedy tokens: ${loop} without a penalty; ${JSON.stringify(counts)}`);
      for (const n of Object.values(counts)) expect(n).toBeLessThanOrEqual(loop / 3);
    } finally {
      await m.dispose();
    }
  });
});
