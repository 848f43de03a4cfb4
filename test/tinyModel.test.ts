import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  writeTinyModel,
  type TinyArch,
  type TinyDtype,
  type TinyModelInfo,
  type TinyModelOptions,
} from '../src/testing';
import {
  argmax,
  loadReference,
  referenceGreedy,
  referenceInvFreq,
  referenceLogits,
  type ReferenceModel,
} from './reference/reference';

// Both packages are ESM-typed; at run time require() picks their CommonJS builds.
type TokenizersModule = typeof import('@huggingface/tokenizers', { with: { 'resolution-mode': 'import' } });
type JinjaModule = typeof import('@huggingface/jinja', { with: { 'resolution-mode': 'import' } });
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Tokenizer } = require('@huggingface/tokenizers') as TokenizersModule;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Template } = require('@huggingface/jinja') as JinjaModule;
type TokenizerInstance = InstanceType<typeof Tokenizer>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

let root = '';
let counter = 0;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'depthgate-tiny-'));
});

afterAll(() => {
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

function write(options: TinyModelOptions = {}, label = 'model'): TinyModelInfo {
  return writeTinyModel(path.join(root, `${label}-${counter++}`), options);
}

const cache = new Map<string, { info: TinyModelInfo; ref: ReferenceModel }>();
/** Writes (once per distinct options) and loads a model into the reference. */
function model(options: TinyModelOptions = {}): { info: TinyModelInfo; ref: ReferenceModel } {
  const key = JSON.stringify(options);
  let m = cache.get(key);
  if (!m) {
    const info = write(options, 'ref');
    m = { info, ref: loadReference(info.dir) };
    cache.set(key, m);
  }
  return m;
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
const ST_DTYPE: Record<TinyDtype, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

/** Parses and strictly validates a safetensors file; returns the entries and the data section. */
function checkSafetensors(file: string): { entries: Map<string, HeaderEntry>; data: Buffer; metadata: unknown } {
  const bytes = fs.readFileSync(file);
  expect(bytes.length).toBeGreaterThanOrEqual(8);
  const n = bytes.readBigUInt64LE(0);
  expect(n % 8n).toBe(0n);
  expect(8n + n).toBeLessThanOrEqual(BigInt(bytes.length));
  const headerText = bytes.subarray(8, 8 + Number(n)).toString('utf8');
  expect(headerText.startsWith('{')).toBe(true);
  expect(/^[^]*\} *$/.test(headerText)).toBe(true); // only spaces after the JSON object
  const header = JSON.parse(headerText) as Record<string, unknown>;
  const data = bytes.subarray(8 + Number(n));
  const entries = new Map<string, HeaderEntry>();
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = v as HeaderEntry;
    expect(Object.keys(e).sort()).toEqual(['data_offsets', 'dtype', 'shape']);
    expect(DTYPE_BYTES[e.dtype]).toBeDefined();
    expect(e.shape.every((d) => Number.isInteger(d) && d > 0)).toBe(true);
    const [b, end] = e.data_offsets;
    expect(end - b).toBe(e.shape.reduce((p, d) => p * d, 1) * DTYPE_BYTES[e.dtype]!);
    entries.set(name, e);
  }
  // Offsets: sorted, contiguous from 0, non-overlapping, covering the data section exactly.
  const spans = [...entries.values()].map((e) => e.data_offsets).sort((x, y) => x[0] - y[0]);
  let pos = 0;
  for (const [b, e] of spans) {
    expect(b).toBe(pos);
    pos = e;
  }
  expect(pos).toBe(data.length);
  return { entries, data, metadata: header['__metadata__'] };
}

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
}

/** All safetensors entries of a model directory (single file or sharded), with their file. */
function allEntries(dir: string): Map<string, HeaderEntry & { file: string; data: Buffer }> {
  const out = new Map<string, HeaderEntry & { file: string; data: Buffer }>();
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .sort();
  for (const f of files) {
    const { entries, data, metadata } = checkSafetensors(path.join(dir, f));
    expect(metadata).toEqual({ format: 'pt' });
    for (const [name, e] of entries) {
      expect(out.has(name)).toBe(false);
      out.set(name, { ...e, file: f, data });
    }
  }
  return out;
}

