import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { writeTinyModel, type TinyDtype, type TinyModelInfo, type TinyModelOptions } from '../src/testing';
import { linear, loadReference, referenceLogits, rmsNorm } from './reference/reference';
import {
  d3Depth,
  d3LayerSet,
  loadRoutedReference,
  referenceRouted,
  type RefPolicy,
  type RoutedReferenceModel,
  type RoutedResult,
} from './reference/routed';

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

let root = '';
let counter = 0;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'depthgate-routed-'));
});

afterAll(() => {
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

function write(options: TinyModelOptions = {}, label = 'model'): TinyModelInfo {
  return writeTinyModel(path.join(root, `${label}-${counter++}`), options);
}

const cache = new Map<string, { info: TinyModelInfo; ref: RoutedReferenceModel }>();
function model(options: TinyModelOptions = {}): { info: TinyModelInfo; ref: RoutedReferenceModel } {
  const key = JSON.stringify(options);
  let m = cache.get(key);
  if (!m) {
    const info = write(options, 'ref');
    m = { info, ref: loadRoutedReference(info.dir, info.addonFiles) };
    cache.set(key, m);
  }
  return m;
}

interface Entry {
  dtype: string;
  shape: number[];
  file: string;
}

/** Header entries of every safetensors file in `dir` (or only of `only`). */
function entries(dir: string, only?: (file: string) => boolean): Map<string, Entry> {
  const out = new Map<string, Entry>();
  for (const f of fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.safetensors') && (!only || only(n)))
    .sort()) {
    const bytes = fs.readFileSync(path.join(dir, f));
    const n = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, Entry>;
    for (const [name, e] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      expect(out.has(name)).toBe(false);
      out.set(name, { dtype: e.dtype, shape: e.shape, file: f });
    }
  }
  return out;
}

const readJson = (file: string): Record<string, unknown> =>
  JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
const sameBytes = (a: string, b: string): boolean => fs.readFileSync(a).equals(fs.readFileSync(b));
const ST: Record<TinyDtype, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

function flexidepthShapes(layers: number[], d: number, r: number, m: number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const i of layers) {
    const p = `model.layers.${i}`;
    out.set(`${p}.router.router_enc.weight`, [r, d]);
    out.set(`${p}.router.router_norm.weight`, [r]);
    out.set(`${p}.router.router_dec.weight`, [d, r]);
    out.set(`${p}.router.router_head.weight`, [1, d]);
    out.set(`${p}.router_proj.gate_proj.weight`, [m, d]);
    out.set(`${p}.router_proj.down_proj.weight`, [m, d]);
    out.set(`${p}.router_proj.up_proj.weight`, [d, m]);
  }
  return out;
}

function skipShapes(mode: 'layer' | 'module', layers: number[], d: number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const i of layers) {
    if (mode === 'layer') out.set(`model.layers.${i}.skip_router.weight`, [2, d]);
    else {
      out.set(`model.layers.${i}.self_attn.skip_router.weight`, [2, d]);
      out.set(`model.layers.${i}.mlp.skip_router.weight`, [2, d]);
    }
  }
  return out;
}

/** Deterministic pseudo-random tokens (LCG) below 300. */
function randomTokens(n: number, seed: number): number[] {
  const out: number[] = [];
  let x = seed * 7 + 1;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    out.push(x % 300);
  }
  return out;
}

function expectSameLogits(a: Float64Array[], b: Float64Array[]): void {
  expect(a.length).toBe(b.length);
  for (let t = 0; t < a.length; t++) {
    const x = a[t]!;
    const y = b[t]!;
    expect(x.length).toBe(y.length);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) throw new Error(`logits[${t}][${i}]: ${x[i]} !== ${y[i]}`);
  }
}

function maxAbsDiff(a: Float64Array[], b: Float64Array[]): number {
  let m = 0;
  for (let t = 0; t < a.length; t++)
    for (let i = 0; i < a[t]!.length; i++) m = Math.max(m, Math.abs(a[t]![i]! - b[t]![i]!));
  return m;
}

