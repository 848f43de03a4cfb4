/**
 * Converts a (tiny) Hugging Face checkpoint directory to one GGUF file the way llama.cpp's
 * convert_hf_to_gguf.py does for Llama, Mistral and Qwen2: its metadata keys (general.*,
 * llama.* / qwen2.*, tokenizer.ggml.*, tokenizer.chat_template), its tensor names
 * (token_embd, blk.N.attn_q, ..., output_norm, output), dimensions fastest-first, 1-D tensors as
 * F32, and for architecture `llama` the Q/K row permutation (LlamaModel.permute). So a test can
 * load the same weights from both files and compare.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { float32ToBfloat16Bits, float32ToFloat16Bits, float32Bits } from './floatBits';
import { Q8_0_BLOCK, quantizeQ8_0 } from './ggmlQ8';
import { writeGguf, type GgufMetadataValue, type GgufTensor } from './ggufWriter';
import { quantizeKQuant, useMoreBits, type KQuantType } from './kQuants';

export interface GgufConvertOptions {
  /**
   * Type of the 2-D tensors (default: the checkpoint's own, so the bytes are the same). `Q8_0` is
   * convert_hf_to_gguf.py's `--outtype q8_0`: every 2-D tensor (the embedding table too) in
   * llama.cpp's Q8_0 blocks, and F16 where a row is not a whole number of blocks of 32.
   */
  type?: 'F32' | 'F16' | 'BF16' | 'Q8_0';
  /** Writes general.alignment (default: not written, so readers use 32). */
  alignment?: number;
  /**
   * Permute the Q/K rows of architecture llama as llama.cpp does (default true). false writes
   * what a converter that forgot the permutation would: a different model, for tests.
   */
  permuteQK?: boolean;
  /**
   * Write the decoder projections and output.weight as K-quants with the engine's choice for
   * loadModel's `weights` option: 'q4_k' is llama.cpp's Q4_K_M mix (Q4_K; attn_v and ffn_down in
   * Q6_K on the layers useMoreBits picks; output Q6_K), 'q6_k' all Q6_K. Every such matrix must be
   * a multiple of 256 columns wide. Quantized with src/testing/kQuants.ts (llama.cpp's reference
   * quantizers). Default: not quantized.
   */
  weights?: 'q4_k' | 'q6_k';
  /** With `weights`, token_embd too (Q4_K for 'q4_k', as llama.cpp's Q4_K_M files have it; Q6_K for 'q6_k'). */
  quantizeEmbedding?: boolean;
}

/** The K-quant convertToGguf writes tensor `name` in (HF name), or undefined to keep it as it is. */
function kQuantTypeOf(
  name: string,
  weights: 'q4_k' | 'q6_k',
  layers: number,
  embedding: boolean,
): KQuantType | undefined {
  const base: KQuantType = weights === 'q4_k' ? 'Q4_K' : 'Q6_K';
  if (name === 'lm_head.weight') return 'Q6_K';
  if (name === 'model.embed_tokens.weight') return embedding ? base : undefined;
  const m = /^model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/.exec(name);
  if (!m) return undefined;
  const more = /v_proj|down_proj/.test(m[2]!) && useMoreBits(Number(m[1]), layers);
  return more ? 'Q6_K' : base;
}

const HF_TO_GGUF_LAYER: Record<string, string> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'post_attention_layernorm.weight': 'ffn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.k_proj.weight': 'attn_k.weight',
  'self_attn.v_proj.weight': 'attn_v.weight',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'self_attn.q_proj.bias': 'attn_q.bias',
  'self_attn.k_proj.bias': 'attn_k.bias',
  'self_attn.v_proj.bias': 'attn_v.bias',
  'self_attn.o_proj.bias': 'attn_output.bias',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
};

/** The GGUF name llama.cpp gives a Hugging Face tensor name (undefined: not converted). */
export function ggufTensorName(hf: string): string | undefined {
  if (hf === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (hf === 'model.norm.weight') return 'output_norm.weight';
  if (hf === 'lm_head.weight') return 'output.weight';
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const rest = m && HF_TO_GGUF_LAYER[m[2]!];
  return m && rest ? `blk.${m[1]}.${rest}` : undefined;
}

interface StTensor {
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  bytes: Buffer;
}

function readSafetensors(file: string): Map<string, StTensor> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out = new Map<string, StTensor>();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = t.data_offsets;
    out.set(name, { dtype: t.dtype as StTensor['dtype'], shape: t.shape, bytes: buf.subarray(8 + n + b, 8 + n + e) });
  }
  return out;
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function decode(t: StTensor): Float32Array {
  const n = t.dtype === 'F32' ? t.bytes.length / 4 : t.bytes.length / 2;
  const out = new Float32Array(n);
  if (t.dtype === 'BF16') {
    // bf16 is the top half of an f32: one integer store per value (benchmark models are large)
    const bits = new Uint32Array(out.buffer);
    const b = t.bytes;
    for (let i = 0; i < n; i++) bits[i] = ((b[2 * i + 1]! << 24) | (b[2 * i]! << 16)) >>> 0;
    return out;
  }
  for (let i = 0; i < n; i++) {
    if (t.dtype === 'F32') out[i] = t.bytes.readFloatLE(4 * i);
    else {
      const h = t.bytes.readUInt16LE(2 * i);
      out[i] = t.dtype === 'F16' ? f16ToF32(h) : new Float32Array(new Uint32Array([h << 16]).buffer)[0]!;
    }
  }
  return out;
}

