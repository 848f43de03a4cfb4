/**
 * How closely two engines' next-token distributions agree on the same positions (what
 * `npm run bench:peers` reports against llama.cpp): the softmax of each logits row in float64,
 * the largest absolute difference of a probability over the vocabulary, and whether the top-1
 * tokens are the same. Not exported from `depthgate/testing` (a benchmark's arithmetic);
 * the benchmark loads it from dist/testing/.
 */

/** softmax of a logits row, in float64 (max-subtracted). */
export function softmax64(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp(logits[i]! - max);
  for (let i = 0; i < p.length; i++) p[i] = p[i]! / sum;
  return p;
}

/** The index of the largest value (the first one on ties). */
export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/** One position: engine A's and B's next-token distributions compared. */
export interface PositionAgreement {
  /** max over the vocabulary of |pA - pB|. */
  maxAbsDeltaP: number;
  /** A's and B's top-1 tokens. */
  top1: [number, number];
  /** The two top-1 tokens are the same. */
  top1Agrees: boolean;
  /** A's top-1 probability minus its second's: how close a tie was (a small margin can flip on rounding). */
  top1MarginA: number;
}

/** Compares two logits rows of the same vocabulary. */
export function comparePosition(logitsA: ArrayLike<number>, logitsB: ArrayLike<number>): PositionAgreement {
  if (logitsA.length !== logitsB.length)
    throw new RangeError(`comparePosition: vocabularies differ (${logitsA.length} and ${logitsB.length} logits)`);
  if (logitsA.length < 2) throw new RangeError('comparePosition: needs at least 2 logits');
  const pa = softmax64(logitsA);
  const pb = softmax64(logitsB);
  let maxAbsDeltaP = 0;
  for (let i = 0; i < pa.length; i++) maxAbsDeltaP = Math.max(maxAbsDeltaP, Math.abs(pa[i]! - pb[i]!));
  const a = argmax(pa);
  const b = argmax(pb);
  let second = -Infinity;
  for (let i = 0; i < pa.length; i++) if (i !== a && pa[i]! > second) second = pa[i]!;
  return { maxAbsDeltaP, top1: [a, b], top1Agrees: a === b, top1MarginA: pa[a]! - second };
}

/** Positions summarised: the worst and the median max |Δp|, and the share of top-1 agreement. */
export function summariseAgreement(positions: readonly PositionAgreement[]): {
  positions: number;
  maxAbsDeltaP: number;
  medianMaxAbsDeltaP: number;
  top1Agreement: number;
  top1Disagreements: number;
} {
  if (positions.length === 0) throw new RangeError('summariseAgreement: no positions');
  const d = positions.map((p) => p.maxAbsDeltaP).sort((x, y) => x - y);
  const mid = d.length >> 1;
  const agree = positions.filter((p) => p.top1Agrees).length;
  return {
    positions: positions.length,
    maxAbsDeltaP: d[d.length - 1]!,
    medianMaxAbsDeltaP: d.length % 2 ? d[mid]! : (d[mid - 1]! + d[mid]!) / 2,
    top1Agreement: agree / positions.length,
    top1Disagreements: positions.length - agree,
  };
}
