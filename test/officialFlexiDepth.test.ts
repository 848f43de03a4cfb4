/**
 * The official FlexiDepth checkpoint's layout (xuan-luo/FlexiDepth-Llama-3-8B-Instruct:
 * DDLlamaForCausalLM, a model_type of its own, auto_map, routing_layers, routers in the shards):
 * it loads as a Llama model with FlexiDepth routers in its own weights, runs FlexiDepth when a call
 * names no policy, and matches the float64 dense-then-mask reference; `none` is the plain base
 * model; config.json and the tensors must agree; unknown router settings are refused by name.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  ModelFormatError,
  UnsupportedModelError,
  defaultModelSetup,
  loadModel,
  readModelConfig,
  type Model,
  type Policy,
} from '../src';
import { writeTinyModel, type TinyModelOptions } from '../src/testing';
import { argmax, loadReference, referenceLogits } from './reference/reference';
import { loadRoutedReference, referenceRouted, type RefPolicy } from './reference/routed';
import { cleanup, openedFiles, randomTokens, relError, tmpDir } from './helpers';

afterAll(cleanup);
const TOL = 1e-4;
const ROUTED = [2, 3, 4, 5];
const OFFICIAL: TinyModelOptions = { layers: 6, seed: 11, flexidepth: { layers: ROUTED, official: true } };
const PLAIN: TinyModelOptions = { layers: 6, seed: 11 };

function write(options: TinyModelOptions): string {
  const dir = path.join(tmpDir(), 'FlexiDepth-tiny');
  writeTinyModel(dir, options);
  return dir;
}

function patchConfig(dir: string, patch: Record<string, unknown>): void {
  const file = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete cfg[k];
    else cfg[k] = v;
  }
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
}

/** Decisions, router weights and logits of `policy` (undefined: the model's default) against the reference's `ref`. */
async function expectMatchesReference(
  model: Model,
  dir: string,
  tokens: number[],
  policy: Policy | undefined,
  ref: RefPolicy,
) {
  const want = referenceRouted(loadRoutedReference(dir), tokens, ref);
  const got = await model.evaluate(tokens, policy ? { policy } : {});
  for (let p = 0; p < tokens.length; p++) {
    expect(Array.from(got.executed[p])).toEqual(want.executed[p]);
    expect(relError(got.logits[p], want.logits[p])).toBeLessThan(TOL);
    want.weights[p].forEach((w, l) => {
      if (Number.isNaN(w)) expect(got.routerWeights[p][l]).toBeNaN();
      else expect(Math.abs(got.routerWeights[p][l] - w)).toBeLessThan(1e-5);
    });
  }
  return want;
}

describe('writeTinyModel official FlexiDepth layout', () => {
  test('config.json as the official checkpoint writes it; the tensors are those of the plain-Llama variant', () => {
    const dir = write(OFFICIAL);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.architectures).toEqual(['DDLlamaForCausalLM']);
    expect(cfg.model_type).toBe('ddllama');
    expect(cfg.auto_map).toEqual({
      AutoConfig: 'configuration_ddllama.DDLlamaConfig',
      AutoModel: 'modeling_ddllama.DDLlamaModel',
      AutoModelForCausalLM: 'modeling_ddllama.DDLlamaForCausalLM',
    });
    expect(cfg.routing_layers).toEqual(ROUTED);
    const llama = loadReference(write({ ...PLAIN, flexidepth: { layers: ROUTED } }));
    const official = loadReference(dir);
    expect([...official.tensors.keys()].sort()).toEqual([...llama.tensors.keys()].sort());
    for (const [name, t] of llama.tensors) expect(official.tensors.get(name)!.data).toEqual(t.data);
  });

  test('sharded: the index lists the router tensors in their shards', () => {
    const dir = write({ ...OFFICIAL, shards: 3 });
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as {
      weight_map: Record<string, string>;
    };
    const shards = new Set(Object.values(index.weight_map));
    expect(shards.size).toBe(3);
    for (const l of ROUTED)
      expect(index.weight_map[`model.layers.${l}.router.router_enc.weight`]).toMatch(
        /^model-0000\d-of-00003\.safetensors$/,
      );
    expect(loadRoutedReference(dir).flexidepthLayers).toEqual(ROUTED);
  });

  test('only for a Llama with routers in its own weights', () => {
    expect(() => write({ ...OFFICIAL, arch: 'qwen2' })).toThrow(/official/);
    expect(() =>
      write({ layers: 6, flexidepth: { layers: ROUTED, official: true, addonFile: 'fd.safetensors' } }),
    ).toThrow(/official/);
  });
});

