/**
 * Exact speculative sampling: the acceptance rule's arithmetic on hand-made p and q, the
 * sampling transform (temperature, top-k, top-p) against hand-computed distributions, and the
 * output distribution of exact mode against the full model's, by a chi-square test, without and
 * with repetition penalties.
 */
import { loadModel, type Model, type Policy } from '../src';
import {
  SplitMix64,
  acceptanceProbability,
  argmaxOf,
  drawFrom,
  probabilityOf,
  residualDistribution,
  samplingDistribution,
  topProbability,
  verifySampled,
  type TokenDistribution,
} from '../src/speculativeSampling';
import { cleanup, tinyModel } from './helpers';

afterAll(cleanup);

const dist = (entries: [number, number][]): TokenDistribution => ({
  ids: Int32Array.from(entries.map(([id]) => id)),
  probs: Float64Array.from(entries.map(([, p]) => p)),
});

describe('the acceptance rule', () => {
  const p = dist([
    [0, 0.5],
    [1, 0.3],
    [2, 0.2],
  ]);
  const q = dist([
    [1, 0.6],
    [0, 0.2],
    [2, 0.1],
    [3, 0.1],
  ]);

  test('min(1, p(x)/q(x)) on hand-made p and q', () => {
    expect(acceptanceProbability(p, q, 0)).toBe(1); // p 0.5 > q 0.2
    expect(acceptanceProbability(p, q, 1)).toBeCloseTo(0.5, 15); // 0.3 / 0.6
    expect(acceptanceProbability(p, q, 2)).toBe(1); // 0.2 > 0.1
    expect(acceptanceProbability(p, q, 3)).toBe(0); // p(3) = 0
    expect(acceptanceProbability(p, q, 9)).toBe(0); // q(9) = 0: never drafted
  });

  test('the residual is normalize(max(p - q, 0))', () => {
    const r = residualDistribution(p, q)!;
    // p - q = [0.3, -0.3, 0.1, -0.1] -> [0.3, 0, 0.1, 0] / 0.4
    expect([...r.ids]).toEqual([0, 2]);
    expect(r.probs[0]).toBeCloseTo(0.75, 15);
    expect(r.probs[1]).toBeCloseTo(0.25, 15);
    expect(residualDistribution(p, p)).toBeNull();
  });

  test('drafting from q, accepting by the rule and resampling from the residual gives exactly p', () => {
    const r = residualDistribution(p, q)!;
    let rejected = 0;
    for (let x = 0; x < 4; x++) rejected += probabilityOf(q, x) * (1 - acceptanceProbability(p, q, x));
    for (let y = 0; y < 4; y++) {
      const emitted = probabilityOf(q, y) * acceptanceProbability(p, q, y) + rejected * probabilityOf(r, y);
      expect(emitted).toBeCloseTo(probabilityOf(p, y), 15);
    }
  });

  test('verifySampled: accepts while u < a(x), then draws from the residual and stops; all accepted: a bonus from the last p', () => {
    const draws = (us: number[]) => () => us.shift()!;
    // x = 1 has a = 0.5: u = 0.4 accepts, u = 0.6 rejects.
    expect(verifySampled([1, 0], [q, q], [p, p, p], draws([0.4, 0.1, 0.0]))).toEqual([1, 0, 0]);
    // Rejected at x = 1: the residual [0 (0.75), 2 (0.25)] with u = 0.8 gives 2; nothing after.
    expect(verifySampled([1, 0], [q, q], [p, p, p], draws([0.6, 0.8]))).toEqual([2]);
    // No drafts: one token from p.
    expect(verifySampled([], [], [p], draws([0.85]))).toEqual([2]);
  });

  test('drawFrom walks the cumulative mass', () => {
    expect(drawFrom(p, 0)).toBe(0);
    expect(drawFrom(p, 0.49)).toBe(0);
    expect(drawFrom(p, 0.5)).toBe(1);
    expect(drawFrom(p, 0.999999)).toBe(2);
  });
});

