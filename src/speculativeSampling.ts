/**
 * The arithmetic of exact speculative sampling: the sampling distribution of one logits row
 * (temperature, top-k and top-p exactly as the native sample op applies them, so the full
 * model's p here is the distribution a plain run samples from), the acceptance rule
 * min(1, p(x) / q(x)), the residual normalize(max(p - q, 0)) drawn from on rejection, and the
 * seeded generator the draws come from.
 */

/** Sampling parameters of a generation. */
export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
}

/** A distribution over the tokens it names: ids and probabilities (summing to 1), most likely first. */
export interface TokenDistribution {
  ids: Int32Array;
  probs: Float64Array;
}

/** Argmax of a logits row; NaN never wins and among equal values the lowest id does (as the native op). */
export function argmaxOf(logits: ArrayLike<number>): number {
  let best = -1;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (Number.isNaN(v)) continue;
    if (best < 0 || v > logits[best]!) best = i;
  }
  return best < 0 ? 0 : best;
}

/** The largest softmax probability of a logits row at temperature 1: the draft's confidence. */
export function topProbability(logits: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  if (!Number.isFinite(max)) return max === Infinity ? 1 : 0;
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (!Number.isNaN(v)) total += Math.exp(v - max);
  }
  return 1 / total;
}

/**
 * The distribution the native sample op draws from for `logits` under `s` (temperature > 0):
 * NaN and -inf are out, +inf tokens share all the mass, top-k keeps the k highest (lowest id
 * first on ties), softmax in double of logit / temperature, then top-p keeps the shortest prefix
 * by descending probability whose mass reaches topP, renormalised.
 */
export function samplingDistribution(logits: ArrayLike<number>, s: SamplingParams): TokenDistribution {
  let anyPosInf = false;
  let n = 0;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (Number.isNaN(v) || v === -Infinity) continue;
    if (v === Infinity) anyPosInf = true;
    n++;
  }
  if (n === 0) return { ids: Int32Array.of(0), probs: Float64Array.of(1) };
  // +inf swallows all finite mass: uniform over the +inf tokens (logit 0 each).
  const valueOf = (id: number) => (anyPosInf ? 0 : logits[id]!);
  const eligible = (v: number) => (anyPosInf ? v === Infinity : !Number.isNaN(v) && v !== -Infinity);
  // Higher logit first, lower id first on ties.
  const before = (a: number, b: number) => valueOf(a) > valueOf(b) || (valueOf(a) === valueOf(b) && a < b);
  let order: number[];
  if (s.topK > 0 && s.topK < n) {
    // One pass keeping the k best in order: a whole vocabulary is not sorted for a small k.
    order = [];
    const k = s.topK;
    for (let id = 0; id < logits.length; id++) {
      if (!eligible(logits[id]!)) continue;
      if (order.length === k && !before(id, order[k - 1]!)) continue;
      if (order.length === k) order.pop();
      let i = order.length;
      while (i > 0 && before(id, order[i - 1]!)) i--;
      order.splice(i, 0, id);
    }
  } else {
    order = [];
    for (let id = 0; id < logits.length; id++) if (eligible(logits[id]!)) order.push(id);
    order.sort((a, b) => valueOf(b) - valueOf(a) || a - b);
  }
  const max = valueOf(order[0]!);
  const invT = 1 / s.temperature;
  const weights = new Float64Array(order.length);
  let total = 0;
  for (let i = 0; i < order.length; i++) total += weights[i] = Math.exp((valueOf(order[i]!) - max) * invT);
  let kept = order.length;
  if (s.topP < 1) {
    // The native op compares in double against float(topP) * total.
    const target = Math.fround(s.topP) * total;
    let cumulative = 0;
    let m = 0;
    while (m < order.length) {
      cumulative += weights[m++]!;
      if (cumulative >= target) break;
    }
    kept = m;
    total = cumulative;
  }
  const ids = Int32Array.from(order.slice(0, kept));
  const probs = new Float64Array(kept);
  for (let i = 0; i < kept; i++) probs[i] = weights[i]! / total;
  return { ids, probs };
}

