/**
 * Writes a tiny, randomly initialised Llama-family checkpoint in exact Hugging Face layout.
 *
 * The output directory gets the same files `save_pretrained` produces for a causal LM plus a
 * tokenizer:
 *
 *   config.json                  as transformers writes it (sorted keys, Python float style)
 *   generation_config.json
 *   model.safetensors            or model-0000k-of-0000n.safetensors + model.safetensors.index.json
 *   tokenizer.json               byte-level BPE (GPT-2 / Llama-3 style), merges learned here
 *   tokenizer_config.json        special tokens and a Llama-3-style chat template
 *
 * Everything is deterministic: the same options give byte-identical files on every platform.
 * Weights come from a small counter-free PRNG seeded per tensor (from `seed` and the tensor
 * name), and normal deviates are made from sums of uniforms, so no transcendental function
 * (whose last bit may differ between engines) is involved. Because each tensor has its own
 * stream, options that add or drop tensors (bias, tied, layers) leave the other tensors'
 * values unchanged, and the f16/bf16 files hold exactly the round-to-nearest-even images of
 * the f32 file's values.
 *
 * Initialisation (chosen so the network is numerically healthy and its logits are peaked):
 *   embed_tokens ~ N(0, 1); q/k/v/gate/up ~ N(0, 1/fan_in); o_proj and down_proj ~
 *   N(0, 4/fan_in) (gain 2, so the layers outweigh the embedding in the residual stream);
 *   lm_head rows ~ N(0, 9/d) times a per-row factor in [0.5, 2) (logit spread ~20-30);
 *   RMSNorm weights uniform in [0.8, 1.2]; biases ~ N(0, 0.1^2).
 *
 * Optional dynamic-depth tensors: FlexiDepth routers + adapters (`flexidepth`) and SkipLayer
 * routers (`skiplayer`), in the checkpoint itself or in a separate add-on safetensors file;
 * see TinyFlexiDepthOptions and TinySkipLayerOptions for names, shapes and scales.
 *
 * The tokenizer is byte-level BPE: the 256 GPT-2 byte symbols, then merges learned at call
 * time from a built-in English sample (most frequent pair first, ties by string order), then
 * five special tokens at the top ids: <|begin_of_text|>, <|end_of_text|>,
 * <|start_header_id|>, <|end_header_id|>, <|eot_id|>. The sample supports about 720 merges;
 * a larger vocab_size leaves unused ids between the BPE vocabulary and the special tokens
 * (rows that exist in the weights but that the tokenizer never produces).
 *
 * Only node builtins are used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** Architecture of a tiny model. */
export type TinyArch = 'llama' | 'mistral' | 'qwen2';
/** Storage dtype of a tiny model. */
export type TinyDtype = 'f32' | 'f16' | 'bf16';
/** RoPE scaling of a tiny model. */
export type TinyRopeScaling = 'none' | 'llama3' | 'linear';

/** Options of {@link writeTinyModel}; every field has a default that gives a fast test model. */
export interface TinyModelOptions {
  /** Architecture (default 'llama'). */
  arch?: TinyArch;
  /** num_hidden_layers (default 2). */
  layers?: number;
  /** hidden_size (default 64). */
  hidden?: number;
  /** num_attention_heads (default 4). */
  heads?: number;
  /** num_key_value_heads (default 2, or `heads` when that is odd). */
  kvHeads?: number;
  /** head_dim (default hidden / heads); may differ from hidden / heads. Must be even. */
  headDim?: number;
  /** intermediate_size (default 128). */
  intermediate?: number;
  /** vocab_size, special tokens included (default 320, minimum 261). */
  vocabSize?: number;
  /** max_position_embeddings (default 256). */
  maxPositions?: number;
  /** Storage dtype of every tensor (default 'f32'). */
  dtype?: TinyDtype;
  /** tie_word_embeddings: no lm_head.weight is written (default false). */
  tied?: boolean;
  /** Llama attention_bias: biases on q/k/v/o projections (default false; Qwen2 always has q/k/v biases). */
  bias?: boolean;
  /** rope_theta (default 10000). */
  ropeTheta?: number;
  /** rope_scaling (default 'none'). */
  ropeScaling?: TinyRopeScaling;
  /** Scaling factor for 'llama3' (default 8) or 'linear' (default 4). */
  ropeFactor?: number;
  /** Mistral sliding_window (default null = none). Ignored for other architectures. */
  slidingWindow?: number | null;
  /** Number of safetensors shards (default 1: a single model.safetensors). */
  shards?: number;
  /** PRNG seed (default 0). */
  seed?: number;
  /** eos_token_id as a list [<|end_of_text|>, <|eot_id|>] (default false: a single id). */
  eosList?: boolean;
  /** rms_norm_eps (default 1e-5). */
  rmsNormEps?: number;
  /** Whether the tokenizer prepends <|begin_of_text|> (default true). */
  addBos?: boolean;
  /** FlexiDepth routers and adapters on some layers (default none). */
  flexidepth?: TinyFlexiDepthOptions;
  /** SkipLayer routers (default none). */
  skiplayer?: TinySkipLayerOptions;
}

