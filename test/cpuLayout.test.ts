/**
 * The CPU backend's copies of the weights at load (native/cpu_layout.cc): every projection and the
 * LM head go into one arena advised for transparent huge pages, Q8_0 repacked (where the VNNI
 * kernel runs), the rest copied as they are, and DEPTHGATE_CPU_HUGEPAGES=0 leaves the rest where
 * they were loaded. A copy must not change a bit of what the model computes, nor what it counts.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { LoadOptions } from '../src';
import { convertToGguf } from '../src/testing';
import { cleanup, randomTokens, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

// Read here, independently of the addon: the kernel's THP mode is the bracketed word.
function thpOn(): boolean {
  try {
    return /\[(always|madvise)\]/.test(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'));
  } catch {
    return false;
  }
}

interface Run {
  info: { placedMatrices: number; repackedMatrices: number; hugePages: boolean; weightBytes: number };
  prefill: number[][];
  decode: number[][];
}

// Loads in a child process with the variables in `vars` set (undefined: unset; jest's process.env
// is not the process's environment, which the addon reads), and computes the
// logits of a prompt at once (the tile kernels) and one token at a time (the matrix-vector kernels).
function run(model: string, options: LoadOptions, vars: Record<string, string | undefined>, tokens: number[]): Run {
  const script = `(async () => {
    const { loadModel } = require('./dist');
    const m = await loadModel(${JSON.stringify(model)}, { kvCacheType: 'f32', threads: 2, ...${JSON.stringify(options)} });
    const tokens = ${JSON.stringify(tokens)};
    const prefill = (await m.evaluate(tokens)).logits.map((l) => Array.from(l));
    const seq = m.createSequence();
    const decode = [];
    for (const t of tokens) decode.push(Array.from((await seq.evaluate([t])).logits[0]));
    seq.dispose();
    const { placedMatrices, repackedMatrices, hugePages, weightBytes } = m.info;
    console.log(JSON.stringify({ info: { placedMatrices, repackedMatrices, hugePages, weightBytes }, prefill, decode }));
    await m.dispose();
  })()`;
  const env = { ...process.env };
  for (const k of ['DEPTHGATE_CPU_HUGEPAGES', 'DEPTHGATE_CPU_COPY_LIMIT', 'DEPTHGATE_CPU_REPACK']) delete env[k];
  for (const [k, v] of Object.entries(vars)) if (v !== undefined) env[k] = v;
  const child = spawnSync(process.execPath, ['-e', script], { cwd: path.join(__dirname, '..'), encoding: 'utf8', env });
  expect(child.stderr).toBe('');
  return JSON.parse(child.stdout) as Run;
}

const layers = 2;
const matrices = 7 * layers + 1; // q, k, v, o, gate, up, down per layer, and the LM head

describe.each<[string, () => string, LoadOptions]>([
  ['bf16 safetensors (mapped)', () => tinyModel({ seed: 21, dtype: 'bf16', layers }), {}],
  // Tied: the LM head is the embedding table, which moves with it.
  ['bf16 tied (the table moves with the head)', () => tinyModel({ seed: 22, dtype: 'bf16', tied: true, layers }), {}],
  // Quantized on load: the quantized copies are freed as each matrix is copied.
  [
    'q4_k on load (Q4_K_M mix)',
    () => tinyModel({ seed: 23, dtype: 'bf16', hidden: 256, intermediate: 512, layers }),
    { weights: 'q4_k' },
  ],
  // Q8_0 goes to the arena repacked where VNNI runs, copied elsewhere.
  ['q8_0 on load', () => tinyModel({ seed: 24, dtype: 'bf16', layers }), { weights: 'q8_0' }],
  // A GGUF file: mapped tensors, and q / k rows put back in HF order (copies the file frees).
  [
    'GGUF',
    () => {
      const dir = tinyModel({ seed: 25, dtype: 'f32', layers });
      const file = path.join(tmpDir(), 'model.gguf');
      convertToGguf(dir, file);
      return file;
    },
    {},
  ],
])('%s', (_name, make, options) => {
  test('computes the same logits with the copies as without, and counts the same bytes', () => {
    const model = make();
    const tokens = randomTokens(5, 0, 250, 31);
    const placed = run(model, options, {}, tokens);
    const kept = run(model, options, { DEPTHGATE_CPU_HUGEPAGES: '0' }, tokens);
    // Without huge pages nothing is copied as it is, so the arena only holds repacked matrices.
    expect(kept.info.placedMatrices).toBe(0);
    expect(kept.info.hugePages).toBe(false);
    const repacked = placed.info.repackedMatrices;
    expect(kept.info.repackedMatrices).toBe(repacked);
    expect(placed.info.placedMatrices).toBe(thpOn() ? matrices - repacked : 0);
    expect(placed.info.hugePages).toBe(thpOn());
    // Each copy's bytes are counted in place of what it replaced.
    expect(placed.info.weightBytes).toBe(kept.info.weightBytes);
    expect(placed.prefill[0]!.every(Number.isFinite)).toBe(true);
    expect(placed.prefill).toEqual(kept.prefill);
    expect(placed.decode).toEqual(kept.decode);
  });
});

test('DEPTHGATE_CPU_HUGEPAGES=0 copies nothing as it is; unset, a bf16 model has its 8 matrices copied where THP is on', () => {
  const dir = tinyModel({ seed: 26, dtype: 'bf16', layers: 1 });
  const tokens = [3, 7];
  const off = run(dir, {}, { DEPTHGATE_CPU_HUGEPAGES: '0' }, tokens);
  const on = run(dir, {}, {}, tokens);
  expect(off.info.placedMatrices).toBe(0);
  expect(on.info.placedMatrices).toBe(thpOn() ? 8 : 0);
});

test('DEPTHGATE_CPU_COPY_LIMIT caps the copies: within it both kinds are made, at 0 none (the weights stay as loaded)', () => {
  // Q8_0 on load: repacked where VNNI runs, and no other matrix to copy; a bf16 model: copies only.
  const q8 = tinyModel({ seed: 27, dtype: 'bf16', layers });
  const tokens = randomTokens(4, 0, 250, 33);
  const none = run(q8, { weights: 'q8_0' }, { DEPTHGATE_CPU_COPY_LIMIT: '0' }, tokens);
  const stored = run(q8, { weights: 'q8_0' }, { DEPTHGATE_CPU_REPACK: '0', DEPTHGATE_CPU_HUGEPAGES: '0' }, tokens);
  const roomy = run(q8, { weights: 'q8_0' }, { DEPTHGATE_CPU_COPY_LIMIT: String(2 ** 40) }, tokens);
  expect(none.info.repackedMatrices).toBe(0);
  expect(none.info.placedMatrices).toBe(0);
  expect(none.info.hugePages).toBe(false);
  // No copy: the stored layout's kernel, the same code as with the repack and the copies off.
  expect(none.decode).toEqual(stored.decode);
  expect(none.info.weightBytes).toBe(stored.info.weightBytes);
  expect(roomy.info.repackedMatrices + roomy.info.placedMatrices).toBe(
    thpOn() || roomy.info.repackedMatrices > 0 ? matrices : 0,
  );
  const bf = run(tinyModel({ seed: 28, dtype: 'bf16', layers }), {}, { DEPTHGATE_CPU_COPY_LIMIT: '0' }, tokens);
  expect(bf.info.placedMatrices).toBe(0);
});