describe.each([
  ['one file', OFFICIAL],
  ['three shards with an index', { ...OFFICIAL, shards: 3 }],
])('the official layout (%s)', (_name, options) => {
  let dir: string;
  let model: Model;
  beforeAll(async () => {
    dir = write(options);
    model = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => model?.dispose());

  test('loads as a Llama with FlexiDepth routers in its own weights; the default policy is FlexiDepth, with the reason', () => {
    const i = model.info;
    expect(i.architecture).toBe('DDLlamaForCausalLM');
    expect(model.config.modelType).toBe('ddllama');
    expect(model.config.routingLayers).toEqual(ROUTED);
    expect(i.flexiDepthLayers).toEqual(ROUTED);
    expect(i.checkpointFlexiDepthLayers).toEqual(ROUTED);
    expect(i.defaultPolicy.policy).toEqual({ type: 'flexidepth' });
    expect(i.defaultPolicy.reason).toMatch(/own weights \(layers \[2, 3, 4, 5\]\)/);
    expect(model.defaultPolicy).toEqual(i.defaultPolicy);
  });

  test('with no policy, evaluate is FlexiDepth: decisions, router weights and logits equal the float64 reference', async () => {
    const want = await expectMatchesReference(model, dir, randomTokens(24, 0, 300, 5), undefined, {
      type: 'flexidepth',
    });
    const routed = want.executed.flatMap((row) => row.slice(2));
    // The decisions split both ways, so this is not the dense model in disguise.
    expect(routed.some((x) => x === 0)).toBe(true);
    expect(routed.some((x) => x === 1)).toBe(true);
  });

  test('with no policy, generate and stream route too, prompt included', async () => {
    const prompt = randomTokens(6, 0, 256, 8);
    const r = await model.generate({ tokens: prompt }, { maxTokens: 6, stopOnEos: false });
    const want = referenceRouted(loadRoutedReference(dir), [...prompt, ...r.tokens], { type: 'flexidepth' });
    r.tokens.forEach((t, i) => expect(t).toBe(argmax(want.logits[prompt.length - 1 + i])));
    const rows = want.executed.slice(prompt.length - 1, prompt.length - 1 + r.tokens.length);
    expect(r.depth.layerCounts).toEqual(rows.reduce((acc, row) => acc.map((a, l) => a + row[l]), new Array(6).fill(0)));
    expect(r.depth.meanLayers).toBeLessThan(6);
    const chunks = [];
    const s = model.stream({ tokens: prompt }, { maxTokens: 6, stopOnEos: false });
    for await (const c of s) chunks.push(c);
    expect(chunks.map((c) => c.token)).toEqual(r.tokens);
    expect(chunks.map((c) => Array.from(c.executed))).toEqual(rows);
  });

  test('every other policy still works: none, another threshold, static, D3', async () => {
    const tokens = randomTokens(16, 0, 300, 6);
    await expectMatchesReference(model, dir, tokens, { type: 'none' }, { type: 'none' });
    await expectMatchesReference(
      model,
      dir,
      tokens,
      { type: 'flexidepth', threshold: 0.3 },
      { type: 'flexidepth', threshold: 0.3 },
    );
    await expectMatchesReference(
      model,
      dir,
      tokens,
      { type: 'static', skipLayers: [1, 4] },
      { type: 'static', skipLayers: [1, 4] },
    );
    const d3 = await model.generate(
      { tokens: tokens.slice(0, 4) },
      { maxTokens: 5, stopOnEos: false, policy: { type: 'd3', alpha: 0.5 } },
    );
    expect(d3.depth.meanLayers).toBeLessThan(6);
  });
});

test("policy 'none' equals the plain base model (the same weights written as LlamaForCausalLM without routers)", async () => {
  const officialDir = write(OFFICIAL);
  const plainDir = write(PLAIN);
  const official = await loadModel(officialDir, { kvCacheType: 'f32', threads: 2 });
  const plain = await loadModel(plainDir, { kvCacheType: 'f32', threads: 2 });
  try {
    expect(plain.info.architecture).toBe('LlamaForCausalLM');
    expect(plain.defaultPolicy.policy).toEqual({ type: 'none' });
    const tokens = randomTokens(20, 0, 300, 3);
    const a = await official.evaluate(tokens, { policy: { type: 'none' } });
    const b = await plain.evaluate(tokens);
    a.logits.forEach((row, i) => expect(Array.from(row)).toEqual(Array.from(b.logits[i])));
    expect(a.executed.every((row) => row.every((x) => x === 1))).toBe(true);
    const want = referenceLogits(loadReference(plainDir), tokens);
    b.logits.forEach((row, i) => expect(relError(row, want[i])).toBeLessThan(TOL));
    // And the routed default differs from it.
    const routed = await official.evaluate(tokens);
    expect(routed.logits.some((row, i) => relError(row, b.logits[i]) > 1e-3)).toBe(true);
  } finally {
    await official.dispose();
    await plain.dispose();
  }
});

describe('config.json and the router tensors must agree', () => {
  test('routing_layers listing a layer without routers is refused, naming routing_layers, the layer and the file; nothing stays open', async () => {
    const dir = write(OFFICIAL);
    patchConfig(dir, { routing_layers: [1, 2, 3, 4, 5] });
    const err = await loadModel(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelFormatError);
    expect((err as ModelFormatError).file).toBe(path.join(dir, 'config.json'));
    expect((err as Error).message).toMatch(/'routing_layers' lists layer 1, which has no FlexiDepth router weights/);
    expect(openedFiles().filter((f) => f.startsWith(dir))).toEqual([]);
  });

  test('routers on a layer that routing_layers does not list are refused', async () => {
    const dir = write({ ...OFFICIAL, shards: 2 });
    patchConfig(dir, { routing_layers: [2, 3, 4] });
    await expect(loadModel(dir)).rejects.toThrow(
      /layer 5 has FlexiDepth router weights but 'routing_layers' does not list it/,
    );
  });

  test('routing_layers missing, out of range or repeated is refused by readModelConfig', () => {
    const dir = write(OFFICIAL);
    patchConfig(dir, { routing_layers: undefined });
    expect(() => readModelConfig(dir)).toThrow(ModelFormatError);
    expect(() => readModelConfig(dir)).toThrow(/'routing_layers' is missing/);
    patchConfig(dir, { routing_layers: [2, 6] });
    expect(() => readModelConfig(dir)).toThrow(/'routing_layers' lists layer 6, but the model has 6 layers/);
    patchConfig(dir, { routing_layers: [2, 3, 3] });
    expect(() => readModelConfig(dir)).toThrow(/'routing_layers' lists layer 3 twice/);
    patchConfig(dir, { routing_layers: 'all' });
    expect(() => readModelConfig(dir)).toThrow(/'routing_layers' must be a list of layer numbers/);
  });

  test('an empty routing_layers with no router tensors is the plain model, default policy none', async () => {
    const dir = write(PLAIN);
    patchConfig(dir, { architectures: ['DDLlamaForCausalLM'], model_type: 'ddllama', routing_layers: [] });
    const model = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
    expect(model.info.flexiDepthLayers).toEqual([]);
    expect(model.defaultPolicy.policy).toEqual({ type: 'none' });
    await model.dispose();
  });

  test('reduction factors: accepted when the tensors agree, refused by name when they do not', async () => {
    // hidden 64, intermediate 128, reduction 16: router 4 wide, adapter 8 wide.
    const dir = write(OFFICIAL);
    patchConfig(dir, { router_reduction_factor: 16, proj_reduction_factor: 16 });
    const ok = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
    expect(ok.info.flexiDepthLayers).toEqual(ROUTED);
    await ok.dispose();
    patchConfig(dir, { router_reduction_factor: 8 });
    await expect(loadModel(dir)).rejects.toThrow(
      /'router_reduction_factor' is 8, so layer 2 would be 64 \/ 8 = 8 wide, but model\.layers\.2\.router\.router_enc\.weight has 4 rows/,
    );
    patchConfig(dir, { router_reduction_factor: 16, proj_reduction_factor: 4 });
    await expect(loadModel(dir)).rejects.toThrow(
      /'proj_reduction_factor' is 4, so layer 2 would be 128 \/ 4 = 32 wide/,
    );
    patchConfig(dir, { proj_reduction_factor: 0 });
    expect(() => readModelConfig(dir)).toThrow(/'proj_reduction_factor' must be a positive integer/);
  });
});

describe('other config.json fields of the official checkpoint', () => {
  test('fields that change nothing are accepted: auto_map, model_type, training penalties, init, output flags, threshold 0.5', async () => {
    const dir = write(OFFICIAL);
    patchConfig(dir, {
      model_type: 'flexidepth-llama',
      auto_map: { AutoConfig: 'elsewhere.Config' },
      layer_skip_penalty: 1e-4,
      router_head_bias_init: 0,
      output_router_weights: false,
      router_threshold: 0.5,
      _name_or_path: 'xuan-luo/FlexiDepth-Llama-3-8B-Instruct',
    });
    const model = await loadModel(dir, { kvCacheType: 'f32', threads: 1 });
    expect(model.defaultPolicy.policy).toEqual({ type: 'flexidepth' });
    await model.dispose();
  });

  test.each([
    ['router_temperature', 2, /'router_temperature' is a router setting depthgate does not know/],
    ['skip_attention', true, /'skip_attention' is a router setting depthgate does not know/],
    ['adapter_activation', 'gelu', /'adapter_activation' is a router setting depthgate does not know/],
    ['router_threshold', 0.7, /'router_threshold' is 0.7, but the official FlexiDepth code decides at 0.5/],
  ])('%s = %j changes the computation (or may): refused with the key', (key, value, message) => {
    const dir = write(OFFICIAL);
    patchConfig(dir, { [key]: value });
    expect(() => readModelConfig(dir)).toThrow(UnsupportedModelError);
    expect(() => readModelConfig(dir)).toThrow(message);
  });

  test('the standard Llama refusals still apply', () => {
    const dir = write(OFFICIAL);
    patchConfig(dir, { hidden_act: 'gelu' });
    expect(() => readModelConfig(dir)).toThrow(/hidden_act 'gelu' is not supported/);
  });
});

describe('one default-policy rule for every model', () => {
  test('a LlamaForCausalLM checkpoint with routers in its shards defaults to FlexiDepth; routers from an add-on do not', async () => {
    const own = await loadModel(write({ ...PLAIN, flexidepth: { layers: ROUTED } }), {
      kvCacheType: 'f32',
      threads: 1,
    });
    expect(own.defaultPolicy.policy).toEqual({ type: 'flexidepth' });
    await own.dispose();
    const dir = write({ ...PLAIN, flexidepth: { layers: ROUTED, addonFile: 'fd.safetensors' } });
    const withAddon = await loadModel(dir, {
      kvCacheType: 'f32',
      threads: 1,
      addons: [path.join(dir, 'fd.safetensors')],
    });
    expect(withAddon.info.flexiDepthLayers).toEqual(ROUTED);
    expect(withAddon.info.checkpointFlexiDepthLayers).toEqual([]);
    expect(withAddon.defaultPolicy.policy).toEqual({ type: 'none' });
    expect(withAddon.defaultPolicy.reason).toMatch(/add-on files/);
    const r = await withAddon.evaluate([1, 2, 3]);
    expect(r.executed.every((row) => row.every((x) => x === 1))).toBe(true);
    await withAddon.dispose();
  });

  test('the embedded default model defaults to FlexiDepth with its default add-on only', async () => {
    const d = defaultModelSetup();
    const routed = await loadModel(d.dir, { kvCacheType: 'f32', threads: 1, addons: d.addons });
    expect(routed.defaultPolicy.policy).toEqual(d.policy);
    expect(routed.defaultPolicy.reason).toMatch(/embedded default model/);
    const r = await routed.evaluate(routed.tokenize('And God said unto Moses'));
    expect(r.executed.some((row) => row.some((x) => x === 0))).toBe(true);
    await routed.dispose();
    const bare = await loadModel(d.dir, { kvCacheType: 'f32', threads: 1 });
    expect(bare.defaultPolicy.policy).toEqual({ type: 'none' });
    await bare.dispose();
    const other = await loadModel(d.dir, {
      kvCacheType: 'f32',
      threads: 1,
      addons: [path.join(d.dir, 'flexidepth-p1e-2.safetensors')],
    });
    expect(other.defaultPolicy.policy).toEqual({ type: 'none' });
    await other.dispose();
  });
});

describe('CLI', () => {
  const cli = path.join(__dirname, '..', 'dist', 'cli.js');
  const run = (args: string[]) => {
    const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60000 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  test('info shows the routed layers and that the default policy is FlexiDepth because of them', () => {
    const dir = write({ ...OFFICIAL, shards: 2 });
    const r = run(['info', dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/architecture: DDLlamaForCausalLM \(6 layers/);
    expect(r.stdout).toMatch(/routers: FlexiDepth on layers \[2, 3, 4, 5\] \(in the checkpoint\)/);
    expect(r.stdout).toMatch(
      /default policy: flexidepth, because the checkpoint carries FlexiDepth routers in its own weights \(layers \[2, 3, 4, 5\]\)/,
    );
    const plain = run(['info', write(PLAIN)]);
    expect(plain.stdout).toMatch(/default policy: none, because the checkpoint carries no FlexiDepth routers/);
  });

  test('generate routes without --policy; --policy none runs every layer', () => {
    const dir = write(OFFICIAL);
    const routed = run(['generate', dir, '--prompt', 'Once upon a time', '--max-tokens', '6']);
    expect(routed.code).toBe(0);
    const mean = Number(/([\d.]+) of 6 layers per token/.exec(routed.stderr)![1]);
    expect(mean).toBeLessThan(6);
    const full = run(['generate', dir, '--prompt', 'Once upon a time', '--max-tokens', '6', '--policy', 'none']);
    expect(full.stderr).toMatch(/6\.00 of 6 layers per token/);
  });

  test('an unknown router setting is a clear error, not a crash', () => {
    const dir = write(OFFICIAL);
    patchConfig(dir, { router_temperature: 2 });
    const r = run(['info', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/config\.json: 'router_temperature' is a router setting .* \[ERR_DEPTHGATE_UNSUPPORTED\]/);
  });
});