/**
 * FlexiDepth (arXiv 2503.23798, HF xuan-luo/FlexiDepth-Llama-3-8B-Instruct) tensors, bias-free,
 * for each layer i in `layers`:
 *
 *   model.layers.{i}.router.router_enc.weight      [r, d]   (r = max(2, floor(d / routerReduction)))
 *   model.layers.{i}.router.router_norm.weight     [r]
 *   model.layers.{i}.router.router_dec.weight      [d, r]
 *   model.layers.{i}.router.router_head.weight     [1, d]
 *   model.layers.{i}.router_proj.gate_proj.weight  [m, d]   (m = max(2, floor(intermediate / adapterReduction)))
 *   model.layers.{i}.router_proj.down_proj.weight  [m, d]   (maps d -> m despite its name)
 *   model.layers.{i}.router_proj.up_proj.weight    [d, m]
 *
 * Without `addonFile` they go into the model's own checkpoint and config.json gets
 * `routing_layers`; with it they go into that separate safetensors file in the output
 * directory only, and config.json stays that of the plain base model. With `official` (Llama only,
 * no `addonFile`) config.json is that of the official FlexiDepth checkpoint: `architectures`
 * ["DDLlamaForCausalLM"], `model_type` "ddllama", an `auto_map` to configuration_ddllama.py /
 * modeling_ddllama.py, and `routing_layers`; the tensors are those of the plain variant.
 *
 * Scaling: router_head is scaled so that the fused vector v = router_dec^T router_head has norm
 * routerGain / sqrt(E[tanh(N(0,1))^2]); the router logit v . tanh(rmsnorm(router_enc x)) then
 * has a standard deviation of about `routerGain` over tokens, so decisions split both ways and
 * few weights sit near 0.5. The adapter is initialised like the MLP (output gain 2).
 */
export interface TinyFlexiDepthOptions {
  /** Routed layer indices (each in [0, layers)). */
  layers: number[];
  /** File name (in the output directory) for an add-on safetensors file, e.g. "flexidepth.safetensors". */
  addonFile?: string;
  /** Approximate standard deviation of the router logit over tokens (default 3). */
  routerGain?: number;
  /** Router bottleneck reduction (default 16; the width is at least 2). */
  routerReduction?: number;
  /** Adapter reduction (default 16; the width is at least 2). */
  adapterReduction?: number;
  /** Write config.json in the official FlexiDepth checkpoint's layout (DDLlamaForCausalLM; default false). */
  official?: boolean;
}

/**
 * SkipLayer (arXiv 2311.15436) routers: bias-free Linear(hidden -> 2), logits ordered
 * [skip, run]; greedy decision run = logit[1] > logit[0].
 *
 *   mode 'layer':  model.layers.{i}.skip_router.weight            [2, d]  (input: input_layernorm(h))
 *   mode 'module': model.layers.{i}.self_attn.skip_router.weight  [2, d]  (input: input_layernorm(h))
 *                  model.layers.{i}.mlp.skip_router.weight        [2, d]  (input: post_attention_layernorm(h'))
 *
 * Rows ~ N(0, gain^2 / d). Without `addonFile` they go into the model's own checkpoint; config.json
 * is never changed.
 */
export interface TinySkipLayerOptions {
  mode: 'layer' | 'module';
  /** Layers with routers (default all). */
  layers?: number[];
  /** File name (in the output directory) for an add-on safetensors file, e.g. "skiplayer.safetensors". */
  addonFile?: string;
  /** Row scale (default 2): the run-minus-skip logit has a std of about gain * sqrt(2). */
  gain?: number;
}

/** Ids of the special tokens of a tiny model. */
export interface TinyModelSpecialTokens {
  /** `<|begin_of_text|>` */
  bos: number;
  /** `<|end_of_text|>` */
  endOfText: number;
  /** `<|start_header_id|>` */
  startHeader: number;
  /** `<|end_header_id|>` */
  endHeader: number;
  /** `<|eot_id|>` */
  eot: number;
}

/** What {@link writeTinyModel} wrote. */
export interface TinyModelInfo {
  /** Absolute path of the output directory. */
  dir: string;
  /** Absolute paths of every file written, in the order written. */
  files: string[];
  /** Absolute paths of the safetensors files. */
  weightFiles: string[];
  /** Tensor names of the model checkpoint in module (state_dict) order (add-on tensors excluded). */
  tensorNames: string[];
  /** Shapes by tensor name (checkpoint and add-on tensors). */
  tensorShapes: Record<string, number[]>;
  /** Absolute paths of the add-on safetensors files (flexidepth / skiplayer `addonFile`), in the order written. */
  addonFiles: string[];
  /** Names of the tensors written to add-on files, in module order. */
  addonTensorNames: string[];
  /** The object written to config.json. */
  config: Record<string, unknown>;
  /** Ids of the special tokens. */
  specialTokens: TinyModelSpecialTokens;
  /** Number of entries learned by BPE (bytes + merges), i.e. the ids below the special tokens in use. */
  bpeVocabSize: number;
}

// ---------------------------------------------------------------------------------------------
// Float encoders (f32 -> f16 / bf16, round to nearest, ties to even)
// ---------------------------------------------------------------------------------------------

const convF32 = new Float32Array(1);
const convU32 = new Uint32Array(convF32.buffer);

/** Bits of the float32 nearest to `value`. */
export function float32Bits(value: number): number {
  convF32[0] = value;
  return convU32[0]!;
}

/** IEEE binary16 bits of `value` (first rounded to float32), round to nearest even; NaN stays NaN. */
export function float32ToFloat16Bits(value: number): number {
  const x = float32Bits(value);
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return mant !== 0 ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  const e = exp - 127 + 15; // biased f16 exponent
  if (e >= 0x1f) return sign | 0x7c00; // overflow to infinity
  if (e >= 1) {
    let r = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (r & 1) === 1)) r += 1; // may carry into inf: correct
    return sign | r;
  }
  // Subnormal (or zero) in f16: value = m * 2^-24 with m = M * 2^(e - 14), M the 24-bit significand.
  if (exp === 0) return sign; // f32 zero / subnormal: far below the f16 range
  const shift = 14 - e; // >= 14
  if (shift > 24) return sign;
  const full = mant | 0x800000;
  let r = full >>> shift;
  const rem = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (r & 1) === 1)) r += 1; // may become the smallest normal: correct
  return sign | r;
}

