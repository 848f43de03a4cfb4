/**
 * loadModel(dir, { weights: 'q8_0' | 'q4_0' }): quantization on load.
 *  * Against the float64 reference run on the weights as quantized (test/reference/quantize.ts,
 *    llama.cpp's rounding written again): what is left is the engine's f32 arithmetic and the int8
 *    rounding of the activations inside every quantized matmul.
 *  * Against the same model loaded as stored: the loss that quantizing the weights costs, looser.
 *  * Which tensors were quantized (weightBytes accounts for every one), typed errors.
 */
import { InvalidOptionError, loadModel, UnsupportedModelError } from '../src';
import type { TinyModelOptions } from '../src/testing';
import { loadReference, referenceLogits } from './reference/reference';
import { quantizeActivation, quantizedReference, type BlockFormat } from './reference/quantize';
import { cleanup, randomTokens, relError, tinyModel } from './helpers';

afterAll(cleanup);

// Max relError over 12 positions (of the logit range). TOL_EXACT: against the reference that
// rounds weights and matmul inputs as the engine does; TOL_WEIGHTS: the reference on the quantized
// weights with unrounded inputs (the int8 rounding of the activations is what is left);
// TOL_STORED: the reference on the stored weights. Measured on these models: exact 1.4e-7 to
// 2.8e-7 (f32 arithmetic only, as for stored weights in engine.test.ts); weights only 2.1e-2 to
// 3.1e-2; stored 3.2e-2 to 4.3e-2 (Q8_0) and 0.26 to 0.42 (Q4_0: uniform random weights are hard on 16 levels).
const TOL_EXACT: Record<BlockFormat, number> = { q8_0: 1e-5, q4_0: 1e-5 };
const TOL_WEIGHTS = 5e-2;
const TOL_STORED: Record<BlockFormat, number> = { q8_0: 6e-2, q4_0: 5e-1 };

const cases: [string, TinyModelOptions][] = [
  ['llama f32 GQA', { arch: 'llama', dtype: 'f32' }],
  ['llama bf16 tied', { arch: 'llama', dtype: 'bf16', tied: true }],
  ['qwen2 biases bf16', { arch: 'qwen2', dtype: 'bf16', intermediate: 160 }],
];