function encode(values: Float32Array, type: 'F32' | 'F16' | 'BF16'): Uint8Array {
  const b = Buffer.alloc(values.length * (type === 'F32' ? 4 : 2));
  for (let i = 0; i < values.length; i++) {
    if (type === 'F32') b.writeUInt32LE(float32Bits(values[i]!) >>> 0, 4 * i);
    else b.writeUInt16LE((type === 'F16' ? float32ToFloat16Bits : float32ToBfloat16Bits)(values[i]!), 2 * i);
  }
  return b;
}

/** llama.cpp's LlamaModel.permute on the rows of a [rows, cols] tensor (bytes per row `rowBytes`). */
function permuteRows(bytes: Uint8Array, rows: number, heads: number): Uint8Array {
  const rowBytes = bytes.length / rows;
  const hd = rows / heads;
  const half = hd / 2;
  const out = new Uint8Array(bytes.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const from = (h * hd + j * half + i) * rowBytes;
        out.set(bytes.subarray(from, from + rowBytes), (h * hd + 2 * i + j) * rowBytes);
      }
  return out;
}

/** convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: one divisor per rotary frequency. */
function llama3RopeFactors(rs: Record<string, number>, base: number, headDim: number): Float32Array {
  const factor = rs.factor ?? 8;
  const low = rs.low_freq_factor ?? 1;
  const high = rs.high_freq_factor ?? 4;
  const oldContext = rs.original_max_position_embeddings ?? 8192;
  const lowWavelen = oldContext / low;
  const highWavelen = oldContext / high;
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < headDim / 2; i++) {
    const freq = 1 / base ** ((2 * i) / headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = factor;
    else {
      const smooth = (oldContext / wavelen - low) / (high - low);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/** GGUF token types (llama.cpp gguf.TokenType). */
export const GGUF_TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

function tokenizerMetadata(dir: string, vocabSize: number): [string, GgufMetadataValue][] {
  const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as {
    model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
    added_tokens: { id: number; content: string; special: boolean }[];
  };
  const tcFile = path.join(dir, 'tokenizer_config.json');
  const tc = (fs.existsSync(tcFile) ? JSON.parse(fs.readFileSync(tcFile, 'utf8')) : {}) as Record<string, unknown>;
  if (tj.model.type !== 'BPE')
    throw new RangeError(`convertToGguf: only BPE tokenizers are converted (got ${tj.model.type})`);
  const tokens: string[] = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const types: number[] = Array.from({ length: vocabSize }, () => GGUF_TOKEN_TYPE.unused);
  for (const [tok, id] of Object.entries(tj.model.vocab)) {
    if (id >= vocabSize) continue;
    tokens[id] = tok;
    types[id] = GGUF_TOKEN_TYPE.normal;
  }
  const ids = new Map<string, number>();
  for (const a of tj.added_tokens) {
    if (a.id >= vocabSize) continue;
    tokens[a.id] = a.content;
    types[a.id] = a.special ? GGUF_TOKEN_TYPE.control : GGUF_TOKEN_TYPE.userDefined;
    ids.set(a.content, a.id);
  }
  const md: [string, GgufMetadataValue][] = [
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: 'gpt-2' }],
    ['tokenizer.ggml.tokens', { type: 'string', array: tokens }],
    ['tokenizer.ggml.token_type', { type: 'i32', array: types }],
    [
      'tokenizer.ggml.merges',
      { type: 'string', array: tj.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m)) },
    ],
  ];
  const special = (key: string, field: string) => {
    const v = tc[field];
    const content =
      typeof v === 'string' ? v : v && typeof v === 'object' ? (v as { content?: string }).content : undefined;
    const id = content === undefined ? undefined : ids.get(content);
    if (id !== undefined) md.push([`tokenizer.ggml.${key}`, { type: 'u32', value: id }]);
  };
  special('bos_token_id', 'bos_token');
  special('eos_token_id', 'eos_token');
  special('unknown_token_id', 'unk_token');
  special('padding_token_id', 'pad_token');
  if (typeof tc.add_bos_token === 'boolean')
    md.push(['tokenizer.ggml.add_bos_token', { type: 'bool', value: tc.add_bos_token }]);
  if (typeof tc.add_eos_token === 'boolean')
    md.push(['tokenizer.ggml.add_eos_token', { type: 'bool', value: tc.add_eos_token }]);
  if (typeof tc.chat_template === 'string')
    md.push(['tokenizer.chat_template', { type: 'string', value: tc.chat_template }]);
  return md;
}

/**
 * Writes the checkpoint in `dir` (config.json, model.safetensors or its shards, tokenizer.json,
 * tokenizer_config.json) as the GGUF file `file`. Returns the file's size in bytes.
 */