/** Prefix runs give the first positions of the full run exactly (decisions included). */
function expectPrefixConsistent(
  ref: RoutedReferenceModel,
  tokens: number[],
  policy: RefPolicy,
  full: RoutedResult,
): void {
  for (const n of [1, Math.floor(tokens.length / 2), tokens.length - 1]) {
    const part = referenceRouted(ref, tokens.slice(0, n), policy);
    expectSameLogits(part.logits, full.logits.slice(0, n));
    expect(part.executed).toEqual(full.executed.slice(0, n));
    expect(part.weights).toEqual(full.weights.slice(0, n));
  }
}

const FD_OPTS: TinyModelOptions = { layers: 6, flexidepth: { layers: [2, 3, 4, 5] } };
const FD_ADDON_OPTS: TinyModelOptions = {
  layers: 6,
  flexidepth: { layers: [2, 3, 4, 5], addonFile: 'flexidepth.safetensors' },
};
const PLAIN6: TinyModelOptions = { layers: 6 };

// ---------------------------------------------------------------------------------------------
// writeTinyModel: router tensors
// ---------------------------------------------------------------------------------------------

describe('writeTinyModel router tensors', () => {
  test.each(['f32', 'bf16'] as TinyDtype[])(
    'flexidepth in the own checkpoint (%s): names, shapes, dtype, routing_layers',
    (dtype) => {
      const info = write({ layers: 4, dtype, flexidepth: { layers: [3, 1] } }, 'fd');
      const cfg = readJson(path.join(info.dir, 'config.json'));
      expect(cfg['routing_layers']).toEqual([1, 3]);
      expect(info.config['routing_layers']).toEqual([1, 3]);
      expect(info.addonFiles).toEqual([]);
      expect(info.addonTensorNames).toEqual([]);
      const all = entries(info.dir);
      const expected = flexidepthShapes([1, 3], 64, 4, 8);
      for (const [name, shape] of expected) {
        const e = all.get(name);
        expect([name, e?.shape]).toEqual([name, shape]);
        expect(e!.dtype).toBe(ST[dtype]);
        expect(e!.file).toBe('model.safetensors');
        expect(info.tensorShapes[name]).toEqual(shape);
        expect(info.tensorNames).toContain(name);
      }
      expect([...all.keys()].filter((n) => n.includes('router')).sort()).toEqual([...expected.keys()].sort());
      expect([...all.keys()].filter((n) => /\.bias$/.test(n))).toEqual([]);
      // The base tensors are those of the plain model.
      const plain = loadReference(write({ layers: 4, dtype }, 'plain').dir);
      const fd = loadReference(info.dir);
      for (const [name, t] of plain.tensors) expect(fd.tensors.get(name)!.data).toEqual(t.data);
    },
  );

  test('flexidepth reductions and a sharded checkpoint', () => {
    const info = write(
      {
        layers: 3,
        shards: 3,
        hidden: 96,
        heads: 4,
        intermediate: 192,
        flexidepth: { layers: [0, 2], routerReduction: 8, adapterReduction: 200 },
      },
      'fdshard',
    );
    const all = entries(info.dir);
    for (const [name, shape] of flexidepthShapes([0, 2], 96, 12, 2))
      expect([name, all.get(name)?.shape]).toEqual([name, shape]);
    const index = readJson(path.join(info.dir, 'model.safetensors.index.json')) as {
      weight_map: Record<string, string>;
    };
    expect(Object.keys(index.weight_map).sort()).toEqual([...all.keys()].sort());
    for (const [name, e] of all) expect(index.weight_map[name]).toBe(e.file);
    expect(loadRoutedReference(info.dir).flexidepthLayers).toEqual([0, 2]);
  });

  test('flexidepth add-on file: base checkpoint and config unchanged', () => {
    const plain = write(PLAIN6, 'plain');
    const info = write(FD_ADDON_OPTS, 'fdaddon');
    expect(info.addonFiles).toEqual([path.join(info.dir, 'flexidepth.safetensors')]);
    expect(info.files).toContain(info.addonFiles[0]);
    expect(info.weightFiles).toEqual([path.join(info.dir, 'model.safetensors')]);
    expect(sameBytes(path.join(info.dir, 'config.json'), path.join(plain.dir, 'config.json'))).toBe(true);
    expect(sameBytes(path.join(info.dir, 'model.safetensors'), path.join(plain.dir, 'model.safetensors'))).toBe(true);
    expect(info.config['routing_layers']).toBeUndefined();
    const expected = flexidepthShapes([2, 3, 4, 5], 64, 4, 8);
    const addon = entries(info.dir, (f) => f === 'flexidepth.safetensors');
    expect([...addon.keys()].sort()).toEqual([...expected.keys()].sort());
    expect(new Set(info.addonTensorNames)).toEqual(new Set(expected.keys()));
    for (const [name, shape] of expected) {
      expect(addon.get(name)!.shape).toEqual(shape);
      expect(addon.get(name)!.dtype).toBe('F32');
    }
    // The add-on holds exactly the tensors the own-checkpoint variant holds.
    const own = loadReference(write(FD_OPTS, 'fdown').dir);
    const merged = loadRoutedReference(info.dir, info.addonFiles);
    expect([...merged.tensors.keys()].sort()).toEqual([...own.tensors.keys()].sort());
    for (const [name, t] of own.tensors) expect(merged.tensors.get(name)!.data).toEqual(t.data);
    expect(merged.flexidepthLayers).toEqual([2, 3, 4, 5]);
    expect(loadRoutedReference(info.dir).flexidepthLayers).toEqual([]);
  });

  test.each(['layer', 'module'] as const)(
    'skiplayer %s routers: names, shapes, placement, config unchanged',
    (mode) => {
      const plain = write({ layers: 3, dtype: 'f16' }, 'plain');
      const own = write({ layers: 3, dtype: 'f16', skiplayer: { mode } }, 'sl');
      expect(sameBytes(path.join(own.dir, 'config.json'), path.join(plain.dir, 'config.json'))).toBe(true);
      const all = entries(own.dir);
      const expected = skipShapes(mode, [0, 1, 2], 64);
      expect([...all.keys()].filter((n) => n.includes('skip_router')).sort()).toEqual([...expected.keys()].sort());
      for (const [name, shape] of expected) {
        expect(all.get(name)!.shape).toEqual(shape);
        expect(all.get(name)!.dtype).toBe('F16');
        expect(all.get(name)!.file).toBe('model.safetensors');
      }
      expect(loadRoutedReference(own.dir).skipRouters).toEqual([mode, mode, mode]);

      const addon = write(
        { layers: 3, dtype: 'f16', skiplayer: { mode, layers: [1], addonFile: 'skip.safetensors' } },
        'sladdon',
      );
      expect(sameBytes(path.join(addon.dir, 'config.json'), path.join(plain.dir, 'config.json'))).toBe(true);
      expect(sameBytes(path.join(addon.dir, 'model.safetensors'), path.join(plain.dir, 'model.safetensors'))).toBe(
        true,
      );
      const a = entries(addon.dir, (f) => f === 'skip.safetensors');
      expect([...a.keys()].sort()).toEqual([...skipShapes(mode, [1], 64).keys()].sort());
      expect(loadRoutedReference(addon.dir, addon.addonFiles).skipRouters).toEqual([null, mode, null]);
    },
  );

  test('flexidepth and skiplayer together; byte-determinism', () => {
    const options: TinyModelOptions = {
      layers: 3,
      dtype: 'bf16',
      shards: 2,
      flexidepth: { layers: [1, 2], addonFile: 'fd.safetensors' },
      skiplayer: { mode: 'module', layers: [0, 2] },
    };
    const a = write(options, 'det');
    const b = write(options, 'det');
    const names = fs.readdirSync(a.dir).sort();
    expect(names).toContain('fd.safetensors');
    expect(fs.readdirSync(b.dir).sort()).toEqual(names);
    for (const n of names) expect([n, sameBytes(path.join(a.dir, n), path.join(b.dir, n))]).toEqual([n, true]);
    const s = write({ ...options, seed: 9 }, 'det');
    expect(sameBytes(path.join(a.dir, 'fd.safetensors'), path.join(s.dir, 'fd.safetensors'))).toBe(false);
  });

  test('rejects invalid router options', () => {
    expect(() => write({ layers: 2, flexidepth: { layers: [2] } })).toThrow(/out of range/);
    expect(() => write({ layers: 2, flexidepth: { layers: [1, 1] } })).toThrow(/repeated/);
    expect(() => write({ flexidepth: { layers: [0], addonFile: 'model.safetensors' } })).toThrow(/addonFile/);
    expect(() => write({ flexidepth: { layers: [0], addonFile: 'sub/x.safetensors' } })).toThrow(/addonFile/);
    expect(() => write({ flexidepth: { layers: [0], routerGain: 0 } })).toThrow(/routerGain/);
    expect(() => write({ skiplayer: { mode: 'token' as 'layer' } })).toThrow(/mode/);
    expect(() => write({ skiplayer: { mode: 'layer', layers: [-1] } })).toThrow(/out of range/);
  });
});