describe.each(cases)('%s', (_name, options) => {
  let dir: string;
  beforeAll(() => {
    dir = tinyModel({ seed: 5, ...options });
  });

  test.each(['q8_0', 'q4_0'] as const)('%s logits match the reference on the quantized weights', async (format) => {
    const ref = loadReference(dir);
    const tokens = randomTokens(12, 0, 300, 4);
    const qref = quantizedReference(ref, format);
    const wantExact = referenceLogits(qref, tokens, { kvCacheType: 'f32', matmulInput: quantizeActivation });
    const wantQuant = referenceLogits(qref, tokens, { kvCacheType: 'f32' });
    const wantStored = referenceLogits(ref, tokens, { kvCacheType: 'f32' });
    const m = await loadModel(dir, { weights: format, kvCacheType: 'f32', threads: 2 });
    try {
      expect(m.info.weights).toBe(format);
      expect(m.info.quantizeMs).toBeGreaterThan(0);
      expect(m.info.dtype).toMatch(format === 'q8_0' ? /^Q8_0 \(from / : /^Q4_0\+Q8_0 \(from /);
      const got = await m.evaluate(tokens);
      const exact = Math.max(...got.logits.map((row, i) => relError(row, wantExact[i]!)));
      const vsQuantWeights = Math.max(...got.logits.map((row, i) => relError(row, wantQuant[i]!)));
      const vsStored = Math.max(...got.logits.map((row, i) => relError(row, wantStored[i]!)));
      const refGap = Math.max(...wantQuant.map((row, i) => relError(row, wantStored[i]!)));
      console.log(
        `${_name} ${format}: vs reference with quantized weights and activations ${exact.toExponential(2)}, quantized weights only ${vsQuantWeights.toExponential(2)}, stored ${vsStored.toExponential(2)}`,
      );
      expect(exact).toBeLessThan(TOL_EXACT[format]);
      expect(vsQuantWeights).toBeLessThan(TOL_WEIGHTS);
      expect(vsStored).toBeLessThan(TOL_STORED[format]);
      // The reference models the rounding of both: the engine is far nearer it than either alone.
      expect(exact * 10).toBeLessThan(Math.min(vsQuantWeights, refGap));
      // Decode (one row at a time, the matrix-vector kernels) agrees with the prefill above.
      const seq = m.createSequence();
      try {
        for (let i = 0; i < 4; i++) {
          const step = await seq.evaluate([tokens[i]!]);
          expect(relError(step.logits[0]!, got.logits[i]!)).toBeLessThan(1e-5);
        }
      } finally {
        seq.dispose();
      }
    } finally {
      await m.dispose();
    }
  });
});

test('weightBytes counts the quantized copies in place of the projections; routers and embeddings keep their bytes', async () => {
  const dir = tinyModel({ seed: 3, dtype: 'bf16', layers: 3, flexidepth: { layers: [1, 2] } });
  const stored = await loadModel(dir, { threads: 1 });
  const q8 = await loadModel(dir, { weights: 'q8_0', threads: 1 });
  const q4 = await loadModel(dir, { weights: 'q4_0', threads: 1 });
  try {
    const c = stored.config;
    const proj =
      (c.numHeads * c.headDim * 2 + c.numKvHeads * c.headDim * 2) * c.hiddenSize +
      3 * c.intermediateSize * c.hiddenSize;
    const params = c.numLayers * proj; // quantized in the layer format
    const head = c.vocabSize * c.hiddenSize; // lm_head, in Q8_0 for both formats
    const bf16 = (n: number) => 2 * n;
    const blocks = (n: number, bytes: number) => (n / 32) * bytes;
    expect(stored.info.weights).toBe('stored');
    expect(stored.info.quantizeMs).toBe(0);
    expect(q8.info.weightBytes).toBe(stored.info.weightBytes - bf16(params + head) + blocks(params + head, 34));
    expect(q4.info.weightBytes).toBe(
      stored.info.weightBytes - bf16(params + head) + blocks(params, 18) + blocks(head, 34),
    );
    expect(q8.info.flexiDepthLayers).toEqual([1, 2]);
    // The routed model runs on the quantized weights and routes like the stored one on most tokens.
    const tokens = randomTokens(10, 0, 300, 9);
    const a = await stored.evaluate(tokens, { policy: { type: 'flexidepth' } });
    const b = await q8.evaluate(tokens, { policy: { type: 'flexidepth' } });
    for (let i = 0; i < tokens.length; i++)
      expect(relError(b.logits[i]!, a.logits[i]!)).toBeLessThan(TOL_STORED.q8_0 * 4);
  } finally {
    await stored.dispose();
    await q8.dispose();
    await q4.dispose();
  }
});

test('an unknown weights value is an InvalidOptionError naming the option', async () => {
  const dir = tinyModel({ seed: 1 });
  await expect(loadModel(dir, { weights: 'q5_k' as never })).rejects.toThrow(InvalidOptionError);
  await expect(loadModel(dir, { weights: 'q5_k' as never })).rejects.toMatchObject({ option: 'weights' });
});

test('a matrix whose width is not a multiple of 32 is refused with UnsupportedModelError naming the tensor', async () => {
  const dir = tinyModel({ seed: 1, hidden: 48, heads: 4, kvHeads: 2 });
  const err = await loadModel(dir, { weights: 'q8_0' }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(UnsupportedModelError);
  expect(String((err as Error).message)).toMatch(/model\.layers\.0\.self_attn\.q_proj\.weight' has 48/);
  // Stored weights of the same model load fine.
  const m = await loadModel(dir);
  await m.dispose();
});