/** bfloat16 bits of `value` (first rounded to float32), round to nearest even; NaN stays NaN. */
export function float32ToBfloat16Bits(value: number): number {
  const x = float32Bits(value);
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return ((x >>> 16) & 0x8000) | 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---------------------------------------------------------------------------------------------
// Deterministic PRNG
// ---------------------------------------------------------------------------------------------

/** FNV-1a over the UTF-16 code units of `s`, mixed with `seed`. */
function hashString(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Small fast counter PRNG (sfc32) seeded with splitmix32. */
class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    return this.u32() / 4294967296;
  }

  /**
   * Approximately standard normal: (sum of 4 uniforms - 2) * sqrt(3) has mean 0, variance 1
   * and support [-3.46, 3.46]. Only exact arithmetic, so identical everywhere.
   */
  normal(): number {
    return (this.uniform() + this.uniform() + this.uniform() + this.uniform() - 2) * SQRT3;
  }
}

const SQRT3 = Math.sqrt(3);

// ---------------------------------------------------------------------------------------------
// JSON in the style of Python's json.dumps(indent=2) / serde_json pretty printing
// ---------------------------------------------------------------------------------------------

/** A number that Python would hold as a float (written as `10000.0`, `1e-05`, ...). */
class PyFloat {
  constructor(readonly value: number) {}
}

const pyFloat = (v: number): PyFloat => new PyFloat(v);

/** Python's repr() of a finite float. */
function pythonFloatRepr(v: number): string {
  if (!Number.isFinite(v)) throw new Error(`non-finite float ${v} in JSON`);
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const expForm = v.toExponential(); // shortest round-trip digits, e.g. "-1.5e-5"
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(expForm);
  if (!m) throw new Error(`cannot format ${v}`);
  const sign = m[1]!;
  const digits = m[2]! + (m[3] ?? '');
  const exp = Number(m[4]);
  if (exp < -4 || exp >= 16) {
    const mant = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp);
    return `${sign}${mant}e${exp < 0 ? '-' : '+'}${e < 10 ? '0' : ''}${e}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const intLen = exp + 1;
  if (digits.length <= intLen) return `${sign}${digits}${'0'.repeat(intLen - digits.length)}.0`;
  return `${sign}${digits.slice(0, intLen)}.${digits.slice(intLen)}`;
}

type JsonLike = null | boolean | number | string | PyFloat | JsonLike[] | Map<string, JsonLike> | { [k: string]: JsonLike };

/**
 * Pretty JSON with two-space indentation. Plain objects have their keys sorted when
 * `sortKeys` is set (Python sort_keys=True); Maps keep their insertion order.
 */
function formatJson(value: JsonLike, sortKeys: boolean, indent = ''): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`non-finite number ${value} in JSON`);
    return String(value);
  }
  if (typeof value === 'string') return JSON.stringify(value);
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  const inner = indent + '  ';
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => inner + formatJson(v, sortKeys, inner)).join(',\n')}\n${indent}]`;
  }
  let entries: [string, JsonLike][];
  if (value instanceof Map) {
    entries = [...value.entries()];
  } else {
    entries = Object.keys(value).map((k) => [k, value[k]!] as [string, JsonLike]);
    if (sortKeys) entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJson(v, sortKeys, inner)}`).join(',\n')}\n${indent}}`;
}

/** Plain JS view of a JsonLike (PyFloat -> number, Map -> object). */
function toPlain(value: JsonLike): unknown {
  if (value instanceof PyFloat) return value.value;
  if (Array.isArray(value)) return value.map(toPlain);
  if (value instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, v] of value) o[k] = toPlain(v);
    return o;
  }
  if (value !== null && typeof value === 'object') {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(value)) o[k] = toPlain(value[k]!);
    return o;
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE tokenizer
// ---------------------------------------------------------------------------------------------

/**
 * Built-in training text for the BPE merges. Plain English prose with some digits and
 * punctuation, written for this package.
 */
const SAMPLE_TEXT = `The small model reads a line of text, one token at a time, and guesses what comes next.
It is not a clever model. Its weights were drawn at random, so the words it writes will make
little sense, but the numbers that flow through it are real, and every layer does the same work
that a large model does. That is the point: a test can check the arithmetic of the whole network
in a fraction of a second.

When the weather is fine, the children walk to the river and throw stones into the water. The
stones skip three or four times before they sink. Their mother watches from the bridge and counts
out loud: one, two, three, four, five. In the evening they go home, eat bread and soup, and talk
about the day. The old dog sleeps by the door and does not care about stones at all.

A tokenizer turns text into numbers. This one starts from the 256 possible bytes, so any string
can be written down, even one in another language or with symbols the training text never saw.
Then it learns merges: the most common pair of neighbouring pieces becomes a new piece, again and
again, until the vocabulary is as large as we want. Common words such as "the", "and", "of" and
"to" end up as single tokens, while rare words are spelled out in smaller parts.

There are 12 months in a year, 7 days in a week and 24 hours in a day. In 2024 the town had 3,500
people; by 2030 it may have 4,000 or more. The train leaves at 9:15 and arrives at 11:40, which
is two hours and twenty-five minutes later. Tickets cost $18.50 for adults and $9.25 for children.

Questions are welcome! What is the name of the tallest mountain? Where does the river begin? Why
is the sky blue in the day and dark at night? Who wrote the first book, and what was it about?
How many stars can you count before you fall asleep? Nobody knows all the answers, and that is fine.

She said, "I'll be there at noon." He replied, "We've already left, so we'll meet you at the
station." They're late again; it's the third time this month. You'd think they'd learn, but they
don't, and I'm sure they won't. Still, we like them, and they like us, and that's what matters.

Good software is tested often and carefully. Each function should do one thing and do it well;
each test should check one behaviour and explain what went wrong when it fails. Write the simple
version first, measure it, and only then make it faster. Keep the data small, the names clear and
the interfaces honest. When something breaks, read the error message before you change the code.

In the garden there are roses, tulips, daisies and a long row of green beans. The farmer plants
the seeds in spring, waters them in summer and picks the beans in the first weeks of autumn. The
birds eat some of the seeds, the rain washes others away, but most of them grow into strong plants.
`;

let cachedBytesToUnicode: string[] | null = null;

