/**
 * Plain float64 reference forward pass of Hugging Face LlamaForCausalLM / MistralForCausalLM /
 * Qwen2ForCausalLM, for tests only.
 *
 * Written to be obviously correct rather than fast: it reads config.json and the safetensors
 * file(s) itself (no code shared with the package), decodes every tensor to float64, and runs
 * the whole sequence from position 0 with no cache. The math follows transformers'
 * modeling_llama.py / modeling_mistral.py / modeling_qwen2.py and
 * modeling_rope_utils.py (default, linear and llama3 RoPE).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface ReferenceTensor {
  shape: number[];
  data: Float64Array;
}

export interface ReferenceConfig {
  modelType: string;
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  rmsNormEps: number;
  tied: boolean;
  /** Per layer: the sliding window (keys at positions > p - window are seen) or null. */
  slidingWindow: (number | null)[];
  /** RoPE inverse frequencies after scaling, length headDim / 2. */
  invFreq: Float64Array;
}

export interface ReferenceModel {
  dir: string;
  /** config.json as parsed. */
  rawConfig: Record<string, unknown>;
  config: ReferenceConfig;
  tensors: Map<string, ReferenceTensor>;
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const bf16Bits = new Uint32Array(1);
const bf16Float = new Float32Array(bf16Bits.buffer);
function bf16ToNumber(h: number): number {
  bf16Bits[0] = (h << 16) >>> 0;
  return bf16Float[0]!;
}

/** Reads every tensor of one safetensors file, decoded to float64. */
export function readSafetensors(file: string): Map<string, ReferenceTensor> {
  const bytes = fs.readFileSync(file);
  if (bytes.length < 8) throw new Error(`${file}: too short`);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  if (8 + headerLen > bytes.length) throw new Error(`${file}: header length out of range`);
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, unknown>;
  const dataStart = 8 + headerLen;
  const out = new Map<string, ReferenceTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const count = e.shape.reduce((p, x) => p * x, 1);
    const [begin, end] = e.data_offsets;
    const size = e.dtype === 'F32' ? 4 : e.dtype === 'F16' || e.dtype === 'BF16' ? 2 : 0;
    if (size === 0) throw new Error(`${file}: ${name}: unsupported dtype ${e.dtype}`);
    if (end - begin !== count * size || dataStart + end > bytes.length)
      throw new Error(`${file}: ${name}: bad offsets`);
    const data = new Float64Array(count);
    const base = dataStart + begin;
    for (let i = 0; i < count; i++) {
      if (e.dtype === 'F32') data[i] = bytes.readFloatLE(base + 4 * i);
      else if (e.dtype === 'F16') data[i] = f16ToNumber(bytes.readUInt16LE(base + 2 * i));
      else data[i] = bf16ToNumber(bytes.readUInt16LE(base + 2 * i));
    }
    out.set(name, { shape: [...e.shape], data });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Config and RoPE
// ---------------------------------------------------------------------------------------------

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key];
  if (typeof v === 'number') return v;
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
  }
  throw new Error(`config.json: ${key} missing or not a number`);
}

/** transformers' inverse frequencies: default, linear, llama3. */
export function referenceInvFreq(cfg: Record<string, unknown>, headDim: number): Float64Array {
  const theta = num(cfg, 'rope_theta', 10000);
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  const rs = cfg['rope_scaling'] as Record<string, unknown> | null | undefined;
  if (!rs) return inv;
  const type = (rs['rope_type'] ?? rs['type']) as string;
  if (type === 'default') return inv;
  if (type === 'linear') {
    const factor = num(rs, 'factor');
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / factor;
    return inv;
  }
  if (type === 'llama3') {
    const factor = num(rs, 'factor');
    const low = num(rs, 'low_freq_factor');
    const high = num(rs, 'high_freq_factor');
    const oldCtx = num(rs, 'original_max_position_embeddings');
    const lowFreqWavelen = oldCtx / low;
    const highFreqWavelen = oldCtx / high;
    for (let i = 0; i < half; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowFreqWavelen) {
        inv[i] = f / factor;
      } else if (wavelen < highFreqWavelen) {
        inv[i] = f;
      } else {
        const smooth = (oldCtx / wavelen - low) / (high - low);
        inv[i] = ((1 - smooth) * f) / factor + smooth * f;
      }
    }
    return inv;
  }
  throw new Error(`reference: unsupported rope_type ${type}`);
}