describe('the sampling transform', () => {
  const logits = Float32Array.of(1, 2, 3, NaN, -Infinity, 3);

  test('temperature, top-k (lowest id first on ties) and NaN / -inf as the native op', () => {
    const d = samplingDistribution(logits, { temperature: 1, topK: 2, topP: 1 });
    expect([...d.ids]).toEqual([2, 5]);
    expect([...d.probs]).toEqual([0.5, 0.5]);
    const t = samplingDistribution(logits, { temperature: 0.5, topK: 0, topP: 1 });
    const w = [Math.exp(-4), Math.exp(-2), 1, 1];
    const z = w.reduce((a, b) => a + b);
    expect([...t.ids]).toEqual([2, 5, 1, 0]);
    [1, 1, Math.exp(-2), Math.exp(-4)].forEach((x, i) => expect(t.probs[i]).toBeCloseTo(x / z, 14));
  });

  test('top-p keeps the shortest prefix whose mass reaches topP, renormalised', () => {
    const l = Float32Array.from([0.5, 0.3, 0.2].map(Math.log));
    const d = samplingDistribution(l, { temperature: 1, topK: 0, topP: 0.7 });
    expect([...d.ids]).toEqual([0, 1]);
    expect(d.probs[0]).toBeCloseTo(0.625, 6);
    expect([...samplingDistribution(l, { temperature: 1, topK: 0, topP: 0.5 }).ids]).toEqual([0]);
  });

  test('+inf takes all the mass; argmax and the top probability', () => {
    expect([
      ...samplingDistribution(Float32Array.of(0, Infinity, 1, Infinity), { temperature: 1, topK: 0, topP: 1 }).probs,
    ]).toEqual([0.5, 0.5]);
    expect(argmaxOf(Float32Array.of(NaN, 2, 5, 5))).toBe(2);
    expect(topProbability(Float32Array.of(0, 0, 0, 0))).toBeCloseTo(0.25, 15);
  });

  test('the generator is splitmix64 (the native one) and its streams differ', () => {
    // splitmix64 from state 0: first output 0xe220a8397b1dcdaf.
    expect(new SplitMix64(0).next()).toBe(0xe220a8397b1dcdafn);
    expect(new SplitMix64(7, 1n).uniform()).not.toBe(new SplitMix64(7).uniform());
  });
});

/**
 * chi-square survival threshold by the Wilson-Hilferty approximation (accurate to a few per cent
 * of the quantile for df >= 10): the value a chi-square(df) variable exceeds with probability
 * alpha = 1e-3 (z = 3.0902).
 */