/**
 * GPT-2's reversible byte -> printable character table (bytes that are already printable map to
 * themselves; the others are shifted to U+0100 and up). Returned as an array indexed by byte.
 */
export function bytesToUnicode(): string[] {
  if (cachedBytesToUnicode) return cachedBytesToUnicode;
  const table: string[] = new Array<string>(256);
  const printable = (b: number): boolean =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (printable(b)) table[b] = String.fromCharCode(b);
    else table[b] = String.fromCharCode(256 + n++);
  }
  cachedBytesToUnicode = table;
  return table;
}

/** The 256 byte tokens in GPT-2 vocabulary order: printable bytes first, then the rest. */
function byteTokensInVocabOrder(): string[] {
  const table = bytesToUnicode();
  const order: number[] = [];
  for (let b = 0; b < 256; b++) if (table[b]!.charCodeAt(0) < 256) order.push(b);
  for (let b = 0; b < 256; b++) if (table[b]!.charCodeAt(0) >= 256) order.push(b);
  return order.map((b) => table[b]!);
}

/** GPT-2 pre-tokenization regex (what the ByteLevel pre-tokenizer applies with use_regex). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

interface BpeModel {
  vocab: string[]; // index = id
  merges: [string, string][];
}

const bpeCache = new Map<number, BpeModel>();

/**
 * Learns byte-level BPE merges on SAMPLE_TEXT until the vocabulary has `target` entries (or no
 * pair occurs any more). At each step the most frequent adjacent pair is merged; ties go to the
 * pair whose "a b" string sorts first, which makes training deterministic.
 */
function trainBpe(target: number): BpeModel {
  const cached = bpeCache.get(target);
  if (cached) return cached;
  const table = bytesToUnicode();
  const enc = new TextEncoder();
  const wordCounts = new Map<string, number>();
  for (const piece of SAMPLE_TEXT.match(GPT2_SPLIT) ?? []) {
    const mapped = Array.from(enc.encode(piece), (b) => table[b]!).join('');
    wordCounts.set(mapped, (wordCounts.get(mapped) ?? 0) + 1);
  }
  const words: { syms: string[]; count: number }[] = [];
  for (const w of [...wordCounts.keys()].sort()) words.push({ syms: Array.from(w), count: wordCounts.get(w)! });

  const vocab = byteTokensInVocabOrder();
  const known = new Set(vocab);
  const merges: [string, string][] = [];
  while (vocab.length < target) {
    const pairCounts = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        const key = w.syms[i]! + ' ' + w.syms[i + 1]!;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + w.count);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    for (const [key, c] of pairCounts) {
      if (c > bestCount || (c === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = c;
      }
    }
    if (best === null) break; // every word is a single token
    const sp = best.indexOf(' ');
    const a = best.slice(0, sp);
    const b = best.slice(sp + 1);
    merges.push([a, b]);
    const merged = a + b;
    if (!known.has(merged)) {
      known.add(merged);
      vocab.push(merged);
    }
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(merged);
          i++;
        } else {
          out.push(w.syms[i]!);
        }
      }
      w.syms = out;
    }
  }
  const model = { vocab, merges };
  bpeCache.set(target, model);
  return model;
}

const SPECIAL_TOKENS = [
  '<|begin_of_text|>',
  '<|end_of_text|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<|eot_id|>',
] as const;

/** Llama-3-style chat template (Jinja). */
export const TINY_CHAT_TEMPLATE =
  "{{- bos_token }}" +
  "{%- for message in messages %}" +
  "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}" +
  "{%- endfor %}" +
  "{%- if add_generation_prompt %}" +
  "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}" +
  "{%- endif %}";

function buildTokenizerJson(bpe: BpeModel, specialIds: number[], addBos: boolean): JsonLike {
  const addedTokens: JsonLike[] = SPECIAL_TOKENS.map((content, i) =>
    ordered([
      ['id', specialIds[i]!],
      ['content', content],
      ['single_word', false],
      ['lstrip', false],
      ['rstrip', false],
      ['normalized', false],
      ['special', true],
    ]),
  );
  const bosTok = SPECIAL_TOKENS[0];
  const bosId = specialIds[0]!;
  const special = (typeId: number): JsonLike =>
    ordered([['SpecialToken', ordered([['id', bosTok], ['type_id', typeId]])]]);
  const sequence = (id: string, typeId: number): JsonLike =>
    ordered([['Sequence', ordered([['id', id], ['type_id', typeId]])]]);
  const postProcessor: JsonLike = addBos
    ? ordered([
        ['type', 'TemplateProcessing'],
        ['single', [special(0), sequence('A', 0)]],
        ['pair', [special(0), sequence('A', 0), special(1), sequence('B', 1)]],
        [
          'special_tokens',
          ordered([[bosTok, ordered([['id', bosTok], ['ids', [bosId]], ['tokens', [bosTok]]])]]),
        ],
      ])
    : ordered([
        ['type', 'ByteLevel'],
        ['add_prefix_space', true],
        ['trim_offsets', false],
        ['use_regex', true],
      ]);
  const vocab = new Map<string, JsonLike>();
  bpe.vocab.forEach((tok, id) => vocab.set(tok, id));
  return ordered([
    ['version', '1.0'],
    ['truncation', null],
    ['padding', null],
    ['added_tokens', addedTokens],
    ['normalizer', null],
    [
      'pre_tokenizer',
      ordered([
        ['type', 'ByteLevel'],
        ['add_prefix_space', false],
        ['trim_offsets', true],
        ['use_regex', true],
      ]),
    ],
    ['post_processor', postProcessor],
    [
      'decoder',
      ordered([
        ['type', 'ByteLevel'],
        ['add_prefix_space', true],
        ['trim_offsets', true],
        ['use_regex', true],
      ]),
    ],
    [
      'model',
      ordered([
        ['type', 'BPE'],
        ['dropout', null],
        ['unk_token', null],
        ['continuing_subword_prefix', null],
        ['end_of_word_suffix', null],
        ['fuse_unk', false],
        ['byte_fallback', false],
        ['ignore_merges', false],
        ['vocab', vocab],
        ['merges', bpe.merges.map(([a, b]) => `${a} ${b}`)],
      ]),
    ],
  ]);
}