function expectedTensors(
  o: Required<
    Pick<
      TinyModelOptions,
      'arch' | 'layers' | 'hidden' | 'heads' | 'kvHeads' | 'headDim' | 'intermediate' | 'vocabSize' | 'tied' | 'bias'
    >
  >,
): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const d = o.hidden;
  const q = o.heads * o.headDim;
  const kv = o.kvHeads * o.headDim;
  const qkvBias = o.arch === 'qwen2' || (o.arch === 'llama' && o.bias);
  const oBias = o.arch === 'llama' && o.bias;
  m.set('model.embed_tokens.weight', [o.vocabSize, d]);
  for (let i = 0; i < o.layers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.input_layernorm.weight`, [d]);
    m.set(`${p}.post_attention_layernorm.weight`, [d]);
    m.set(`${p}.self_attn.q_proj.weight`, [q, d]);
    m.set(`${p}.self_attn.k_proj.weight`, [kv, d]);
    m.set(`${p}.self_attn.v_proj.weight`, [kv, d]);
    m.set(`${p}.self_attn.o_proj.weight`, [d, q]);
    if (qkvBias) {
      m.set(`${p}.self_attn.q_proj.bias`, [q]);
      m.set(`${p}.self_attn.k_proj.bias`, [kv]);
      m.set(`${p}.self_attn.v_proj.bias`, [kv]);
    }
    if (oBias) m.set(`${p}.self_attn.o_proj.bias`, [d]);
    m.set(`${p}.mlp.gate_proj.weight`, [o.intermediate, d]);
    m.set(`${p}.mlp.up_proj.weight`, [o.intermediate, d]);
    m.set(`${p}.mlp.down_proj.weight`, [d, o.intermediate]);
  }
  m.set('model.norm.weight', [d]);
  if (!o.tied) m.set('lm_head.weight', [o.vocabSize, d]);
  return m;
}

function loadTokenizer(dir: string): TokenizerInstance {
  return new Tokenizer(readJson(path.join(dir, 'tokenizer.json')), readJson(path.join(dir, 'tokenizer_config.json')));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** A copy of a reference model with some tensors replaced (and optionally config changes). */
function withTensors(
  ref: ReferenceModel,
  edit: (name: string, data: Float64Array) => Float64Array | null,
): ReferenceModel {
  const tensors = new Map(ref.tensors);
  for (const [name, t] of ref.tensors) {
    const replaced = edit(name, t.data);
    if (replaced) tensors.set(name, { shape: t.shape, data: replaced });
  }
  return { ...ref, tensors };
}

const f16ToNumber = (h: number): number => {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return sign * f * 2 ** -24;
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
};
const bf16ToNumber = (h: number): number => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE((h << 16) >>> 0);
  return b.readFloatLE(0);
};

const ARCHS: TinyArch[] = ['llama', 'mistral', 'qwen2'];
const DTYPES: TinyDtype[] = ['f32', 'f16', 'bf16'];

// ---------------------------------------------------------------------------------------------
// Float encoders
// ---------------------------------------------------------------------------------------------

describe('float16 / bfloat16 encoders', () => {
  test('float16 special values', () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.5, 0x3800],
      [65504, 0x7bff],
      [65519, 0x7bff],
      [65520, 0x7c00], // halfway to 65536 rounds to even: infinity
      [1e6, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // halfway to the smallest subnormal: ties to even (0)
      [3 * 2 ** -25, 0x0002], // 1.5 ulp -> 2
      [2 ** -26, 0x0000],
      [1 + 2 ** -11, 0x3c00], // tie -> even
      [1 + 3 * 2 ** -11, 0x3c02], // tie -> even (up)
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
      [2 ** -14 - 2 ** -25, 0x0400], // rounds up from the largest subnormal into the smallest normal
    ];
    for (const [v, bits] of cases) expect([v, float32ToFloat16Bits(v)]).toEqual([v, bits]);
    const nan = float32ToFloat16Bits(NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
  });

  test('float16: every finite value round-trips and every midpoint rounds to even', () => {
    for (let h = 0; h < 0x7c00; h++) {
      for (const sign of [0, 0x8000]) {
        const v = f16ToNumber(h | sign);
        if (float32ToFloat16Bits(v) !== (h | sign)) throw new Error(`f16 ${h.toString(16)} does not round-trip`);
        if (h < 0x7bff) {
          const next = f16ToNumber((h + 1) | sign);
          const mid = (v + next) / 2; // exact in float32
          const even = (h & 1) === 0 ? h : h + 1;
          if (float32ToFloat16Bits(mid) !== (even | sign))
            throw new Error(`midpoint after ${h.toString(16)} misrounded`);
          const below = mid - (next - v) / 1024;
          const above = mid + (next - v) / 1024;
          if (float32ToFloat16Bits(below) !== (h | sign)) throw new Error(`below midpoint after ${h.toString(16)}`);
          if (float32ToFloat16Bits(above) !== ((h + 1) | sign))
            throw new Error(`above midpoint after ${h.toString(16)}`);
        }
      }
    }
  });

  test('bfloat16: every finite value round-trips and every midpoint rounds to even', () => {
    expect(float32ToBfloat16Bits(1)).toBe(0x3f80);
    expect(float32ToBfloat16Bits(-0)).toBe(0x8000);
    expect(float32ToBfloat16Bits(Infinity)).toBe(0x7f80);
    expect(float32ToBfloat16Bits(3.4028234663852886e38)).toBe(0x7f80); // max f32 rounds to inf
    const nan = float32ToBfloat16Bits(NaN);
    expect(nan & 0x7f80).toBe(0x7f80);
    expect(nan & 0x7f).not.toBe(0);
    for (let h = 0; h < 0x7f80; h++) {
      for (const sign of [0, 0x8000]) {
        const v = bf16ToNumber(h | sign);
        if (float32ToBfloat16Bits(v) !== (h | sign)) throw new Error(`bf16 ${h.toString(16)} does not round-trip`);
        if (h < 0x7f7f) {
          const next = bf16ToNumber((h + 1) | sign);
          const mid = (v + next) / 2;
          const even = (h & 1) === 0 ? h : h + 1;
          if (float32ToBfloat16Bits(mid) !== (even | sign)) throw new Error(`bf16 midpoint after ${h.toString(16)}`);
          if (float32ToBfloat16Bits(mid + (next - v) / 64) !== ((h + 1) | sign)) throw new Error(`bf16 above ${h}`);
          if (float32ToBfloat16Bits(mid - (next - v) / 64) !== (h | sign)) throw new Error(`bf16 below ${h}`);
        }
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

interface Variant {
  name: string;
  options: TinyModelOptions;
}

const VARIANTS: Variant[] = [];
for (const arch of ARCHS)
  for (const dtype of DTYPES) VARIANTS.push({ name: `${arch} ${dtype}`, options: { arch, dtype } });
VARIANTS.push(
  { name: 'llama bias tied', options: { arch: 'llama', bias: true, tied: true } },
  { name: 'llama headDim 32 MQA', options: { arch: 'llama', headDim: 32, kvHeads: 1, dtype: 'bf16' } },
  { name: 'llama MHA llama3 rope', options: { arch: 'llama', kvHeads: 4, ropeScaling: 'llama3', ropeTheta: 500000 } },
  { name: 'qwen2 linear rope tied f16', options: { arch: 'qwen2', ropeScaling: 'linear', tied: true, dtype: 'f16' } },
  { name: 'mistral window 4 eos list', options: { arch: 'mistral', slidingWindow: 4, eosList: true } },
  { name: 'llama 3 shards bf16', options: { arch: 'llama', shards: 3, dtype: 'bf16', layers: 3 } },
  { name: 'qwen2 2 shards', options: { arch: 'qwen2', shards: 2 } },
  { name: 'llama vocab 400 no bos', options: { arch: 'llama', vocabSize: 400, addBos: false, rmsNormEps: 1e-6 } },
  {
    name: 'llama odd sizes',
    options: { arch: 'llama', layers: 1, hidden: 48, heads: 6, kvHeads: 3, intermediate: 96, maxPositions: 64 },
  },
);

describe('writeTinyModel files', () => {
  test.each(VARIANTS)('$name: config, safetensors and index', ({ options }) => {
    const info = write(options, 'files');
    const arch = options.arch ?? 'llama';
    const dtype = options.dtype ?? 'f32';
    const hidden = options.hidden ?? 64;
    const heads = options.heads ?? 4;
    const o = {
      arch,
      layers: options.layers ?? 2,
      hidden,
      heads,
      kvHeads: options.kvHeads ?? 2,
      headDim: options.headDim ?? hidden / heads,
      intermediate: options.intermediate ?? 128,
      vocabSize: options.vocabSize ?? 320,
      tied: options.tied ?? false,
      bias: options.bias ?? false,
    };

    // config.json
    const cfg = readJson(path.join(info.dir, 'config.json'));
    expect(cfg).toEqual(info.config);
    const archName = { llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM' }[arch];
    expect(cfg['architectures']).toEqual([archName]);
    expect(cfg['model_type']).toBe(arch);
    expect(cfg['hidden_size']).toBe(o.hidden);
    expect(cfg['intermediate_size']).toBe(o.intermediate);
    expect(cfg['num_hidden_layers']).toBe(o.layers);
    expect(cfg['num_attention_heads']).toBe(o.heads);
    expect(cfg['num_key_value_heads']).toBe(o.kvHeads);
    expect(cfg['head_dim']).toBe(o.headDim);
    expect(cfg['vocab_size']).toBe(o.vocabSize);
    expect(cfg['max_position_embeddings']).toBe(options.maxPositions ?? 256);
    expect(cfg['rms_norm_eps']).toBe(options.rmsNormEps ?? 1e-5);
    expect(cfg['rope_theta']).toBe(options.ropeTheta ?? 10000);
    expect(cfg['tie_word_embeddings']).toBe(o.tied);
    expect(cfg['hidden_act']).toBe('silu');
    expect(cfg['torch_dtype']).toBe({ f32: 'float32', f16: 'float16', bf16: 'bfloat16' }[dtype]);
    if (arch === 'llama') expect(cfg['attention_bias']).toBe(o.bias);
    if (arch === 'mistral') expect(cfg['sliding_window']).toBe(options.slidingWindow ?? null);
    if (arch === 'qwen2') expect(cfg['use_sliding_window']).toBe(false);
    const scaling = options.ropeScaling ?? 'none';
    if (scaling === 'none') expect(cfg['rope_scaling'] ?? null).toBeNull();
    if (scaling === 'llama3') {
      expect(cfg['rope_scaling']).toEqual({
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      });
    }
    if (scaling === 'linear') expect(cfg['rope_scaling']).toEqual({ rope_type: 'linear', factor: 4 });
    const st = info.specialTokens;
    expect(cfg['bos_token_id']).toBe(st.bos);
    expect(cfg['eos_token_id']).toEqual(options.eosList ? [st.endOfText, st.eot] : st.endOfText);
    expect(Math.max(st.bos, st.endOfText, st.startHeader, st.endHeader, st.eot)).toBe(o.vocabSize - 1);

    // generation_config.json
    const gen = readJson(path.join(info.dir, 'generation_config.json'));
    expect(gen['bos_token_id']).toBe(cfg['bos_token_id']);
    expect(gen['eos_token_id']).toEqual(cfg['eos_token_id']);

    // safetensors
    const entries = allEntries(info.dir);
    const expected = expectedTensors(o);
    expect([...entries.keys()].sort()).toEqual([...expected.keys()].sort());
    expect(new Set(info.tensorNames)).toEqual(new Set(expected.keys()));
    for (const [name, shape] of expected) {
      const e = entries.get(name)!;
      expect([name, e.shape]).toEqual([name, shape]);
      expect(e.dtype).toBe(ST_DTYPE[dtype]);
      expect(info.tensorShapes[name]).toEqual(shape);
    }
    const shards = options.shards ?? 1;
    const stFiles = fs
      .readdirSync(info.dir)
      .filter((f) => f.endsWith('.safetensors'))
      .sort();
    const indexPath = path.join(info.dir, 'model.safetensors.index.json');
    if (shards === 1) {
      expect(stFiles).toEqual(['model.safetensors']);
      expect(fs.existsSync(indexPath)).toBe(false);
    } else {
      const pad = (n: number): string => String(n).padStart(5, '0');
      expect(stFiles).toEqual(
        Array.from({ length: shards }, (_, k) => `model-${pad(k + 1)}-of-${pad(shards)}.safetensors`),
      );
      const index = readJson(indexPath) as { metadata: { total_size: number }; weight_map: Record<string, string> };
      let total = 0;
      for (const e of entries.values()) total += e.data_offsets[1] - e.data_offsets[0];
      expect(index.metadata.total_size).toBe(total);
      expect(Object.keys(index.weight_map).sort()).toEqual([...entries.keys()].sort());
      for (const [name, e] of entries) expect(index.weight_map[name]).toBe(e.file);
      expect(info.weightFiles.map((f) => path.basename(f))).toEqual(stFiles);
    }
    for (const f of info.files) expect(fs.existsSync(f)).toBe(true);
  });

  test('config.json is written the way transformers writes it', () => {
    const info = write({ arch: 'qwen2', ropeScaling: 'llama3' }, 'cfgtext');
    const text = fs.readFileSync(path.join(info.dir, 'config.json'), 'utf8');
    expect(text.endsWith('}\n')).toBe(true);
    expect(text).toContain('\n  "rms_norm_eps": 1e-05,\n');
    expect(text).toContain('\n  "rope_theta": 10000.0,\n');
    expect(text).toContain('\n  "attention_dropout": 0.0,\n');
    expect(text).toContain('\n    "factor": 8.0,\n');
    expect(text).toContain('\n  "sliding_window": null,\n');
    const keys = Object.keys(JSON.parse(text) as object);
    expect(keys).toEqual([...keys].sort());
  });

  test('same options give byte-identical files; the seed changes the weights', () => {
    for (const options of [
      { arch: 'llama', dtype: 'bf16' },
      { arch: 'qwen2', dtype: 'f16', shards: 2, seed: 7 },
      { arch: 'mistral', slidingWindow: 8, tied: true },
    ] as TinyModelOptions[]) {
      const a = write(options, 'det');
      const b = write(options, 'det');
      const names = fs.readdirSync(a.dir).sort();
      expect(fs.readdirSync(b.dir).sort()).toEqual(names);
      for (const n of names) {
        expect(fs.readFileSync(path.join(a.dir, n)).equals(fs.readFileSync(path.join(b.dir, n)))).toBe(true);
      }
    }
    const s1 = fs.readFileSync(path.join(write({ seed: 1 }, 'seed').dir, 'model.safetensors'));
    const s2 = fs.readFileSync(path.join(write({ seed: 2 }, 'seed').dir, 'model.safetensors'));
    expect(s1.length).toBe(s2.length);
    expect(s1.equals(s2)).toBe(false);
  });

  test('f16 and bf16 files hold the round-to-nearest-even images of the f32 values', () => {
    const f32 = allEntries(write({ arch: 'qwen2', seed: 3 }, 'img').dir);
    for (const [dtype, enc] of [
      ['f16', float32ToFloat16Bits],
      ['bf16', float32ToBfloat16Bits],
    ] as const) {
      const half = allEntries(write({ arch: 'qwen2', seed: 3, dtype }, 'img').dir);
      for (const [name, e] of f32) {
        const h = half.get(name)!;
        const n = e.shape.reduce((p, d) => p * d, 1);
        for (let i = 0; i < n; i++) {
          const v = e.data.readFloatLE(e.data_offsets[0] + 4 * i);
          const bits = h.data.readUInt16LE(h.data_offsets[0] + 2 * i);
          if (bits !== enc(v)) throw new Error(`${dtype} ${name}[${i}]: ${bits} != encode(${v})`);
        }
      }
    }
  });

  test('weights have the intended scales', () => {
    const { ref } = model({ arch: 'qwen2' });
    const stats = (name: string): { mean: number; std: number; min: number; max: number } => {
      const d = ref.tensors.get(name)!.data;
      let s = 0;
      let s2 = 0;
      let min = Infinity;
      let max = -Infinity;
      for (const v of d) {
        s += v;
        s2 += v * v;
        min = Math.min(min, v);
        max = Math.max(max, v);
      }
      const mean = s / d.length;
      return { mean, std: Math.sqrt(s2 / d.length - mean * mean), min, max };
    };
    const emb = stats('model.embed_tokens.weight');
    expect(Math.abs(emb.mean)).toBeLessThan(0.05);
    expect(emb.std).toBeGreaterThan(0.9);
    expect(emb.std).toBeLessThan(1.1);
    const q = stats('model.layers.0.self_attn.q_proj.weight');
    expect(q.std * Math.sqrt(64)).toBeGreaterThan(0.85);
    expect(q.std * Math.sqrt(64)).toBeLessThan(1.15);
    const norm = stats('model.layers.1.input_layernorm.weight');
    expect(norm.min).toBeGreaterThanOrEqual(0.8);
    expect(norm.max).toBeLessThanOrEqual(1.2);
    expect(norm.std).toBeGreaterThan(0.05); // not all ones
    const bias = stats('model.layers.0.self_attn.k_proj.bias');
    expect(bias.std).toBeGreaterThan(0.05);
    expect(bias.std).toBeLessThan(0.2);
  });

  test('rejects invalid options', () => {
    expect(() => write({ heads: 4, kvHeads: 3 })).toThrow(/multiple of kvHeads/);
    expect(() => write({ headDim: 15 })).toThrow(/even/);
    expect(() => write({ hidden: 50, heads: 4 })).toThrow(/multiple of heads/);
    expect(() => write({ vocabSize: 100 })).toThrow(/vocabSize/);
    expect(() => write({ layers: 0 })).toThrow(/layers/);
  });
});

// ---------------------------------------------------------------------------------------------
// Tokenizer and chat template
// ---------------------------------------------------------------------------------------------

describe('tokenizer', () => {
  const texts = [
    'Hello world, the children walk to the river.',
    'héllo 世界 🙂',
    '  leading spaces\n\nnew lines\tand tabs  ',
    "It's 2024! Tickets cost $18.50; we'll see.",
    'Ünïcödé — “quotes” ‘too’ … ∑ ≈ ∞ 🚀👍🏽',
    '',
  ];

  test('loads in @huggingface/tokenizers and round-trips text', () => {
    const info = write({}, 'tok');
    const tok = loadTokenizer(info.dir);
    const st = info.specialTokens;
    for (const text of texts) {
      const enc = tok.encode(text);
      expect(enc.ids[0]).toBe(st.bos);
      expect(enc.ids.every((id: number) => Number.isInteger(id) && id >= 0 && id < 320)).toBe(true);
      expect(tok.decode(enc.ids, { skip_special_tokens: true })).toBe(text);
      expect(tok.decode(enc.ids)).toBe('<|begin_of_text|>' + text);
      const plain = tok.encode(text, { add_special_tokens: false });
      expect(plain.ids).toEqual(enc.ids.slice(1));
      if (plain.ids.length > 0) expect(tok.decode(plain.ids)).toBe(text);
    }
    // Merges compress English: fewer tokens than bytes.
    const english = 'The small model reads a line of text and the children walk to the river.';
    expect(tok.encode(english, { add_special_tokens: false }).ids.length).toBeLessThan(
      Buffer.byteLength(english) * 0.75,
    );
    // Special tokens are single ids at the top of the vocabulary.
    expect(tok.token_to_id('<|begin_of_text|>')).toBe(st.bos);
    expect(tok.token_to_id('<|end_of_text|>')).toBe(st.endOfText);
    expect(tok.token_to_id('<|eot_id|>')).toBe(st.eot);
    expect(tok.encode('a<|eot_id|>b', { add_special_tokens: false }).ids).toEqual([
      tok.token_to_id('a'),
      st.eot,
      tok.token_to_id('b'),
    ]);
    expect([st.bos, st.endOfText, st.startHeader, st.endHeader, st.eot]).toEqual([315, 316, 317, 318, 319]);
    expect(info.bpeVocabSize).toBe(315);
    expect(tok.get_vocab(true).size).toBe(320);
  });

  test('tokenizer.json structure', () => {
    const info = write({ vocabSize: 400 }, 'tokjson');
    const tj = readJson(path.join(info.dir, 'tokenizer.json')) as {
      model: { type: string; vocab: Record<string, number>; merges: string[] };
      pre_tokenizer: Record<string, unknown>;
      decoder: Record<string, unknown>;
      post_processor: Record<string, unknown>;
      added_tokens: { id: number; content: string; special: boolean }[];
    };
    expect(tj.model.type).toBe('BPE');
    expect(tj.pre_tokenizer).toMatchObject({ type: 'ByteLevel', add_prefix_space: false, use_regex: true });
    expect(tj.decoder['type']).toBe('ByteLevel');
    expect(tj.post_processor['type']).toBe('TemplateProcessing');
    const ids = Object.values(tj.model.vocab);
    expect(new Set(ids).size).toBe(ids.length);
    expect(Math.max(...ids)).toBe(ids.length - 1);
    expect(ids.length).toBe(395);
    expect(tj.model.merges.length).toBeGreaterThanOrEqual(395 - 256);
    for (const m of tj.model.merges) {
      const [a, b] = m.split(' ');
      expect(tj.model.vocab[a!]).toBeDefined();
      expect(tj.model.vocab[b!]).toBeDefined();
      expect(tj.model.vocab[a! + b!]).toBeDefined();
    }
    // The first 256 tokens are the byte alphabet: 'Ġ' is the space byte, 'Ċ' newline.
    expect(tj.model.vocab['!']).toBe(0);
    expect(tj.model.vocab['Ġ']).toBeLessThan(256);
    expect(tj.model.vocab['Ċ']).toBeLessThan(256);
    expect(tj.added_tokens.map((t) => [t.id, t.content, t.special])).toEqual([
      [395, '<|begin_of_text|>', true],
      [396, '<|end_of_text|>', true],
      [397, '<|start_header_id|>', true],
      [398, '<|end_header_id|>', true],
      [399, '<|eot_id|>', true],
    ]);
  });

  test('without add_bos the post-processor adds nothing', () => {
    const info = write({ addBos: false }, 'nobos');
    const tok = loadTokenizer(info.dir);
    const enc = tok.encode('héllo 世界 🙂');
    expect(enc.ids).not.toContain(info.specialTokens.bos);
    expect(tok.decode(enc.ids)).toBe('héllo 世界 🙂');
    expect(readJson(path.join(info.dir, 'tokenizer_config.json'))['add_bos_token']).toBe(false);
  });

  test('a larger vocabulary keeps the learned merges of a smaller one as a prefix', () => {
    const small = readJson(path.join(write({ vocabSize: 300 }, 'v').dir, 'tokenizer.json')) as {
      model: { merges: string[] };
    };
    const large = readJson(path.join(write({ vocabSize: 600 }, 'v').dir, 'tokenizer.json')) as {
      model: { merges: string[] };
    };
    expect(large.model.merges.slice(0, small.model.merges.length)).toEqual(small.model.merges);
  });

  test('chat template renders with @huggingface/jinja and tokenizes to the special ids', () => {
    const info = write({ eosList: true }, 'chat');
    const tc = readJson(path.join(info.dir, 'tokenizer_config.json'));
    expect(tc['eos_token']).toBe('<|eot_id|>');
    expect(tc['bos_token']).toBe('<|begin_of_text|>');
    expect(tc['model_max_length']).toBe(256);
    const decoder = tc['added_tokens_decoder'] as Record<string, { content: string; special: boolean }>;
    expect(decoder[String(info.specialTokens.eot)]).toMatchObject({ content: '<|eot_id|>', special: true });
    const template = new Template(String(tc['chat_template']));
    const messages = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: '  Hi there  ' },
    ];
    const prompt = template.render({ messages, bos_token: tc['bos_token'], add_generation_prompt: true });
    expect(prompt).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const noGen = template.render({ messages, bos_token: tc['bos_token'], add_generation_prompt: false });
    expect(noGen.endsWith('Hi there<|eot_id|>')).toBe(true);

    const tok = loadTokenizer(info.dir);
    const ids = tok.encode(prompt, { add_special_tokens: false }).ids;
    const st = info.specialTokens;
    expect(ids[0]).toBe(st.bos);
    expect(ids.filter((id: number) => id === st.startHeader).length).toBe(3);
    expect(ids.filter((id: number) => id === st.endHeader).length).toBe(3);
    expect(ids.filter((id: number) => id === st.eot).length).toBe(2);
    expect(tok.decode(ids)).toBe(prompt);
  });
});

// ---------------------------------------------------------------------------------------------
// Reference forward pass
// ---------------------------------------------------------------------------------------------

describe('reference forward pass', () => {
  const PROMPTS = [
    'The small model reads a line',
    'Questions are welcome! What is',
    'In 2024 the town had 3,500 people',
    'héllo 世界 🙂',
    'Good software is tested',
    'She said, "I\'ll be there',
  ];
  let tokenized: number[][] = [];
  beforeAll(() => {
    const tok = loadTokenizer(model().info.dir);
    tokenized = PROMPTS.map((p) => tok.encode(p).ids);
  });

  test.each(ARCHS.flatMap((arch) => DTYPES.map((dtype) => ({ arch, dtype }))))(
    '$arch $dtype: finite, peaked logits; greedy depends on the prompt',
    ({ arch, dtype }) => {
      const { ref } = model({ arch, dtype });
      const nexts = new Set<number>();
      for (const toks of tokenized) {
        const logits = referenceLogits(ref, toks);
        expect(logits.length).toBe(toks.length);
        for (const l of logits) {
          expect(l.length).toBe(320);
          let min = Infinity;
          let max = -Infinity;
          for (const v of l) {
            if (!Number.isFinite(v)) throw new Error('non-finite logit');
            min = Math.min(min, v);
            max = Math.max(max, v);
          }
          expect(max - min).toBeGreaterThan(8); // far from uniform
          // The softmax puts real mass on the top token.
          let z = 0;
          for (const v of l) z += Math.exp(v - max);
          expect(1 / z).toBeGreaterThan(0.05);
        }
        nexts.add(argmax(logits[logits.length - 1]!));
      }
      expect(nexts.size).toBeGreaterThanOrEqual(3);
    },
  );

  test('greedy decoding is consistent with the logits and not a constant', () => {
    const { ref } = model({ arch: 'llama' });
    const prompt = tokenized[0]!;
    const out = referenceGreedy(ref, prompt, 8);
    expect(out.length).toBe(8);
    const seq = [...prompt, ...out];
    const logits = referenceLogits(ref, seq);
    for (let i = 0; i < out.length; i++) expect(argmax(logits[prompt.length - 1 + i]!)).toBe(out[i]);
    const other = referenceGreedy(ref, tokenized[1]!, 8);
    expect(other).not.toEqual(out);
  });

  test('causal: logits of a prefix equal the first positions of the longer sequence', () => {
    for (const arch of ARCHS) {
      const { ref } = model({ arch, slidingWindow: arch === 'mistral' ? 3 : null });
      const toks = tokenized[2]!;
      const full = referenceLogits(ref, toks);
      const prefix = referenceLogits(ref, toks.slice(0, 5));
      for (let i = 0; i < 5; i++) expect(maxAbsDiff(prefix[i]!, full[i]!)).toBe(0);
    }
  });

  test('mistral without a window and qwen2 with zero biases compute exactly what llama does', () => {
    const toks = tokenized[0]!;
    const llama = referenceLogits(model({ arch: 'llama' }).ref, toks);
    const mistral = referenceLogits(model({ arch: 'mistral' }).ref, toks);
    for (let i = 0; i < toks.length; i++) expect(maxAbsDiff(mistral[i]!, llama[i]!)).toBe(0);
    const qwen = model({ arch: 'qwen2' }).ref;
    const qwenLogits = referenceLogits(qwen, toks);
    expect(maxAbsDiff(qwenLogits[3]!, llama[3]!)).toBeGreaterThan(1e-3); // the biases matter
    const zeroed = withTensors(qwen, (name, d) => (name.endsWith('.bias') ? new Float64Array(d.length) : null));
    const z = referenceLogits(zeroed, toks);
    for (let i = 0; i < toks.length; i++) expect(maxAbsDiff(z[i]!, llama[i]!)).toBe(0);
  });

  test('llama attention_bias: q/k/v/o biases are all used', () => {
    const toks = tokenized[1]!;
    const plain = referenceLogits(model({ arch: 'llama' }).ref, toks);
    const biased = model({ arch: 'llama', bias: true }).ref;
    expect(biased.tensors.has('model.layers.0.self_attn.o_proj.bias')).toBe(true);
    const zero = (which: string | null) =>
      withTensors(biased, (name, d) =>
        name.endsWith('.bias') && (which === null || name.includes(which)) ? new Float64Array(d.length) : null,
      );
    const allZero = referenceLogits(zero(null), toks);
    for (let i = 0; i < toks.length; i++) expect(maxAbsDiff(allZero[i]!, plain[i]!)).toBe(0);
    const full = referenceLogits(biased, toks);
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) {
      const partial = referenceLogits(zero(proj), toks);
      expect(maxAbsDiff(partial[toks.length - 1]!, full[toks.length - 1]!)).toBeGreaterThan(1e-6);
    }
  });

  test('GQA: a kv-head-2 model equals the MHA model with duplicated k/v heads', () => {
    const { ref } = model({ arch: 'llama', kvHeads: 2 });
    const hd = ref.config.headDim;
    const d = ref.config.hidden;
    const heads = ref.config.heads;
    const group = heads / ref.config.kvHeads;
    const expand = (w: Float64Array, rowLen: number): Float64Array => {
      const out = new Float64Array(heads * hd * rowLen);
      for (let h = 0; h < heads; h++) {
        const kvh = Math.floor(h / group);
        out.set(w.subarray(kvh * hd * rowLen, (kvh + 1) * hd * rowLen), h * hd * rowLen);
      }
      return out;
    };
    const tensors = new Map(ref.tensors);
    for (const [name, t] of ref.tensors) {
      if (/\.(k|v)_proj\.weight$/.test(name)) tensors.set(name, { shape: [heads * hd, d], data: expand(t.data, d) });
    }
    const mha: ReferenceModel = { ...ref, tensors, config: { ...ref.config, kvHeads: heads } };
    const toks = tokenized[3]!;
    const a = referenceLogits(ref, toks);
    const b = referenceLogits(mha, toks);
    for (let i = 0; i < toks.length; i++) expect(maxAbsDiff(a[i]!, b[i]!)).toBeLessThan(1e-9);
    // A wrong grouping (h % nKv instead of floor(h / group)) gives a different model.
    const wrong = new Map(ref.tensors);
    for (const [name, t] of ref.tensors) {
      if (/\.(k|v)_proj\.weight$/.test(name)) {
        const out = new Float64Array(heads * hd * d);
        for (let h = 0; h < heads; h++) {
          const kvh = h % ref.config.kvHeads;
          out.set(t.data.subarray(kvh * hd * d, (kvh + 1) * hd * d), h * hd * d);
        }
        wrong.set(name, { shape: [heads * hd, d], data: out });
      }
    }
    const c = referenceLogits({ ...mha, tensors: wrong }, toks);
    expect(maxAbsDiff(a[toks.length - 1]!, c[toks.length - 1]!)).toBeGreaterThan(1e-3);
  });

  test('MQA, MHA and head_dim != hidden/heads all run', () => {
    const toks = tokenized[4]!;
    for (const options of [
      { kvHeads: 1 },
      { kvHeads: 4 },
      { headDim: 32 },
      { headDim: 8, heads: 8, kvHeads: 2 },
    ] as TinyModelOptions[]) {
      const { ref } = model(options);
      const l = referenceLogits(ref, toks);
      expect(l.every((x) => x.every(Number.isFinite))).toBe(true);
    }
  });

  test('RoPE scaling: identical at position 0, different later', () => {
    const toks = tokenized[0]!;
    const base = referenceLogits(model({}).ref, toks);
    for (const ropeScaling of ['llama3', 'linear'] as const) {
      const scaled = referenceLogits(model({ ropeScaling }).ref, toks);
      expect(maxAbsDiff(scaled[0]!, base[0]!)).toBe(0);
      expect(maxAbsDiff(scaled[toks.length - 1]!, base[toks.length - 1]!)).toBeGreaterThan(1e-3);
    }
    const theta = referenceLogits(model({ ropeTheta: 500000 }).ref, toks);
    expect(maxAbsDiff(theta[0]!, base[0]!)).toBe(0);
    expect(maxAbsDiff(theta[toks.length - 1]!, base[toks.length - 1]!)).toBeGreaterThan(1e-3);
  });

  test('RoPE inverse frequencies follow transformers (default, linear, llama3)', () => {
    const hd = 16;
    const base = Array.from({ length: 8 }, (_, i) => 1 / 10000 ** ((2 * i) / hd));
    const def = referenceInvFreq({ rope_theta: 10000, rope_scaling: null }, hd);
    base.forEach((f, i) => expect(def[i]).toBeCloseTo(f, 15));
    const lin = referenceInvFreq({ rope_theta: 10000, rope_scaling: { rope_type: 'linear', factor: 4 } }, hd);
    base.forEach((f, i) => expect(lin[i]).toBeCloseTo(f / 4, 15));
    const cfg = model({ ropeScaling: 'llama3' }).ref.rawConfig;
    const l3 = referenceInvFreq(cfg, hd);
    // old context 64: high-frequency wavelength 16, low-frequency wavelength 64.
    expect(l3[0]).toBeCloseTo(base[0]!, 15); // wavelength 6.3 < 16: unchanged
    const smooth = (64 / ((2 * Math.PI) / base[1]!) - 1) / (4 - 1); // wavelength 19.9: interpolated
    expect(smooth).toBeGreaterThan(0);
    expect(smooth).toBeLessThan(1);
    expect(l3[1]).toBeCloseTo(((1 - smooth) * base[1]!) / 8 + smooth * base[1]!, 15);
    for (let i = 3; i < 8; i++) expect(l3[i]).toBeCloseTo(base[i]! / 8, 15); // wavelength > 64: divided
  });

  test('Mistral sliding window 4: same as no window before position 4, different from 4 on', () => {
    const toks = tokenized[2]!;
    expect(toks.length).toBeGreaterThan(8);
    const windowed = model({ arch: 'mistral', slidingWindow: 4 }).ref;
    const open = model({ arch: 'mistral' }).ref;
    expect(windowed.config.slidingWindow).toEqual([4, 4]);
    expect(open.config.slidingWindow).toEqual([null, null]);
    const a = referenceLogits(windowed, toks);
    const b = referenceLogits(open, toks);
    for (let p = 0; p < 4; p++) expect(maxAbsDiff(a[p]!, b[p]!)).toBe(0);
    for (let p = 4; p < toks.length; p++) expect(maxAbsDiff(a[p]!, b[p]!)).toBeGreaterThan(1e-6);
    // A window as large as the sequence changes nothing.
    const wide = referenceLogits(model({ arch: 'mistral', slidingWindow: toks.length }).ref, toks);
    for (let p = 0; p < toks.length; p++) expect(maxAbsDiff(wide[p]!, b[p]!)).toBe(0);
  });

  test('tied embeddings: lm_head is embed_tokens', () => {
    const { ref } = model({ tied: true });
    expect(ref.tensors.has('lm_head.weight')).toBe(false);
    const withHead = new Map(ref.tensors);
    withHead.set('lm_head.weight', ref.tensors.get('model.embed_tokens.weight')!);
    const untied: ReferenceModel = { ...ref, tensors: withHead, config: { ...ref.config, tied: false } };
    const toks = tokenized[5]!;
    const a = referenceLogits(ref, toks);
    const b = referenceLogits(untied, toks);
    for (let i = 0; i < toks.length; i++) expect(maxAbsDiff(a[i]!, b[i]!)).toBe(0);
    // The layers matter: the output is not just the current token repeated.
    const self = toks.filter((t, i) => argmax(a[i]!) === t).length;
    expect(self).toBeLessThan(toks.length);
  });

  test('sharded and single-file checkpoints load to the same model', () => {
    const toks = tokenized[1]!;
    for (const dtype of ['f32', 'bf16'] as const) {
      const a = referenceLogits(model({ arch: 'qwen2', dtype }).ref, toks);
      const b = referenceLogits(model({ arch: 'qwen2', dtype, shards: 3 }).ref, toks);
      for (let i = 0; i < toks.length; i++) expect(maxAbsDiff(a[i]!, b[i]!)).toBe(0);
    }
  });

  test('f16 and bf16 checkpoints stay close to f32', () => {
    const toks = tokenized[0]!;
    const f32 = referenceLogits(model({ arch: 'llama' }).ref, toks);
    for (const [dtype, tol] of [
      ['f16', 0.02],
      ['bf16', 0.15],
    ] as const) {
      const h = referenceLogits(model({ arch: 'llama', dtype }).ref, toks);
      for (let i = 0; i < toks.length; i++) {
        const spread = Math.max(...f32[i]!) - Math.min(...f32[i]!);
        expect(maxAbsDiff(h[i]!, f32[i]!)).toBeLessThan(tol * spread * 0.1);
      }
    }
  });
});