// ---------------------------------------------------------------------------------------------
// D3 depth schedule
// ---------------------------------------------------------------------------------------------

describe('d3 depth schedule', () => {
  test('examples', () => {
    expect(d3LayerSet(16, 1, 10 / 16)).toEqual([0, 1, 2, 3, 4, 11, 12, 13, 14, 15]);
    expect(d3Depth(12, 0, 0.5)).toBe(12);
    expect(d3LayerSet(12, 0, 0.5)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(d3LayerSet(12, 1, 0.5)).toEqual([0, 1, 2, 9, 10, 11]);
    expect(d3LayerSet(12, 2, 0.5)).toEqual([0, 1, 11]);
    expect(d3LayerSet(12, 3, 0.5)).toEqual([0, 11]);
    expect(d3LayerSet(12, 30, 0.5)).toEqual([0, 11]);
    // start delays the decay
    expect(d3Depth(12, 1, 0.5, 2)).toBe(12);
    expect(d3Depth(12, 2, 0.5, 2)).toBe(12);
    expect(d3Depth(12, 3, 0.5, 2)).toBe(6);
    expect(d3Depth(12, 4, 0.5, 2)).toBe(3);
    // minLayers floor (never below 2), never above L
    expect(d3Depth(12, 3, 0.5, 0, 5)).toBe(5);
    expect(d3LayerSet(12, 3, 0.5, 0, 5)).toEqual([0, 1, 2, 10, 11]);
    expect(d3Depth(12, 3, 0.5, 0, 0)).toBe(2);
    expect(d3Depth(4, 3, 0.5, 0, 9)).toBe(4);
    expect(d3Depth(12, 5, 1)).toBe(12);
    // nested: a later token keeps a subset of an earlier token's layers
    for (let i = 1; i < 10; i++) {
      const a = new Set(d3LayerSet(32, i, 0.8));
      for (const l of d3LayerSet(32, i + 1, 0.8)) expect(a.has(l)).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Routed reference
// ---------------------------------------------------------------------------------------------

describe('referenceRouted', () => {
  const tokens = randomTokens(16, 1);

  test("'none' equals referenceLogits exactly (router tensors present or not)", () => {
    for (const options of [
      PLAIN6,
      FD_OPTS,
      FD_ADDON_OPTS,
      { layers: 2, arch: 'qwen2', skiplayer: { mode: 'module' } },
    ] as TinyModelOptions[]) {
      const { info, ref } = model(options);
      const r = referenceRouted(ref, tokens, { type: 'none' });
      expectSameLogits(r.logits, referenceLogits(loadReference(info.dir), tokens));
      expect(r.executed.flat().every((e) => e === 1)).toBe(true);
      expect(r.weights.flat().every((w) => Number.isNaN(w))).toBe(true);
    }
    // and the mistral sliding window
    const { info, ref } = model({ arch: 'mistral', slidingWindow: 4, layers: 2 });
    expectSameLogits(
      referenceRouted(ref, tokens, { type: 'none' }).logits,
      referenceLogits(loadReference(info.dir), tokens),
    );
  });

  test('static: skipping every layer leaves embedding -> final norm -> lm_head', () => {
    const { ref } = model(PLAIN6);
    const all = [0, 1, 2, 3, 4, 5];
    const r = referenceRouted(ref, tokens, { type: 'static', skipLayers: all });
    const c = ref.config;
    const emb = ref.tensors.get('model.embed_tokens.weight')!.data;
    const norm = ref.tensors.get('model.norm.weight')!.data;
    const head = ref.tensors.get('lm_head.weight')!.data;
    const direct = tokens.map((t) =>
      linear(
        head,
        null,
        rmsNorm(emb.slice(t * c.hidden, (t + 1) * c.hidden), norm, c.rmsNormEps),
        c.vocabSize,
        c.hidden,
      ),
    );
    expectSameLogits(r.logits, direct);
    expect(r.executed.flat().every((e) => e === 0)).toBe(true);
    // skipping both modules of every layer is the same thing
    const both = referenceRouted(ref, tokens, { type: 'static', skipAttention: all, skipMlp: all });
    expectSameLogits(both.logits, direct);
  });

  test('static: single-module skips mark the layer not executed and change the logits', () => {
    const { ref } = model(PLAIN6);
    const none = referenceRouted(ref, tokens, { type: 'none' });
    for (const policy of [
      { type: 'static', skipLayers: [2] },
      { type: 'static', skipAttention: [2] },
      { type: 'static', skipMlp: [2] },
    ] as RefPolicy[]) {
      const r = referenceRouted(ref, tokens, policy);
      for (const row of r.executed) expect(row).toEqual([1, 1, 0, 1, 1, 1]);
      expect(maxAbsDiff(r.logits, none.logits)).toBeGreaterThan(0.1);
    }
    const a = referenceRouted(ref, tokens, { type: 'static', skipAttention: [2] });
    const m = referenceRouted(ref, tokens, { type: 'static', skipMlp: [2] });
    expect(maxAbsDiff(a.logits, m.logits)).toBeGreaterThan(0.1);
    expect(() => referenceRouted(ref, tokens, { type: 'static', skipLayers: [6] })).toThrow(/out of range/);
  });

  test('flexidepth: decisions split both ways, few weights near the threshold, MLP scaled by w', () => {
    const { ref } = model(FD_OPTS);
    const r = referenceRouted(ref, tokens, { type: 'flexidepth' });
    let run = 0;
    let near = 0;
    let n = 0;
    let logit2 = 0;
    for (let p = 0; p < tokens.length; p++) {
      for (let l = 0; l < 6; l++) {
        const w = r.weights[p]![l]!;
        if (l < 2) {
          expect(Number.isNaN(w)).toBe(true);
          expect(r.executed[p]![l]).toBe(1);
          continue;
        }
        expect(w).toBeGreaterThan(0);
        expect(w).toBeLessThan(1);
        expect(r.executed[p]![l]).toBe(w > 0.5 ? 1 : 0);
        n++;
        if (w > 0.5) run++;
        if (Math.abs(w - 0.5) < 0.02) near++;
        logit2 += Math.log(w / (1 - w)) ** 2;
      }
    }
    const runFraction = run / n;
    const logitRms = Math.sqrt(logit2 / n);
    console.log(
      `flexidepth: run fraction ${runFraction.toFixed(3)}, near 0.5: ${near}/${n}, logit rms ${logitRms.toFixed(2)}`,
    );
    expect(runFraction).toBeGreaterThan(0.25);
    expect(runFraction).toBeLessThan(0.75);
    expect(near / n).toBeLessThan(0.05);
    expect(logitRms).toBeGreaterThan(1.5);
    expect(logitRms).toBeLessThan(6);
    // every routed layer has both decisions somewhere
    for (let l = 2; l < 6; l++) expect(new Set(r.executed.map((row) => row[l])).size).toBe(2);

    const none = referenceRouted(ref, tokens, { type: 'none' });
    expect(maxAbsDiff(r.logits, none.logits)).toBeGreaterThan(0.1);
    // threshold 0: w > 0 always, every layer runs, but the MLP is scaled by w, so not plain
    const all = referenceRouted(ref, tokens, { type: 'flexidepth', threshold: 0 });
    expect(all.executed.flat().every((e) => e === 1)).toBe(true);
    expect(maxAbsDiff(all.logits, none.logits)).toBeGreaterThan(0.1);
    // threshold 1: no routed layer ever runs
    const skip = referenceRouted(ref, tokens, { type: 'flexidepth', threshold: 1 });
    for (const row of skip.executed) expect(row).toEqual([1, 1, 0, 0, 0, 0]);
    // Layer-2 weights do not depend on the threshold (layers 0-1 are plain in all runs).
    for (let p = 0; p < tokens.length; p++) {
      expect(skip.weights[p]![2]).toBe(r.weights[p]![2]);
      expect(all.weights[p]![2]).toBe(r.weights[p]![2]);
    }
  });

  test('flexidepth: own checkpoint and add-on give identical results; prefixes are consistent', () => {
    const own = model(FD_OPTS).ref;
    const addon = model(FD_ADDON_OPTS).ref;
    const a = referenceRouted(own, tokens, { type: 'flexidepth' });
    const b = referenceRouted(addon, tokens, { type: 'flexidepth' });
    expectSameLogits(a.logits, b.logits);
    expect(a.executed).toEqual(b.executed);
    expect(a.weights).toEqual(b.weights);
    expectPrefixConsistent(own, tokens, { type: 'flexidepth' }, a);
    // a base model without the add-on has no routed layers: flexidepth = none
    const base = loadRoutedReference(model(FD_ADDON_OPTS).info.dir);
    expectSameLogits(
      referenceRouted(base, tokens, { type: 'flexidepth' }).logits,
      referenceRouted(base, tokens, { type: 'none' }).logits,
    );
  });

  test.each(['layer', 'module'] as const)(
    'skiplayer %s: decisions split both ways; prefixes are consistent',
    (mode) => {
      const { ref } = model({ layers: 6, skiplayer: { mode } });
      const r = referenceRouted(ref, tokens, { type: 'skiplayer' });
      const fraction = r.executed.flat().reduce((s, e) => s + e, 0) / (tokens.length * 6);
      console.log(`skiplayer ${mode}: executed fraction ${fraction.toFixed(3)}`);
      if (mode === 'layer') {
        expect(fraction).toBeGreaterThan(0.25);
        expect(fraction).toBeLessThan(0.75);
      } else {
        expect(fraction).toBeGreaterThan(0.08);
        expect(fraction).toBeLessThan(0.6);
      }
      expect(r.weights.flat().every((w) => Number.isNaN(w))).toBe(true);
      const none = referenceRouted(ref, tokens, { type: 'none' });
      expect(maxAbsDiff(r.logits, none.logits)).toBeGreaterThan(0.1);
      expectPrefixConsistent(ref, tokens, { type: 'skiplayer' }, r);
    },
  );

  test('skiplayer: ties skip; swapping the router rows flips the first layer', () => {
    const { ref } = model({ layers: 6, skiplayer: { mode: 'module' } });
    // All-zero routers: every logit pair ties -> every module skips -> embedding -> norm -> head.
    const tensors = new Map(ref.tensors);
    for (const name of ref.tensors.keys())
      if (name.endsWith('skip_router.weight')) tensors.set(name, { shape: [2, 64], data: new Float64Array(128) });
    const zero = referenceRouted({ ...ref, tensors }, tokens, { type: 'skiplayer' });
    expectSameLogits(
      zero.logits,
      referenceRouted(ref, tokens, { type: 'static', skipLayers: [0, 1, 2, 3, 4, 5] }).logits,
    );
    expect(zero.executed.flat().every((e) => e === 0)).toBe(true);

    const layer = model({ layers: 6, skiplayer: { mode: 'layer' } }).ref;
    const swapped = new Map(layer.tensors);
    for (const [name, t] of layer.tensors) {
      if (!name.endsWith('skip_router.weight')) continue;
      const w = new Float64Array(128);
      w.set(t.data.subarray(64, 128), 0);
      w.set(t.data.subarray(0, 64), 64);
      swapped.set(name, { shape: [2, 64], data: w });
    }
    const r = referenceRouted(layer, tokens, { type: 'skiplayer' });
    const f = referenceRouted({ ...layer, tensors: swapped }, tokens, { type: 'skiplayer' });
    for (let p = 0; p < tokens.length; p++) expect(f.executed[p]![0]).toBe(1 - r.executed[p]![0]!);
  });

  test('d3: executed rows follow d3LayerSet; alpha 1 or an all-prompt sequence is plain', () => {
    const { ref } = model(PLAIN6);
    const P = 5;
    const policy: RefPolicy = { type: 'd3', alpha: 0.5, promptLength: P };
    const r = referenceRouted(ref, tokens, policy);
    for (let p = 0; p < tokens.length; p++) {
      const kept = p < P ? [0, 1, 2, 3, 4, 5] : d3LayerSet(6, p - P + 1, 0.5);
      expect(r.executed[p]).toEqual([0, 1, 2, 3, 4, 5].map((l) => (kept.includes(l) ? 1 : 0)));
    }
    expect(r.executed[P]).toEqual([1, 1, 0, 0, 0, 1]); // genIndex 1: N = 3 -> [0, 1, 5]
    expect(r.executed[P + 1]).toEqual([1, 0, 0, 0, 0, 1]); // genIndex 2: N = max(2, 1) = 2
    const none = referenceRouted(ref, tokens, { type: 'none' });
    // prompt positions are untouched (causal), generated ones differ
    expectSameLogits(r.logits.slice(0, P), none.logits.slice(0, P));
    expect(maxAbsDiff(r.logits.slice(P), none.logits.slice(P))).toBeGreaterThan(0.1);
    expectPrefixConsistent(ref, tokens, policy, r);
    expectSameLogits(referenceRouted(ref, tokens, { type: 'd3', alpha: 1, promptLength: P }).logits, none.logits);
    expectSameLogits(
      referenceRouted(ref, tokens, { type: 'd3', alpha: 0.5, promptLength: tokens.length }).logits,
      none.logits,
    );
    // start delays the decay: with start 3, genIndex 1..3 run at full depth
    const late = referenceRouted(ref, tokens, { type: 'd3', alpha: 0.5, start: 3, promptLength: P });
    expectSameLogits(late.logits.slice(0, P + 3), none.logits.slice(0, P + 3));
    expect(late.executed[P + 3]).toEqual([1, 1, 0, 0, 0, 1]); // genIndex 4: N = 3
    expect(() => referenceRouted(ref, tokens, { type: 'd3', alpha: 0.5, promptLength: 0 })).toThrow(/promptLength/);
  });
});