function ordered(entries: [string, JsonLike][]): Map<string, JsonLike> {
  return new Map(entries);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint
// ---------------------------------------------------------------------------------------------

const TRANSFORMERS_VERSION = '4.46.3';

/**
 * Gain on the projections that write into the residual stream (o_proj, down_proj): with 2 the
 * layers outweigh the token embedding, so the output depends on attention and context rather
 * than mostly on the current token (which, with tied embeddings, would just be repeated).
 */
const RESIDUAL_GAIN = 2;
/** Gain on lm_head: logits have a standard deviation of a few units (a spread of ~20-30). */
const LM_GAIN = 3;
/** Default FlexiDepth routerGain: the router logit's standard deviation over tokens. */
export const FLEXIDEPTH_ROUTER_GAIN = 3;
/** Default SkipLayer router gain. */
export const SKIPLAYER_ROUTER_GAIN = 2;
/** E[tanh(Z)^2] for Z ~ N(0, 1) (numerical integral), the variance of a router_norm'ed, tanh'ed unit. */
const TANH_SQ_MEAN = 0.3942;

interface TensorSpec {
  name: string;
  shape: number[];
  /** Fills `out` (length prod(shape)) with float32-representable values. */
  init: (rng: Rng, out: Float32Array) => void;
}

const DTYPE_INFO: Record<TinyDtype, { st: string; bytes: number; torch: string }> = {
  f32: { st: 'F32', bytes: 4, torch: 'float32' },
  f16: { st: 'F16', bytes: 2, torch: 'float16' },
  bf16: { st: 'BF16', bytes: 2, torch: 'bfloat16' },
};

function checkInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new RangeError(`writeTinyModel: ${name} must be an integer >= ${min} (got ${v})`);
  return v;
}

/** Normal(0, std^2) fill. */
const normalInit = (std: number) => (rng: Rng, out: Float32Array): void => {
  for (let i = 0; i < out.length; i++) out[i] = rng.normal() * std;
};

/** RMSNorm weights: uniform in [0.8, 1.2]. */
const normWeightInit = (rng: Rng, out: Float32Array): void => {
  for (let i = 0; i < out.length; i++) out[i] = 1 + 0.2 * (2 * rng.uniform() - 1);
};

/**
 * lm_head rows: N(0, (gain / sqrt(d))^2) scaled by a per-row factor in [0.5, 2). The row scales
 * give the logits a heavier upper tail, which widens the typical gap between the two largest
 * logits; near-ties still occur at a few percent of positions, so tests comparing greedy
 * output against a lower-precision engine should check the margin where they compare.
 */
const lmHeadInit = (rows: number, cols: number, gain: number) => (rng: Rng, out: Float32Array): void => {
  const std = gain / Math.sqrt(cols);
  for (let r = 0; r < rows; r++) {
    const u = rng.uniform();
    const scale = 0.5 + 1.5 * u * u;
    for (let c = 0; c < cols; c++) out[r * cols + c] = rng.normal() * std * scale;
  }
};

/** Layer index list check: integers in [0, layers), no duplicates; returned sorted. */
function checkLayerList(what: string, list: unknown, layers: number): number[] {
  if (!Array.isArray(list)) throw new RangeError(`writeTinyModel: ${what} must be an array of layer indices`);
  const out = [...(list as unknown[])].map((v) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= layers) {
      throw new RangeError(`writeTinyModel: ${what}: layer ${String(v)} out of range [0, ${layers})`);
    }
    return v;
  });
  out.sort((a, b) => a - b);
  for (let i = 1; i < out.length; i++) if (out[i] === out[i - 1]) throw new RangeError(`writeTinyModel: ${what}: layer ${out[i]} repeated`);
  return out;
}

function checkAddonFile(what: string, name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  if (typeof name !== 'string' || !/^[A-Za-z0-9._-]+\.safetensors$/.test(name) || name.startsWith('model')) {
    throw new RangeError(`writeTinyModel: ${what}.addonFile must be a plain *.safetensors file name not starting with "model" (got ${String(name)})`);
  }
  return name;
}

function writeSafetensorsFile(file: string, specs: TensorSpec[], dtype: TinyDtype, seed: number): number {
  const info = DTYPE_INFO[dtype];
  const sorted = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let offset = 0;
  const parts: string[] = ['"__metadata__":{"format":"pt"}'];
  for (const s of sorted) {
    const bytes = s.shape.reduce((p, d) => p * d, 1) * info.bytes;
    parts.push(
      `${JSON.stringify(s.name)}:{"dtype":"${info.st}","shape":[${s.shape.join(',')}],"data_offsets":[${offset},${offset + bytes}]}`,
    );
    offset += bytes;
  }
  let header = `{${parts.join(',')}}`;
  const pad = (8 - (Buffer.byteLength(header) % 8)) % 8;
  header += ' '.repeat(pad);
  const headerBytes = Buffer.from(header, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));

  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, prefix);
    fs.writeSync(fd, headerBytes);
    for (const s of sorted) {
      const n = s.shape.reduce((p, d) => p * d, 1);
      const values = new Float32Array(n);
      s.init(new Rng(hashString(s.name, seed)), values);
      // Little-endian bytes, written byte by byte so the host's endianness does not matter.
      let buf: Uint8Array;
      if (dtype === 'f32') {
        buf = new Uint8Array(n * 4);
        for (let i = 0; i < n; i++) {
          const bits = float32Bits(values[i]!);
          buf[4 * i] = bits & 0xff;
          buf[4 * i + 1] = (bits >>> 8) & 0xff;
          buf[4 * i + 2] = (bits >>> 16) & 0xff;
          buf[4 * i + 3] = bits >>> 24;
        }
      } else {
        buf = new Uint8Array(n * 2);
        const encode = dtype === 'f16' ? float32ToFloat16Bits : float32ToBfloat16Bits;
        for (let i = 0; i < n; i++) {
          const bits = encode(values[i]!);
          buf[2 * i] = bits & 0xff;
          buf[2 * i + 1] = bits >>> 8;
        }
      }
      fs.writeSync(fd, buf);
    }
  } finally {
    fs.closeSync(fd);
  }
  return offset;
}

