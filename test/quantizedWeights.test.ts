/**
 * loadModel(dir, { weights: 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k' }): quantization on load.
 *  * Against the float64 reference run on the weights as quantized (test/reference/quantize.ts,
 *    llama.cpp's rounding written again): what is left is the engine's f32 arithmetic and the int8
 *    rounding of the activations inside every quantized matmul.
 *  * Against the same model loaded as stored: the loss that quantizing the weights costs, looser.
 *  * Which tensors were quantized (weightBytes accounts for every one), typed errors.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { InvalidOptionError, loadModel, UnsupportedModelError } from '../src';
import type { TinyModelOptions } from '../src/testing';
import { loadReference, referenceLogits } from './reference/reference';
import { activationRounding, quantizedReference, type WeightsOption } from './reference/quantize';
import { cleanup, randomTokens, relError, tinyModel } from './helpers';

afterAll(cleanup);

// Max relError over 12 positions (of the logit range). TOL_EXACT: against the reference that
// rounds weights and matmul inputs as the engine does; TOL_WEIGHTS: the reference on the quantized
// weights with unrounded inputs (the int8 rounding of the activations is what is left);
// TOL_STORED: the reference on the stored weights. Measured on these models: exact 1.4e-7 to
// 2.8e-7 (f32 arithmetic only, as for stored weights in engine.test.ts); weights only 2.1e-2 to
// 3.1e-2; stored 3.2e-2 to 4.3e-2 (Q8_0) and 0.26 to 0.42 (Q4_0: uniform random weights are hard on 16 levels).
// The K-quants (models 256 wide): exact 1.2e-7 to 2.5e-7 (so the engine's quantizer and the
// TypeScript port of llama.cpp's write the same blocks); weights only 1.1e-2 to 4.0e-2 (256-wide
// activation blocks); stored 8.6e-2 to 0.30 (q4_k, Q4_K_M) and 3.0e-2 to 8.6e-2 (q6_k).
const TOL_EXACT: Record<WeightsOption, number> = { q8_0: 1e-5, q4_0: 1e-5, q4_k: 1e-5, q6_k: 1e-5 };
const TOL_WEIGHTS = 5e-2;
const TOL_STORED: Record<WeightsOption, number> = { q8_0: 6e-2, q4_0: 5e-1, q4_k: 5e-1, q6_k: 1.5e-1 };
// m.info.dtype: the formats made, the layer format first.
const DTYPES: Record<WeightsOption, RegExp> = {
  q8_0: /^Q8_0 \(from /,
  q4_0: /^Q4_0\+Q8_0 \(from /,
  q4_k: /^Q4_K\+Q6_K(\+Q8_0)? \(from /,
  q6_k: /^Q6_K(\+Q8_0)? \(from /,
};

const cases: [string, TinyModelOptions, WeightsOption[]][] = [
  ['llama f32 GQA', { arch: 'llama', dtype: 'f32' }, ['q8_0', 'q4_0']],
  ['llama bf16 tied', { arch: 'llama', dtype: 'bf16', tied: true }, ['q8_0', 'q4_0']],
  ['qwen2 biases bf16', { arch: 'qwen2', dtype: 'bf16', intermediate: 160 }, ['q8_0', 'q4_0']],
  // 256 wide, 3 layers: Q4_K_M puts layer 2's v and down in Q6_K.
  ['llama f32 256 wide', { arch: 'llama', dtype: 'f32', hidden: 256, intermediate: 256, layers: 3 }, ['q4_k', 'q6_k']],
  // down_proj 160 wide: Q8_0 in place of a K-quant; the tied LM head gets a Q6_K copy.
  [
    'qwen2 bf16 tied 256 wide, down 160',
    { arch: 'qwen2', dtype: 'bf16', tied: true, hidden: 256, intermediate: 160 },
    ['q4_k', 'q6_k'],
  ],
];

describe.each(cases)('%s', (_name, options, formats) => {
  let dir: string;
  beforeAll(() => {
    dir = tinyModel({ seed: 5, ...options });
  });

  test.each(formats)('%s logits match the reference on the quantized weights', async (format) => {
    const ref = loadReference(dir);
    const tokens = randomTokens(12, 0, 300, 4);
    const qref = quantizedReference(ref, format);
    const wantExact = referenceLogits(qref, tokens, { kvCacheType: 'f32', matmulInput: activationRounding(format) });
    const wantQuant = referenceLogits(qref, tokens, { kvCacheType: 'f32' });
    const wantStored = referenceLogits(ref, tokens, { kvCacheType: 'f32' });
    const m = await loadModel(dir, { weights: format, kvCacheType: 'f32', threads: 2 });
    try {
      expect(m.info.weights).toBe(format);
      expect(m.info.quantizeMs).toBeGreaterThan(0);
      expect(m.info.dtype).toMatch(DTYPES[format]);
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
  const q8m = await loadModel(dir, { weights: 'q8_0', threads: 1 });
  const q4 = await loadModel(dir, { weights: 'q4_0', threads: 1 });
  try {
    const c = stored.config;
    const h = c.hiddenSize,
      att = c.numHeads * c.headDim,
      kv = c.numKvHeads * c.headDim,
      m = c.intermediateSize;
    // [rows, cols] of one layer's q, k, v, o, gate, up and down, and of the LM head.
    const layer: [number, number][] = [
      [att, h],
      [kv, h],
      [kv, h],
      [h, att],
      [m, h],
      [m, h],
      [h, m],
    ];
    const head: [number, number] = [c.vocabSize, h];
    const bf16 = ([r, k]: [number, number]) => 2 * r * k;
    const blocks = ([r, k]: [number, number], bytes: number) => r * (k / 32) * bytes;
    // A Q8_0 matrix the CPU backend repacked (Q8_0x16, native/tensor.h): rows padded to 64 bytes.
    const q8 = (s: [number, number], repacked: boolean) =>
      repacked ? s[0] * Math.ceil(((s[1] / 32) * 34) / 64) * 64 : blocks(s, 34);
    const sum = (f: (s: [number, number]) => number) => c.numLayers * layer.map(f).reduce((a, b) => a + b, 0);
    const storedBytes = sum(bf16) + bf16(head);
    expect(stored.info.weights).toBe('stored');
    expect(stored.info.quantizeMs).toBe(0);
    expect(stored.info.repackedMatrices).toBe(0); // nothing in Q8_0
    const r8 = q8m.info.repackedMatrices > 0;
    // Every Q8_0 matrix or none: the layer projections and the head, or (q4_0) the head alone.
    expect(q8m.info.repackedMatrices).toBe(r8 ? 7 * c.numLayers + 1 : 0);
    expect(q4.info.repackedMatrices).toBe(r8 ? 1 : 0);
    expect(q8m.info.weightBytes).toBe(stored.info.weightBytes - storedBytes + sum((s) => q8(s, r8)) + q8(head, r8));
    expect(q4.info.weightBytes).toBe(stored.info.weightBytes - storedBytes + sum((s) => blocks(s, 18)) + q8(head, r8));
    expect(q8m.info.flexiDepthLayers).toEqual([1, 2]);
    // The routed model runs on the quantized weights and routes like the stored one on most tokens.
    const tokens = randomTokens(10, 0, 300, 9);
    const a = await stored.evaluate(tokens, { policy: { type: 'flexidepth' } });
    const b = await q8m.evaluate(tokens, { policy: { type: 'flexidepth' } });
    for (let i = 0; i < tokens.length; i++)
      expect(relError(b.logits[i]!, a.logits[i]!)).toBeLessThan(TOL_STORED.q8_0 * 4);
  } finally {
    await stored.dispose();
    await q8m.dispose();
    await q4.dispose();
  }
});

test('q4_k is the Q4_K_M mix: weightBytes counts Q4_K, Q6_K (v and down on the use_more_bits layers, LM head) and Q8_0 fallback blocks', async () => {
  // 9 layers: use_more_bits picks 0 (< 9/8 = 1), 7 and 8 (>= 63/8 = 7), and 3 and 6 ((i - 1) % 3 == 2).
  const dir = tinyModel({ seed: 4, dtype: 'bf16', layers: 9, hidden: 256, intermediate: 160 });
  const stored = await loadModel(dir, { threads: 2 });
  const q4k = await loadModel(dir, { weights: 'q4_k', threads: 2 });
  const q6k = await loadModel(dir, { weights: 'q6_k', threads: 2 });
  try {
    const c = stored.config;
    const d = c.hiddenSize;
    const qkvo = (c.numHeads * c.headDim * 2 + c.numKvHeads * c.headDim * 2) * d;
    const v = c.numKvHeads * c.headDim * d;
    const gateUp = 2 * c.intermediateSize * d; // 256 wide: K-quants
    const down = d * c.intermediateSize; // 160 wide: Q8_0 in both
    const head = c.vocabSize * d;
    const q4 = (n: number) => (n / 256) * 144;
    const q6 = (n: number) => (n / 256) * 210;
    // down in Q8_0, repacked by the CPU backend where its kernel runs (rows padded to 64 bytes).
    const repacked = q4k.info.repackedMatrices > 0;
    expect(q4k.info.repackedMatrices).toBe(repacked ? c.numLayers : 0);
    expect(q6k.info.repackedMatrices).toBe(q4k.info.repackedMatrices);
    const q8 = (n: number) => (repacked ? d * Math.ceil(((n / d / 32) * 34) / 64) * 64 : (n / 32) * 34);
    const more = [0, 3, 6, 7, 8].length;
    const layerBf16 = c.numLayers * (qkvo + gateUp + down);
    const expect4 =
      c.numLayers * (q4(qkvo - v) + q4(gateUp) + q8(down)) + more * q6(v) + (c.numLayers - more) * q4(v) + q6(head);
    expect(q4k.info.weightBytes).toBe(stored.info.weightBytes - 2 * (layerBf16 + head) + expect4);
    const expect6 = c.numLayers * (q6(qkvo) + q6(gateUp) + q8(down)) + q6(head);
    expect(q6k.info.weightBytes).toBe(stored.info.weightBytes - 2 * (layerBf16 + head) + expect6);
    expect(q4k.info.dtype).toBe('Q4_K+Q6_K+Q8_0 (from BF16)');
    expect(q6k.info.dtype).toBe('Q6_K+Q8_0 (from BF16)');
    expect(q4k.info.weights).toBe('q4_k');
  } finally {
    await stored.dispose();
    await q4k.dispose();
    await q6k.dispose();
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
  // The K-quants' Q8_0 fallback needs 32k columns too.
  const errK = await loadModel(dir, { weights: 'q4_k' }).catch((e: unknown) => e);
  expect(errK).toBeInstanceOf(UnsupportedModelError);
  expect(String((errK as Error).message)).toMatch(/weights 'q4_k' needs .*multiple of 32.*q_proj\.weight' has 48/);
  // Stored weights of the same model load fine.
  const m = await loadModel(dir);
  await m.dispose();
});

test("the CPU backend's repacked Q8_0 (Q8_0x16) computes what the stored layout does, and DEPTHGATE_CPU_REPACK=0 keeps the stored layout", async () => {
  // The same model in a child process with the repack off (the switch is read once per process).
  // On a processor without AVX-512 VNNI neither process repacks, and the two runs are the same code.
  const dir = tinyModel({ seed: 8, dtype: 'bf16', hidden: 96, intermediate: 544, layers: 2 }); // partial chunks
  const tokens = randomTokens(9, 0, 300, 2);
  const script = `(async () => {
    const { loadModel } = require('./dist');
    const m = await loadModel(${JSON.stringify(dir)}, { weights: 'q8_0', kvCacheType: 'f32', threads: 2 });
    const r = await m.evaluate(${JSON.stringify(tokens)});
    console.log(JSON.stringify({ repacked: m.info.repackedMatrices, logits: r.logits.map((l) => Array.from(l)) }));
    await m.dispose();
  })()`;
  const child = spawnSync(process.execPath, ['-e', script], {
    cwd: path.join(__dirname, '..'),
    encoding: 'utf8',
    env: { ...process.env, DEPTHGATE_CPU_REPACK: '0' },
  });
  expect(child.stderr).toBe('');
  const off = JSON.parse(child.stdout) as { repacked: number; logits: number[][] };
  expect(off.repacked).toBe(0);
  const m = await loadModel(dir, { weights: 'q8_0', kvCacheType: 'f32', threads: 2 });
  try {
    expect([0, 2 * 7 + 1]).toContain(m.info.repackedMatrices);
    const got = await m.evaluate(tokens);
    // The same codes, scales and activation rounding: equal up to the f32 summation order.
    for (let i = 0; i < tokens.length; i++)
      expect(relError(got.logits[i]!, Float32Array.from(off.logits[i]!))).toBeLessThan(1e-5);
    // Decode (the matrix-vector kernel) too.
    const seq = m.createSequence();
    try {
      for (let i = 0; i < 3; i++) {
        const step = await seq.evaluate([tokens[i]!]);
        expect(relError(step.logits[0]!, Float32Array.from(off.logits[i]!))).toBeLessThan(1e-5);
      }
    } finally {
      seq.dispose();
    }
  } finally {
    await m.dispose();
  }
});

test('the decode kernels compute the same logits with their software prefetch into L1, into L2 and off (DEPTHGATE_CPU_PREFETCH)', async () => {
  // A prefetch is a hint and must not change a bit, wherever it puts the lines: bf16, Q8_0 (repacked where VNNI runs) and the
  // Q4_K_M mix, one token at a time (the 4-row matrix-vector kernels, which ask for the next group).
  const dir = tinyModel({ seed: 12, dtype: 'bf16', hidden: 256, intermediate: 512, layers: 2 });
  const tokens = randomTokens(4, 0, 300, 3);
  const script = `(async () => {
    const { loadModel, getBuildInfo } = require('./dist');
    const out = { level: getBuildInfo().cpuPrefetch };
    for (const weights of ['stored', 'q8_0', 'q4_k']) {
      const m = await loadModel(${JSON.stringify(dir)}, { weights, kvCacheType: 'f32', threads: 2 });
      const seq = m.createSequence();
      out[weights] = [];
      for (const t of ${JSON.stringify(tokens)}) out[weights].push(Array.from((await seq.evaluate([t])).logits[0]));
      seq.dispose();
      await m.dispose();
    }
    console.log(JSON.stringify(out));
  })()`;
  const run = (prefetch?: string) => {
    const env = { ...process.env };
    if (prefetch === undefined) delete env.DEPTHGATE_CPU_PREFETCH;
    else env.DEPTHGATE_CPU_PREFETCH = prefetch;
    const child = spawnSync(process.execPath, ['-e', script], {
      cwd: path.join(__dirname, '..'),
      encoding: 'utf8',
      env,
    });
    expect(child.stderr).toBe('');
    return JSON.parse(child.stdout) as Record<string, number[][]> & { level: string };
  };
  const byDefault = run(),
    l1 = run('l1'),
    l2 = run('l2'),
    off = run('0');
  // The default is the vendor's level (native/cpu/matmul_common.h); the variable overrides it.
  expect(['l1', 'l2']).toContain(byDefault.level);
  expect([l1.level, l2.level, off.level]).toEqual(['l1', 'l2', 'off']);
  for (const weights of ['stored', 'q8_0', 'q4_k']) {
    expect(off[weights]).toHaveLength(tokens.length);
    expect(off[weights]![0]!.every(Number.isFinite)).toBe(true);
    for (const on of [byDefault, l1, l2]) expect(on[weights]).toEqual(off[weights]);
  }
});