/** Loads config.json and all weights of an HF checkpoint directory. */
export function loadReference(dir: string): ReferenceModel {
  const rawConfig = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  // 'ddllama': the official FlexiDepth checkpoint (DDLlamaForCausalLM), a Llama with routers in its weights.
  const modelType = String(rawConfig['model_type']);
  if (modelType !== 'llama' && modelType !== 'ddllama' && modelType !== 'mistral' && modelType !== 'qwen2') {
    throw new Error(`reference: unsupported model_type ${modelType}`);
  }
  const hidden = num(rawConfig, 'hidden_size');
  const heads = num(rawConfig, 'num_attention_heads');
  const kvHeads = num(rawConfig, 'num_key_value_heads', heads);
  const headDim = num(rawConfig, 'head_dim', hidden / heads);
  const layers = num(rawConfig, 'num_hidden_layers');

  const slidingWindow: (number | null)[] = [];
  for (let l = 0; l < layers; l++) {
    let w: number | null = null;
    const sw = rawConfig['sliding_window'];
    if (modelType === 'mistral' && typeof sw === 'number') w = sw;
    if (modelType === 'qwen2' && rawConfig['use_sliding_window'] === true && typeof sw === 'number') {
      if (l >= num(rawConfig, 'max_window_layers', 0)) w = sw;
    }
    slidingWindow.push(w);
  }

  const tensors = new Map<string, ReferenceTensor>();
  const indexPath = path.join(dir, 'model.safetensors.index.json');
  let files: string[];
  if (fs.existsSync(indexPath)) {
    const index = JSON.parse(fs.readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };
    files = [...new Set(Object.values(index.weight_map))].sort();
  } else {
    files = ['model.safetensors'];
  }
  for (const f of files) {
    for (const [name, t] of readSafetensors(path.join(dir, f))) {
      if (tensors.has(name)) throw new Error(`reference: tensor ${name} appears twice`);
      tensors.set(name, t);
    }
  }

  return {
    dir,
    rawConfig,
    config: {
      modelType,
      vocabSize: num(rawConfig, 'vocab_size'),
      hidden,
      layers,
      heads,
      kvHeads,
      headDim,
      intermediate: num(rawConfig, 'intermediate_size'),
      rmsNormEps: num(rawConfig, 'rms_norm_eps', 1e-6),
      tied: rawConfig['tie_word_embeddings'] === true,
      slidingWindow,
      invFreq: referenceInvFreq(rawConfig, headDim),
    },
    tensors,
  };
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

/** A tensor's data, checked against `shape`. */
export function tensor(model: ReferenceModel, name: string, shape: number[]): Float64Array {
  const t = model.tensors.get(name);
  if (!t) throw new Error(`reference: missing tensor ${name}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`reference: ${name} has shape [${t.shape}], expected [${shape}]`);
  }
  return t.data;
}

export function optionalTensor(model: ReferenceModel, name: string, shape: number[]): Float64Array | null {
  return model.tensors.has(name) ? tensor(model, name, shape) : null;
}

/** The weights of decoder layer l (HF Llama names), as float64, with the shapes the config implies. */
export function layerWeights(model: ReferenceModel, l: number) {
  const c = model.config;
  const d = c.hidden;
  const qDim = c.heads * c.headDim;
  const kvDim = c.kvHeads * c.headDim;
  const ff = c.intermediate;
  const p = `model.layers.${l}`;
  return {
    inNorm: tensor(model, `${p}.input_layernorm.weight`, [d]),
    postNorm: tensor(model, `${p}.post_attention_layernorm.weight`, [d]),
    wq: tensor(model, `${p}.self_attn.q_proj.weight`, [qDim, d]),
    wk: tensor(model, `${p}.self_attn.k_proj.weight`, [kvDim, d]),
    wv: tensor(model, `${p}.self_attn.v_proj.weight`, [kvDim, d]),
    wo: tensor(model, `${p}.self_attn.o_proj.weight`, [d, qDim]),
    bq: optionalTensor(model, `${p}.self_attn.q_proj.bias`, [qDim]),
    bk: optionalTensor(model, `${p}.self_attn.k_proj.bias`, [kvDim]),
    bv: optionalTensor(model, `${p}.self_attn.v_proj.bias`, [kvDim]),
    bo: optionalTensor(model, `${p}.self_attn.o_proj.bias`, [d]),
    wg: tensor(model, `${p}.mlp.gate_proj.weight`, [ff, d]),
    wu: tensor(model, `${p}.mlp.up_proj.weight`, [ff, d]),
    wd: tensor(model, `${p}.mlp.down_proj.weight`, [d, ff]),
  };
}

/** y = W x (+ b), W is [out, in] row-major. */
export function linear(
  w: Float64Array,
  b: Float64Array | null,
  x: Float64Array,
  outDim: number,
  inDim: number,
): Float64Array {
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let s = 0;
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) s += w[row + i]! * x[i]!;
    y[o] = b ? s + b[o]! : s;
  }
  return y;
}

export function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i]! * x[i]!;
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i]! * scale * w[i]!;
  return y;
}

/** In place, rotate_half layout: pairs (i, i + hd/2) for each head of size hd. */
export function applyRope(v: Float64Array, nHeads: number, hd: number, pos: number, invFreq: Float64Array): void {
  const half = hd / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = h * hd;
    for (let i = 0; i < half; i++) {
      const angle = pos * invFreq[i]!;
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      const x1 = v[base + i]!;
      const x2 = v[base + i + half]!;
      v[base + i] = x1 * c - x2 * s;
      v[base + i + half] = x2 * c + x1 * s;
    }
  }
}

export const silu = (x: number): number => x / (1 + Math.exp(-x));

/** The KV cache dtypes the engine offers; the reference can store K and V as they would be. */
export type KvCacheType = 'f32' | 'f16' | 'bf16';

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** x rounded to f32, then to bf16 (round to nearest, ties to even): what a bf16 cache holds. */
export function roundBf16(x: number): number {
  f32Scratch[0] = x;
  let u = u32Scratch[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return NaN;
  u = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0;
  u32Scratch[0] = (u & 0xffff0000) >>> 0;
  return f32Scratch[0]!;
}

/** x rounded to f32, then to IEEE half (ties to even), by arithmetic: what an f16 cache holds. */
export function roundF16(x: number): number {
  const v = Math.fround(x);
  if (!Number.isFinite(v)) return v;
  const a = Math.abs(v);
  if (a >= 65520) return Math.sign(v) * Infinity; // past the largest half, after rounding
  // The spacing of halves near a: 2^(e - 10) for normal halves, 2^-24 below 2^-14.
  const e = a < 2 ** -14 ? -14 : Math.floor(Math.log2(a));
  const step = 2 ** (e - 10);
  const r = a / step;
  const fl = Math.floor(r);
  const diff = r - fl;
  const q = diff > 0.5 ? fl + 1 : diff < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
  return Math.sign(v) * q * step;
}

/** A K or V row as the cache holds it: f32 keeps the engine's f32 values (unrounded here). */
export function asCached(v: Float64Array, type: KvCacheType): Float64Array {
  if (type === 'f32') return v;
  const round = type === 'bf16' ? roundBf16 : roundF16;
  return v.map(round);
}

/** Logits (one Float64Array of vocab_size per position) for `tokens` starting at position 0. */
/**
 * Causal attention of position t over positions max(0, t - window + 1)..t, softmax in float64;
 * query head h reads KV head floor(h / (heads / kvHeads)).
 */
export function causalAttention(
  qs: Float64Array[],
  ks: Float64Array[],
  vs: Float64Array[],
  t: number,
  heads: number,
  kvHeads: number,
  hd: number,
  window: number | null,
): Float64Array {
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(hd);
  const attn = new Float64Array(heads * hd);
  const first = window === null ? 0 : Math.max(0, t - window + 1);
  for (let h = 0; h < heads; h++) {
    const kvh = Math.floor(h / group);
    const scores: number[] = [];
    for (let j = first; j <= t; j++) {
      let s = 0;
      for (let i = 0; i < hd; i++) s += qs[t]![h * hd + i]! * ks[j]![kvh * hd + i]!;
      scores.push(s * scale);
    }
    const m = Math.max(...scores);
    const e = scores.map((s) => Math.exp(s - m));
    const z = e.reduce((a, b) => a + b, 0);
    for (let j = first; j <= t; j++) {
      const w = e[j - first]! / z;
      for (let i = 0; i < hd; i++) attn[h * hd + i] = attn[h * hd + i]! + w * vs[j]![kvh * hd + i]!;
    }
  }
  return attn;
}

/**
 * matmulInput: what the engine rounds the input of each decoder projection and of the LM head to
 * before the product (with quantized weights: int8 blocks, test/reference/quantize.ts); default none.
 */
export function referenceLogits(
  model: ReferenceModel,
  tokens: number[],
  options: { kvCacheType?: KvCacheType; matmulInput?: (x: Float64Array) => Float64Array } = {},
): Float64Array[] {
  const kvType = options.kvCacheType ?? 'f32';
  const mi = options.matmulInput ?? ((x: Float64Array) => x);
  const c = model.config;
  const d = c.hidden;
  const hd = c.headDim;
  const qDim = c.heads * hd;
  const kvDim = c.kvHeads * hd;
  const ff = c.intermediate;
  const T = tokens.length;

  const embed = tensor(model, 'model.embed_tokens.weight', [c.vocabSize, d]);
  let xs: Float64Array[] = tokens.map((tok) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= c.vocabSize)
      throw new Error(`reference: token ${tok} out of range`);
    return embed.slice(tok * d, (tok + 1) * d);
  });

  for (let l = 0; l < c.layers; l++) {
    const { inNorm, postNorm, wq, wk, wv, wo, bq, bk, bv, bo, wg, wu, wd } = layerWeights(model, l);
    const window = c.slidingWindow[l] ?? null;

    // Attention
    const qs: Float64Array[] = [];
    const ks: Float64Array[] = [];
    const vs: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const h = mi(rmsNorm(xs[t]!, inNorm, c.rmsNormEps));
      const q = linear(wq, bq, h, qDim, d);
      const k = linear(wk, bk, h, kvDim, d);
      const v = linear(wv, bv, h, kvDim, d);
      applyRope(q, c.heads, hd, t, c.invFreq);
      applyRope(k, c.kvHeads, hd, t, c.invFreq);
      qs.push(q);
      ks.push(asCached(k, kvType));
      vs.push(asCached(v, kvType));
    }
    const next: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const attn = causalAttention(qs, ks, vs, t, c.heads, c.kvHeads, hd, window);
      const o = linear(wo, bo, mi(attn), d, qDim);
      const x = new Float64Array(d);
      for (let i = 0; i < d; i++) x[i] = xs[t]![i]! + o[i]!;
      // MLP
      const h2 = mi(rmsNorm(x, postNorm, c.rmsNormEps));
      const g = linear(wg, null, h2, ff, d);
      const u = linear(wu, null, h2, ff, d);
      const a = new Float64Array(ff);
      for (let i = 0; i < ff; i++) a[i] = silu(g[i]!) * u[i]!;
      const down = linear(wd, null, mi(a), d, ff);
      for (let i = 0; i < d; i++) x[i] = x[i]! + down[i]!;
      next.push(x);
    }
    xs = next;
  }

  const finalNorm = tensor(model, 'model.norm.weight', [d]);
  const head = c.tied ? embed : tensor(model, 'lm_head.weight', [c.vocabSize, d]);
  return xs.map((x) => linear(head, null, mi(rmsNorm(x, finalNorm, c.rmsNormEps)), c.vocabSize, d));
}

/** Index of the largest value (the first one on ties, like torch.argmax). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

/** Greedy decoding: the `n` tokens generated after `prompt` (the prompt is not included). */
export function referenceGreedy(
  model: ReferenceModel,
  prompt: number[],
  n: number,
  options: { kvCacheType?: KvCacheType } = {},
): number[] {
  if (prompt.length === 0) throw new Error('reference: empty prompt');
  const seq = [...prompt];
  const out: number[] = [];
  for (let s = 0; s < n; s++) {
    const logits = referenceLogits(model, seq, options);
    const next = argmax(logits[logits.length - 1]!);
    out.push(next);
    seq.push(next);
  }
  return out;
}