/**
 * Writes a tiny random checkpoint (config, weights, tokenizer, generation config) into `dir`,
 * creating it if needed. Existing files of the same names are overwritten.
 */
export function writeTinyModel(dir: string, options: TinyModelOptions = {}): TinyModelInfo {
  const arch: TinyArch = options.arch ?? 'llama';
  if (arch !== 'llama' && arch !== 'mistral' && arch !== 'qwen2') throw new RangeError(`writeTinyModel: unknown arch ${String(arch)}`);
  const dtype: TinyDtype = options.dtype ?? 'f32';
  if (!(dtype in DTYPE_INFO)) throw new RangeError(`writeTinyModel: unknown dtype ${String(dtype)}`);
  const layers = checkInt('layers', options.layers ?? 2, 1);
  const hidden = checkInt('hidden', options.hidden ?? 64, 2);
  const heads = checkInt('heads', options.heads ?? 4, 1);
  const kvHeads = checkInt('kvHeads', options.kvHeads ?? (heads % 2 === 0 ? 2 : heads), 1);
  if (heads % kvHeads !== 0) throw new RangeError(`writeTinyModel: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  if (options.headDim === undefined && hidden % heads !== 0) {
    throw new RangeError(`writeTinyModel: hidden (${hidden}) must be a multiple of heads (${heads}) unless headDim is given`);
  }
  const headDim = checkInt('headDim', options.headDim ?? hidden / heads, 2);
  if (headDim % 2 !== 0) throw new RangeError(`writeTinyModel: headDim must be even (got ${headDim})`);
  const intermediate = checkInt('intermediate', options.intermediate ?? 128, 1);
  const vocabSize = checkInt('vocabSize', options.vocabSize ?? 320, 256 + SPECIAL_TOKENS.length);
  const maxPositions = checkInt('maxPositions', options.maxPositions ?? 256, 1);
  const tied = options.tied ?? false;
  const llamaBias = arch === 'llama' && (options.bias ?? false);
  const qkvBias = arch === 'qwen2' || llamaBias;
  const oBias = llamaBias;
  const ropeTheta = options.ropeTheta ?? 10000;
  if (!(ropeTheta > 0)) throw new RangeError('writeTinyModel: ropeTheta must be positive');
  const ropeScaling: TinyRopeScaling = options.ropeScaling ?? 'none';
  const slidingWindow = arch === 'mistral' ? (options.slidingWindow ?? null) : null;
  if (slidingWindow !== null) checkInt('slidingWindow', slidingWindow, 1);
  const shards = checkInt('shards', options.shards ?? 1, 1);
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed)) throw new RangeError('writeTinyModel: seed must be an integer');
  const eosList = options.eosList ?? false;
  const rmsNormEps = options.rmsNormEps ?? 1e-5;
  const addBos = options.addBos ?? true;
  const fd = options.flexidepth;
  const fdLayers = fd ? checkLayerList('flexidepth.layers', fd.layers, layers) : [];
  const fdAddon = fd ? checkAddonFile('flexidepth', fd.addonFile) : undefined;
  const fdGain = fd?.routerGain ?? FLEXIDEPTH_ROUTER_GAIN;
  if (fd && !(fdGain > 0 && Number.isFinite(fdGain))) throw new RangeError('writeTinyModel: flexidepth.routerGain must be positive');
  const fdR = fd ? Math.max(2, Math.floor(hidden / checkInt('flexidepth.routerReduction', fd.routerReduction ?? 16, 1))) : 0;
  const fdM = fd ? Math.max(2, Math.floor(intermediate / checkInt('flexidepth.adapterReduction', fd.adapterReduction ?? 16, 1))) : 0;
  const sl = options.skiplayer;
  if (sl && sl.mode !== 'layer' && sl.mode !== 'module') throw new RangeError(`writeTinyModel: skiplayer.mode must be 'layer' or 'module'`);
  const slLayers = sl ? (sl.layers === undefined ? Array.from({ length: layers }, (_, i) => i) : checkLayerList('skiplayer.layers', sl.layers, layers)) : [];
  const slAddon = sl ? checkAddonFile('skiplayer', sl.addonFile) : undefined;
  const slGain = sl?.gain ?? SKIPLAYER_ROUTER_GAIN;
  if (sl && !(slGain > 0 && Number.isFinite(slGain))) throw new RangeError('writeTinyModel: skiplayer.gain must be positive');

  // ---- tokenizer ----
  const bpe = trainBpe(vocabSize - SPECIAL_TOKENS.length);
  const specialIds = SPECIAL_TOKENS.map((_, i) => vocabSize - SPECIAL_TOKENS.length + i);
  const [bosId, endOfTextId, startHeaderId, endHeaderId, eotId] = specialIds as [number, number, number, number, number];
  const eosIds = eosList ? [endOfTextId, eotId] : endOfTextId;
  const eosToken = eosList ? '<|eot_id|>' : '<|end_of_text|>';

  // ---- config.json ----
  let ropeScalingJson: JsonLike = null;
  if (ropeScaling === 'llama3') {
    ropeScalingJson = {
      factor: pyFloat(options.ropeFactor ?? 8),
      high_freq_factor: pyFloat(4),
      low_freq_factor: pyFloat(1),
      original_max_position_embeddings: Math.max(1, Math.floor(maxPositions / 4)),
      rope_type: 'llama3',
    };
  } else if (ropeScaling === 'linear') {
    ropeScalingJson = { factor: pyFloat(options.ropeFactor ?? 4), rope_type: 'linear' };
  } else if (ropeScaling !== 'none') {
    throw new RangeError(`writeTinyModel: unknown ropeScaling ${String(ropeScaling)}`);
  }
  const common: { [k: string]: JsonLike } = {
    attention_dropout: pyFloat(0),
    bos_token_id: bosId,
    eos_token_id: eosIds,
    head_dim: headDim,
    hidden_act: 'silu',
    hidden_size: hidden,
    initializer_range: pyFloat(0.02),
    intermediate_size: intermediate,
    max_position_embeddings: maxPositions,
    num_attention_heads: heads,
    num_hidden_layers: layers,
    num_key_value_heads: kvHeads,
    rms_norm_eps: pyFloat(rmsNormEps),
    rope_theta: pyFloat(ropeTheta),
    tie_word_embeddings: tied,
    torch_dtype: DTYPE_INFO[dtype].torch,
    transformers_version: TRANSFORMERS_VERSION,
    use_cache: true,
    vocab_size: vocabSize,
  };
  let configJson: { [k: string]: JsonLike };
  if (arch === 'llama') {
    configJson = {
      ...common,
      architectures: ['LlamaForCausalLM'],
      attention_bias: llamaBias,
      mlp_bias: false,
      model_type: 'llama',
      pretraining_tp: 1,
      rope_scaling: ropeScalingJson,
    };
  } else if (arch === 'mistral') {
    configJson = {
      ...common,
      architectures: ['MistralForCausalLM'],
      model_type: 'mistral',
      sliding_window: slidingWindow,
    };
    if (ropeScalingJson !== null) configJson['rope_scaling'] = ropeScalingJson;
  } else {
    configJson = {
      ...common,
      architectures: ['Qwen2ForCausalLM'],
      max_window_layers: layers,
      model_type: 'qwen2',
      rope_scaling: ropeScalingJson,
      sliding_window: null,
      use_sliding_window: false,
    };
  }
  if (fd && fdAddon === undefined) configJson['routing_layers'] = fdLayers;
  if (fd?.official) {
    if (arch !== 'llama' || fdAddon !== undefined)
      throw new RangeError("writeTinyModel: flexidepth.official needs arch 'llama' and no addonFile (the official checkpoint is a Llama with routers in its own weights)");
    configJson['architectures'] = ['DDLlamaForCausalLM'];
    configJson['model_type'] = 'ddllama';
    configJson['auto_map'] = {
      AutoConfig: 'configuration_ddllama.DDLlamaConfig',
      AutoModel: 'modeling_ddllama.DDLlamaModel',
      AutoModelForCausalLM: 'modeling_ddllama.DDLlamaForCausalLM',
    };
  }

  // ---- tensors, in module (state_dict) order ----
  const d = hidden;
  const qDim = heads * headDim;
  const kvDim = kvHeads * headDim;
  const linear = (name: string, out: number, inp: number, gain = 1): TensorSpec => ({
    name,
    shape: [out, inp],
    init: normalInit(gain / Math.sqrt(inp)),
  });
  const biasT = (name: string, n: number): TensorSpec => ({ name, shape: [n], init: normalInit(0.1) });
  const normT = (name: string, n: number): TensorSpec => ({ name, shape: [n], init: normWeightInit });
  // router_head: N(0, 1/d), then scaled so that |router_dec^T router_head| = target. The
  // router_dec values are regenerated from that tensor's own stream (same seed and name).
  const routerHead = (decName: string, r: number, target: number): TensorSpec['init'] => (rng, out) => {
    normalInit(1 / Math.sqrt(d))(rng, out);
    const dec = new Float32Array(d * r);
    normalInit(1 / Math.sqrt(r))(new Rng(hashString(decName, seed)), dec);
    let n2 = 0;
    for (let j = 0; j < r; j++) {
      let v = 0;
      for (let i = 0; i < d; i++) v += dec[i * r + j]! * out[i]!;
      n2 += v * v;
    }
    const scale = target / Math.sqrt(n2);
    for (let i = 0; i < d; i++) out[i] = out[i]! * scale;
  };
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [vocabSize, d], init: normalInit(1) }];
  /** Tensors for the add-on files, by file name. */
  const addonSpecs = new Map<string, TensorSpec[]>();
  const place = (file: string | undefined, s: TensorSpec): void => {
    if (file === undefined) {
      specs.push(s);
      return;
    }
    let list = addonSpecs.get(file);
    if (!list) addonSpecs.set(file, (list = []));
    list.push(s);
  };
  const slRouter = (name: string): TensorSpec => ({ name, shape: [2, d], init: normalInit(slGain / Math.sqrt(d)) });
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    const slHere = sl !== undefined && slLayers.includes(i);
    specs.push(linear(`${p}.self_attn.q_proj.weight`, qDim, d));
    if (qkvBias) specs.push(biasT(`${p}.self_attn.q_proj.bias`, qDim));
    specs.push(linear(`${p}.self_attn.k_proj.weight`, kvDim, d));
    if (qkvBias) specs.push(biasT(`${p}.self_attn.k_proj.bias`, kvDim));
    specs.push(linear(`${p}.self_attn.v_proj.weight`, kvDim, d));
    if (qkvBias) specs.push(biasT(`${p}.self_attn.v_proj.bias`, kvDim));
    specs.push(linear(`${p}.self_attn.o_proj.weight`, d, qDim, RESIDUAL_GAIN));
    if (oBias) specs.push(biasT(`${p}.self_attn.o_proj.bias`, d));
    if (slHere && sl.mode === 'module') place(slAddon, slRouter(`${p}.self_attn.skip_router.weight`));
    specs.push(linear(`${p}.mlp.gate_proj.weight`, intermediate, d));
    specs.push(linear(`${p}.mlp.up_proj.weight`, intermediate, d));
    specs.push(linear(`${p}.mlp.down_proj.weight`, d, intermediate, RESIDUAL_GAIN));
    if (slHere && sl.mode === 'module') place(slAddon, slRouter(`${p}.mlp.skip_router.weight`));
    specs.push(normT(`${p}.input_layernorm.weight`, d));
    specs.push(normT(`${p}.post_attention_layernorm.weight`, d));
    if (fd !== undefined && fdLayers.includes(i)) {
      const decName = `${p}.router.router_dec.weight`;
      place(fdAddon, linear(`${p}.router.router_enc.weight`, fdR, d));
      place(fdAddon, normT(`${p}.router.router_norm.weight`, fdR));
      place(fdAddon, linear(decName, d, fdR));
      place(fdAddon, { name: `${p}.router.router_head.weight`, shape: [1, d], init: routerHead(decName, fdR, fdGain / Math.sqrt(TANH_SQ_MEAN)) });
      place(fdAddon, linear(`${p}.router_proj.gate_proj.weight`, fdM, d));
      place(fdAddon, linear(`${p}.router_proj.down_proj.weight`, fdM, d));
      place(fdAddon, linear(`${p}.router_proj.up_proj.weight`, d, fdM, RESIDUAL_GAIN));
    }
    if (slHere && sl.mode === 'layer') place(slAddon, slRouter(`${p}.skip_router.weight`));
  }
  specs.push(normT('model.norm.weight', d));
  if (!tied) specs.push({ name: 'lm_head.weight', shape: [vocabSize, d], init: lmHeadInit(vocabSize, d, LM_GAIN) });
  if (shards > specs.length) throw new RangeError(`writeTinyModel: shards (${shards}) exceeds the tensor count (${specs.length})`);

  // ---- write ----
  const outDir = path.resolve(dir);
  fs.mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  const write = (name: string, text: string): void => {
    const p = path.join(outDir, name);
    fs.writeFileSync(p, text);
    files.push(p);
  };

  write('config.json', formatJson(configJson, true) + '\n');
  write(
    'generation_config.json',
    formatJson({ _from_model_config: true, bos_token_id: bosId, eos_token_id: eosIds, transformers_version: TRANSFORMERS_VERSION }, true) + '\n',
  );

  const elementBytes = DTYPE_INFO[dtype].bytes;
  const tensorBytes = (s: TensorSpec): number => s.shape.reduce((p, x) => p * x, 1) * elementBytes;
  const weightFiles: string[] = [];
  if (shards === 1) {
    const p = path.join(outDir, 'model.safetensors');
    writeSafetensorsFile(p, specs, dtype, seed);
    files.push(p);
    weightFiles.push(p);
  } else {
    // Contiguous groups in module order, cut where the running byte total crosses k/n of the
    // total, with at least one tensor per shard.
    const total = specs.reduce((s, t) => s + tensorBytes(t), 0);
    const groups: TensorSpec[][] = [];
    let start = 0;
    let acc = 0;
    for (let k = 0; k < shards; k++) {
      const remainingShards = shards - k - 1;
      let end = start + 1;
      acc += tensorBytes(specs[start]!);
      const goal = (total * (k + 1)) / shards;
      while (end < specs.length - remainingShards && (k === shards - 1 || acc + tensorBytes(specs[end]!) <= goal)) {
        acc += tensorBytes(specs[end]!);
        end++;
      }
      groups.push(specs.slice(start, end));
      start = end;
    }
    const pad5 = (n: number): string => String(n).padStart(5, '0');
    const weightMap: { [k: string]: JsonLike } = {};
    groups.forEach((g, k) => {
      const fileName = `model-${pad5(k + 1)}-of-${pad5(shards)}.safetensors`;
      const p = path.join(outDir, fileName);
      writeSafetensorsFile(p, g, dtype, seed);
      files.push(p);
      weightFiles.push(p);
      for (const t of g) weightMap[t.name] = fileName;
    });
    write('model.safetensors.index.json', formatJson({ metadata: { total_size: total }, weight_map: weightMap }, true) + '\n');
  }
  const addonFiles: string[] = [];
  const addonTensorNames: string[] = [];
  for (const [fileName, list] of addonSpecs) {
    const p = path.join(outDir, fileName);
    writeSafetensorsFile(p, list, dtype, seed);
    files.push(p);
    addonFiles.push(p);
    for (const s of list) addonTensorNames.push(s.name);
  }

  write('tokenizer.json', formatJson(buildTokenizerJson(bpe, specialIds, addBos), false) + '\n');
  const addedTokensDecoder: { [k: string]: JsonLike } = {};
  SPECIAL_TOKENS.forEach((content, i) => {
    addedTokensDecoder[String(specialIds[i])] = {
      content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  });
  write(
    'tokenizer_config.json',
    formatJson(
      {
        add_bos_token: addBos,
        add_eos_token: false,
        added_tokens_decoder: addedTokensDecoder,
        bos_token: SPECIAL_TOKENS[0],
        chat_template: TINY_CHAT_TEMPLATE,
        clean_up_tokenization_spaces: false,
        eos_token: eosToken,
        model_input_names: ['input_ids', 'attention_mask'],
        model_max_length: maxPositions,
        tokenizer_class: 'PreTrainedTokenizerFast',
      },
      true,
    ) + '\n',
  );

  const tensorShapes: Record<string, number[]> = {};
  for (const s of specs) tensorShapes[s.name] = [...s.shape];
  for (const list of addonSpecs.values()) for (const s of list) tensorShapes[s.name] = [...s.shape];
  return {
    dir: outDir,
    files,
    weightFiles,
    addonFiles,
    addonTensorNames,
    tensorNames: specs.map((s) => s.name),
    tensorShapes,
    config: toPlain(configJson) as Record<string, unknown>,
    specialTokens: { bos: bosId, endOfText: endOfTextId, startHeader: startHeaderId, endHeader: endHeaderId, eot: eotId },
    bpeVocabSize: bpe.vocab.length,
  };
}