export function convertToGguf(dir: string, file: string, options: GgufConvertOptions = {}): number {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const archName = (cfg.architectures as string[])[0];
  const arch =
    archName === 'Qwen2ForCausalLM'
      ? 'qwen2'
      : archName === 'LlamaForCausalLM' || archName === 'MistralForCausalLM'
        ? 'llama'
        : undefined;
  if (!arch) throw new RangeError(`convertToGguf: architecture ${String(archName)} is not converted`);
  const num = (k: string, def?: number): number => (typeof cfg[k] === 'number' ? (cfg[k] as number) : def!);
  const heads = num('num_attention_heads');
  const kvHeads = num('num_key_value_heads', heads);
  const hidden = num('hidden_size');
  const headDim = num('head_dim', hidden / heads);
  const vocabSize = num('vocab_size');
  const md: [string, GgufMetadataValue][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.name', { type: 'string', value: path.basename(dir) }],
    [`${arch}.vocab_size`, { type: 'u32', value: vocabSize }],
    [`${arch}.context_length`, { type: 'u32', value: num('max_position_embeddings', 2048) }],
    [`${arch}.embedding_length`, { type: 'u32', value: hidden }],
    [`${arch}.block_count`, { type: 'u32', value: num('num_hidden_layers') }],
    [`${arch}.feed_forward_length`, { type: 'u32', value: num('intermediate_size') }],
    [`${arch}.attention.head_count`, { type: 'u32', value: heads }],
    [`${arch}.attention.head_count_kv`, { type: 'u32', value: kvHeads }],
    [`${arch}.rope.freq_base`, { type: 'f32', value: num('rope_theta', 10000) }],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: num('rms_norm_eps', 1e-6) }],
    [`${arch}.rope.dimension_count`, { type: 'u32', value: headDim }],
  ];
  if (headDim !== hidden / heads) {
    md.push([`${arch}.attention.key_length`, { type: 'u32', value: headDim }]);
    md.push([`${arch}.attention.value_length`, { type: 'u32', value: headDim }]);
  }
  const rs = cfg.rope_scaling as { rope_type?: string; type?: string; factor?: number } | null | undefined;
  const ropeType = rs ? (rs.rope_type ?? rs.type) : undefined;
  let ropeFreqs: Float32Array | undefined;
  if (ropeType === 'linear') {
    md.push([`${arch}.rope.scaling.type`, { type: 'string', value: 'linear' }]);
    md.push([`${arch}.rope.scaling.factor`, { type: 'f32', value: rs!.factor! }]);
  } else if (ropeType === 'llama3') {
    ropeFreqs = llama3RopeFactors(rs as Record<string, number>, num('rope_theta', 10000), headDim);
  } else if (ropeType && ropeType !== 'default') {
    throw new RangeError(`convertToGguf: rope_scaling ${ropeType} is not converted`);
  }
  md.push(...tokenizerMetadata(dir, vocabSize));

  const index = path.join(dir, 'model.safetensors.index.json');
  const files = fs.existsSync(index)
    ? [
        ...new Set(
          Object.values(
            (JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map,
          ),
        ),
      ].map((f) => path.join(dir, f))
    : [path.join(dir, 'model.safetensors')];
  const tensors: GgufTensor[] = [];
  for (const f of files) {
    for (const [name, t] of readSafetensors(f)) {
      const gname = ggufTensorName(name);
      if (!gname) throw new RangeError(`convertToGguf: tensor ${name} has no GGUF name`);
      const oneD = t.shape.length === 1;
      const k = options.weights
        ? kQuantTypeOf(name, options.weights, num('num_hidden_layers'), options.quantizeEmbedding ?? false)
        : undefined;
      if (k && t.shape[1]! % 256 !== 0)
        throw new RangeError(`convertToGguf: ${name} is ${t.shape[1]} wide, not a multiple of 256 for ${k}`);
      let plain: 'F32' | 'F16' | 'BF16' | 'Q8_0' = oneD ? 'F32' : (options.type ?? t.dtype);
      if (plain === 'Q8_0' && t.shape[t.shape.length - 1]! % Q8_0_BLOCK !== 0) plain = 'F16';
      const type = k ?? plain;
      let bytes: Uint8Array;
      if (k) bytes = quantizeKQuant(k, decode(t));
      else if (plain === t.dtype) bytes = t.bytes;
      else if (plain === 'Q8_0') bytes = quantizeQ8_0(decode(t));
      else bytes = encode(decode(t), plain);
      if (arch === 'llama' && options.permuteQK !== false && /\.self_attn\.[qk]_proj\./.test(name))
        bytes = permuteRows(bytes, t.shape[0]!, name.includes('.q_proj.') ? heads : kvHeads);
      tensors.push({ name: gname, dims: [...t.shape].reverse(), type, data: bytes });
    }
  }
  if (ropeFreqs)
    tensors.push({ name: 'rope_freqs.weight', dims: [ropeFreqs.length], type: 'F32', data: encode(ropeFreqs, 'F32') });
  return writeGguf(file, { metadata: md, tensors, alignment: options.alignment });
}
