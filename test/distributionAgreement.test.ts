/**
 * The arithmetic `npm run bench:peers` reports its agreement with llama.cpp in: softmax in
 * float64, max |Δp| over the vocabulary, top-1 agreement, and their summary over positions.
 */
import { argmax, comparePosition, softmax64, summariseAgreement } from '../src/testing/distributionAgreement';

test('softmax64 sums to 1, is shift-invariant and survives large logits', () => {
  const p = softmax64([1, 2, 3]);
  const e = [Math.exp(1), Math.exp(2), Math.exp(3)];
  const s = e[0]! + e[1]! + e[2]!;
  for (let i = 0; i < 3; i++) expect(p[i]).toBeCloseTo(e[i]! / s, 15);
  const shifted = softmax64([1001, 1002, 1003]);
  for (let i = 0; i < 3; i++) expect(shifted[i]).toBeCloseTo(p[i]!, 15);
  expect(Array.from(softmax64(new Float32Array([0, 0, 0, 0])))).toEqual([0.25, 0.25, 0.25, 0.25]);
});

test('argmax takes the first of equal values', () => {
  expect(argmax([0, 3, 1, 3])).toBe(1);
  expect(argmax([-5])).toBe(0);
});

test('comparePosition: max |Δp|, the two top-1 tokens and the top-1 margin', () => {
  const same = comparePosition([0, 1, 2], new Float32Array([0, 1, 2]));
  expect(same.maxAbsDeltaP).toBe(0);
  expect(same.top1).toEqual([2, 2]);
  expect(same.top1Agrees).toBe(true);
  const pa = softmax64([0, 1, 2]);
  expect(same.top1MarginA).toBeCloseTo(pa[2]! - pa[1]!, 15);
  // B swaps the two likeliest tokens: the top-1 differs, and max |Δp| is their probability gap.
  const swapped = comparePosition([0, 1, 2], [0, 2, 1]);
  expect(swapped.top1).toEqual([2, 1]);
  expect(swapped.top1Agrees).toBe(false);
  expect(swapped.maxAbsDeltaP).toBeCloseTo(pa[2]! - pa[1]!, 15);
  expect(() => comparePosition([0, 1], [0, 1, 2])).toThrow(/vocabularies differ \(2 and 3 logits\)/);
  expect(() => comparePosition([0], [0])).toThrow(/at least 2/);
});

test('summariseAgreement: worst and median max |Δp|, top-1 agreement share', () => {
  const rows = [
    comparePosition([0, 1, 2], [0, 1, 2]),
    comparePosition([0, 1, 2], [0, 2, 1]),
    comparePosition([0, 1, 2], [0, 1, 2.5]),
    comparePosition([3, 1, 2], [3, 1, 2.1]),
  ];
  const s = summariseAgreement(rows);
  const d = rows.map((r) => r.maxAbsDeltaP).sort((a, b) => a - b);
  expect(s.positions).toBe(4);
  expect(s.maxAbsDeltaP).toBe(d[3]);
  expect(s.medianMaxAbsDeltaP).toBeCloseTo((d[1]! + d[2]!) / 2, 15);
  expect(s.top1Agreement).toBe(0.75);
  expect(s.top1Disagreements).toBe(1);
  expect(summariseAgreement(rows.slice(0, 3)).medianMaxAbsDeltaP).toBe(
    rows
      .slice(0, 3)
      .map((r) => r.maxAbsDeltaP)
      .sort((a, b) => a - b)[1],
  );
  expect(() => summariseAgreement([])).toThrow(/no positions/);
});