/** The probability `d` gives token `id` (0 when it is outside the kept set). */
export function probabilityOf(d: TokenDistribution, id: number): number {
  for (let i = 0; i < d.ids.length; i++) if (d.ids[i] === id) return d.probs[i]!;
  return 0;
}

/** Draws from `d` with u uniform in [0, 1): the first token whose cumulative mass exceeds u. */
export function drawFrom(d: TokenDistribution, u: number): number {
  let cumulative = 0;
  for (let i = 0; i < d.ids.length; i++) {
    cumulative += d.probs[i]!;
    if (u < cumulative) return d.ids[i]!;
  }
  // Rounding can leave u just past the last sum: the last token with mass wins.
  for (let i = d.ids.length; i-- > 0;) if (d.probs[i]! > 0) return d.ids[i]!;
  return d.ids[0]!;
}

/** The probability of accepting drafted token x: min(1, p(x) / q(x)) (q(x) > 0: x was drawn from q). */
export function acceptanceProbability(p: TokenDistribution, q: TokenDistribution, x: number): number {
  const qx = probabilityOf(q, x);
  if (!(qx > 0)) return 0;
  return Math.min(1, probabilityOf(p, x) / qx);
}

/**
 * normalize(max(p - q, 0)): what a rejection samples from, so that accepted and resampled tokens
 * together are distributed exactly as p. Null when p <= q everywhere (then p = q and nothing is
 * ever rejected: acceptanceProbability is 1 for every x q can draw).
 */
export function residualDistribution(p: TokenDistribution, q: TokenDistribution): TokenDistribution | null {
  const qOf = new Map<number, number>();
  for (let i = 0; i < q.ids.length; i++) qOf.set(q.ids[i]!, q.probs[i]!);
  const ids: number[] = [];
  const mass: number[] = [];
  let total = 0;
  for (let i = 0; i < p.ids.length; i++) {
    const r = p.probs[i]! - (qOf.get(p.ids[i]!) ?? 0);
    if (r > 0) {
      ids.push(p.ids[i]!);
      mass.push(r);
      total += r;
    }
  }
  if (!(total > 0)) return null;
  return { ids: Int32Array.from(ids), probs: Float64Array.from(mass, (m) => m / total) };
}

/**
 * One verification step of speculative sampling: the drafted tokens (drawn from qs[j]) against
 * the full model's ps[j] (ps has one more row, for the bonus token). Returns the tokens to
 * emit: the accepted prefix of the draft, then one token from the residual (on a rejection) or
 * from the last p (all accepted). `uniform()` gives the draws, in [0, 1).
 */
export function verifySampled(
  drafted: number[],
  qs: TokenDistribution[],
  ps: TokenDistribution[],
  uniform: () => number,
): number[] {
  const out: number[] = [];
  for (let j = 0; j < drafted.length; j++) {
    const x = drafted[j]!;
    if (uniform() < acceptanceProbability(ps[j]!, qs[j]!, x)) {
      out.push(x);
      continue;
    }
    const residual = residualDistribution(ps[j]!, qs[j]!);
    out.push(drawFrom(residual ?? ps[j]!, uniform()));
    return out;
  }
  out.push(drawFrom(ps[drafted.length]!, uniform()));
  return out;
}

/**
 * splitmix64, as the native generator: a seeded stream of uniforms in [0, 1). `stream` offsets
 * the start (XOR into the 64-bit state), so a stream seeded like the native generator does not
 * repeat its draws: equal draws for two decisions would correlate them.
 */
export class SplitMix64 {
  private state: bigint;
  constructor(seed: number, stream = 0n) {
    this.state = BigInt.asUintN(64, BigInt(Math.trunc(seed)) ^ stream);
  }
  next(): bigint {
    this.state = BigInt.asUintN(64, this.state + 0x9e3779b97f4a7c15n);
    let z = this.state;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    return z ^ (z >> 31n);
  }
  uniform(): number {
    return Number(this.next() >> 11n) * 2 ** -53;
  }
}