function chiSquareThreshold(df: number): number {
  const z = 3.0902;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

/** Pearson's statistic of counts against probabilities, cells of expected count < 5 pooled; and its degrees of freedom. */
function chiSquare(counts: Map<string, number>, probs: Map<string, number>, n: number): { stat: number; df: number } {
  let stat = 0;
  let cells = 0;
  let pooledObserved = 0;
  let pooledExpected = 0;
  for (const [key, p] of probs) {
    const expected = p * n;
    const observed = counts.get(key) ?? 0;
    if (expected < 5) {
      pooledObserved += observed;
      pooledExpected += expected;
      continue;
    }
    stat += (observed - expected) ** 2 / expected;
    cells++;
  }
  // Anything sampled outside the support counts against the pooled cell.
  for (const [key, c] of counts) if (!probs.has(key)) pooledObserved += c;
  if (pooledExpected > 0) {
    stat += (pooledObserved - pooledExpected) ** 2 / pooledExpected;
    cells++;
  } else if (pooledObserved > 0) stat = Infinity;
  return { stat, df: cells - 1 };
}

interface Penalties {
  repetitionPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
}

/** The penalties over `window` applied to a logits row, as kernels.h's applyPenalty defines them. */
function penalizeRow(logits: Float32Array, window: number[], p: Penalties): void {
  const r = p.repetitionPenalty ?? 1;
  const counts = new Map<number, number>();
  for (const t of window) counts.set(t, (counts.get(t) ?? 0) + 1);
  for (const [t, n] of counts) {
    const l = logits[t]!;
    logits[t] = (l > 0 ? l / r : l * r) - n * (p.frequencyPenalty ?? 0) - (p.presencePenalty ?? 0);
  }
}

describe("the distribution of exact-mode samples is the full model's", () => {
  let model: Model;
  const prompt = [3, 17, 60, 101];
  const sampling = { temperature: 1, topK: 4, topP: 0.95 };
  // A draft far from the full model (it skips 4 of 6 layers), so that many drafts are rejected.
  const draft: Policy = { type: 'static', skipLayers: [1, 2, 3, 4] };
  const N = 2400;

  beforeAll(async () => {
    model = await loadModel(tinyModel({ layers: 6, seed: 12 }), { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  /**
   * The full model's probability of every first three tokens, from its logits after each prefix
   * (with `penalties`: applied here, in JavaScript, over the whole prefix: the reference).
   */
  async function exactTriples(penalties?: Penalties): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const next = async (prefix: number[]) => {
      const e = await model.evaluate(prefix, { policy: { type: 'none' } });
      const logits = Float32Array.from(e.logits[prefix.length - 1]!);
      if (penalties) penalizeRow(logits, prefix, penalties);
      return samplingDistribution(logits, sampling);
    };
    const d1 = await next(prompt);
    for (let i = 0; i < d1.ids.length; i++) {
      const d2 = await next([...prompt, d1.ids[i]!]);
      for (let j = 0; j < d2.ids.length; j++) {
        const d3 = await next([...prompt, d1.ids[i]!, d2.ids[j]!]);
        for (let k = 0; k < d3.ids.length; k++)
          out.set(`${d1.ids[i]},${d2.ids[j]},${d3.ids[k]}`, d1.probs[i]! * d2.probs[j]! * d3.probs[k]!);
      }
    }
    return out;
  }

  async function sampleTriples(
    policy: Policy,
    penalties: Penalties = {},
  ): Promise<{ counts: Map<string, number>; rejected: number }> {
    const counts = new Map<string, number>();
    let rejected = 0;
    for (let start = 0; start < N; start += 16) {
      const batch = await Promise.all(
        Array.from({ length: 16 }, (_, i) =>
          model.generate(
            { tokens: prompt },
            { maxTokens: 3, stopOnEos: false, seed: 1000 + start + i, ...sampling, ...penalties, policy },
          ),
        ),
      );
      for (const r of batch) {
        const key = r.tokens.join(',');
        counts.set(key, (counts.get(key) ?? 0) + 1);
        if (r.speculative) rejected += r.speculative.drafted - r.speculative.accepted;
      }
    }
    return { counts, rejected };
  }

  // With fixed seeds the test is deterministic; the threshold is the chi-square quantile a
  // correct sampler exceeds with probability 1e-3 over the choice of seeds (the documented
  // false-alarm rate).
  test('chi-square of the first three tokens against the full model passes; the draft alone fails it', async () => {
    const exact = await exactTriples();
    const spec = await sampleTriples({ type: 'speculative', draft: draft as never, maxDraft: 2 });
    const fit = chiSquare(spec.counts, exact, N);
    expect(fit.df).toBeGreaterThanOrEqual(10);
    expect(spec.rejected).toBeGreaterThan(N / 10);
    expect(fit.stat).toBeLessThan(chiSquareThreshold(fit.df));
    // Power: sampling from the draft itself is far outside the threshold.
    const alone = await sampleTriples(draft);
    expect(chiSquare(alone.counts, exact, N).stat).toBeGreaterThan(3 * chiSquareThreshold(fit.df));
  });

  test('with penalties: chi-square against the penalised full model passes, and the penalties matter', async () => {
    const penalties: Penalties = { repetitionPenalty: 1.6, presencePenalty: 1, frequencyPenalty: 0.5 };
    const exact = await exactTriples(penalties);
    const spec = await sampleTriples({ type: 'speculative', draft: draft as never, maxDraft: 2 }, penalties);
    const fit = chiSquare(spec.counts, exact, N);
    expect(fit.df).toBeGreaterThanOrEqual(10);
    expect(spec.rejected).toBeGreaterThan(N / 10);
    expect(fit.stat).toBeLessThan(chiSquareThreshold(fit.df));
    // Power: a sampler that ignored the penalties (the unpenalised full model) would be expected
    // far beyond the threshold: the noncentrality N * sum (p - p0)^2 / p of its statistic.
    const plain = await exactTriples();
    let lambda = 0;
    for (const [key, p] of exact) lambda += (N * ((plain.get(key) ?? 0) - p) ** 2) / p;
    expect(lambda).toBeGreaterThan(3 * chiSquareThreshold(fit.df));
  });
});
