/**
 * A GGUF file's metadata as the engine's model config: general.architecture `llama` (Llama,
 * Mistral) or `qwen2`, and the `<arch>.*` hyperparameters llama.cpp's converter writes, validated
 * like config.json (typed errors name the file and the key). The header itself is parsed natively
 * (native/gguf.cc: one parser, with its limits, for the loader, the fuzzer and this).
 */
import { native, type NativeGgufHeader } from './binding';
import type { Architecture, ModelConfig } from './config';
import { ModelFormatError, UnsupportedModelError, fromNative } from './errors';

/** GGUF architectures depthgate runs, and the Hugging Face architecture each stands for. */
export const GGUF_ARCHITECTURES: Record<string, Architecture> = {
  llama: 'LlamaForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

/** Reads and validates a GGUF file's header (no tensor data is read). Typed errors name the file. */
export function readGgufHeader(file: string): NativeGgufHeader {
  try {
    return native().readGgufHeader(file);
  } catch (e) {
    throw fromNative(e);
  }
}

/** Typed access to metadata values; every failure names the key. */
export class GgufFields {
  constructor(
    readonly header: NativeGgufHeader,
    readonly file: string,
  ) {}
  fail(key: string, why: string): never {
    throw new ModelFormatError(`GGUF metadata '${key}' ${why}`, this.file);
  }
  /** The value of `key` (own properties only: a key such as 'constructor' is just a key). */
  get(key: string): unknown {
    return Object.hasOwn(this.header.metadata, key) ? this.header.metadata[key] : undefined;
  }
  has(key: string): boolean {
    return Object.hasOwn(this.header.metadata, key);
  }
  private type(key: string): string {
    return Object.hasOwn(this.header.metadataTypes, key) ? this.header.metadataTypes[key]! : '';
  }
  int(key: string, opts: { min?: number; def?: number } = {}): number {
    const v = this.get(key);
    if (v === undefined) {
      if (opts.def !== undefined) return opts.def;
      this.fail(key, 'is missing');
    }
    if (!/^u?int(8|16|32|64)$/.test(this.type(key))) this.fail(key, `must be an integer, got a ${this.type(key)}`);
    const n = typeof v === 'bigint' ? Number.MAX_SAFE_INTEGER : (v as number);
    if (n < (opts.min ?? 1)) this.fail(key, `must be at least ${opts.min ?? 1}, got ${n}`);
    if (n > 2 ** 31 - 1) this.fail(key, `is too large (${String(v)})`);
    return n;
  }
  num(key: string, def: number, opts: { positive?: boolean } = {}): number {
    const v = this.get(key);
    if (v === undefined) return def;
    if (!/^(u?int(8|16|32|64)|float(32|64))$/.test(this.type(key)))
      this.fail(key, `must be a number, got a ${this.type(key)}`);
    const n = Number(v);
    if (!Number.isFinite(n)) this.fail(key, `must be finite, got ${n}`);
    if (opts.positive && n <= 0) this.fail(key, `must be positive, got ${n}`);
    return n;
  }
  str(key: string): string | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(key, `must be a string, got a ${this.type(key)}`);
    return v;
  }
  bool(key: string): boolean | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') this.fail(key, `must be a bool, got a ${this.type(key)}`);
    return v;
  }
}

/** The model config of a GGUF file, from its metadata and tensor table. */
export function ggufModelConfig(header: NativeGgufHeader, file: string): ModelConfig {
  const f: GgufFields = new GgufFields(header, file);
  const archName = f.str('general.architecture');
  if (archName === undefined) f.fail('general.architecture', 'is missing');
  const architecture = GGUF_ARCHITECTURES[archName];
  if (!architecture)
    throw new UnsupportedModelError(
      `GGUF architecture '${archName}' is not supported (supported: ${Object.keys(GGUF_ARCHITECTURES).join(', ')})`,
      file,
    );
  const a = archName;
  const tensors = new Map(header.tensors.map((t) => [t.name, t]));
  const hidden = f.int(`${a}.embedding_length`);
  const heads = f.int(`${a}.attention.head_count`);
  const kvHeads = f.int(`${a}.attention.head_count_kv`, { def: heads });
  if (heads % kvHeads !== 0)
    f.fail(`${a}.attention.head_count`, `(${heads}) must be a multiple of ${a}.attention.head_count_kv (${kvHeads})`);
  const keyLength = f.int(`${a}.attention.key_length`, { def: 0, min: 0 });
  const valueLength = f.int(`${a}.attention.value_length`, { def: keyLength, min: 0 });
  if (keyLength !== valueLength)
    throw new UnsupportedModelError(
      `GGUF metadata '${a}.attention.key_length' (${keyLength}) differs from value_length (${valueLength})`,
      file,
    );
  if (keyLength === 0 && hidden % heads !== 0)
    f.fail(
      `${a}.embedding_length`,
      `(${hidden}) must be divisible by ${a}.attention.head_count (${heads}) when ${a}.attention.key_length is not given`,
    );
  const headDim = keyLength || hidden / heads;
  if (headDim % 2 !== 0) f.fail(`${a}.attention.key_length`, `must be even for rotary embeddings, got ${headDim}`);
  const ropeDims = f.int(`${a}.rope.dimension_count`, { def: headDim });
  if (ropeDims !== headDim)
    throw new UnsupportedModelError(
      `GGUF metadata '${a}.rope.dimension_count' is ${ropeDims}: partial rotary embeddings are not supported (head size ${headDim})`,
      file,
    );
  let ropeType: ModelConfig['ropeType'] = 'default';
  let ropeFactor = 1;
  const scaling = f.str(`${a}.rope.scaling.type`);
  if (scaling === 'linear') {
    ropeType = 'linear';
    ropeFactor = f.num(`${a}.rope.scaling.factor`, NaN, { positive: true });
    if (Number.isNaN(ropeFactor)) f.fail(`${a}.rope.scaling.factor`, 'is missing');
  } else if (scaling !== undefined && scaling !== 'none') {
    throw new UnsupportedModelError(
      `GGUF metadata '${a}.rope.scaling.type' '${scaling}' is not supported (none, linear)`,
      file,
    );
  }
  // A rope_freqs.weight tensor (Llama 3.x) divides the frequencies natively (native/model.cc).
  const tokens = f.get('tokenizer.ggml.tokens');
  const embd = tensors.get('token_embd.weight');
  const vocabSize = f.int(`${a}.vocab_size`, { def: Array.isArray(tokens) ? tokens.length : (embd?.dims[1] ?? 0) });
  const numLayers = f.int(`${a}.block_count`);
  const has = (suffix: string) => tensors.has(`blk.0.${suffix}`);
  const qkvBias = a === 'qwen2' || has('attn_q.bias');
  const tokenId = (key: string): number | null => {
    if (!f.has(key)) return null;
    const id = f.int(key, { min: 0 });
    if (id >= vocabSize) f.fail(key, `(${id}) is outside the vocabulary (${vocabSize})`);
    return id;
  };
  const eos = [tokenId('tokenizer.ggml.eos_token_id'), tokenId('tokenizer.ggml.eot_token_id')].filter(
    (x): x is number => x !== null,
  );
  return {
    architecture,
    modelType: a,
    torchDtype: null,
    vocabSize,
    hiddenSize: hidden,
    numLayers,
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    intermediateSize: f.int(`${a}.feed_forward_length`),
    maxPositionEmbeddings: f.int(`${a}.context_length`, { def: 2048 }),
    rmsNormEps: f.num(`${a}.attention.layer_norm_rms_epsilon`, 1e-6, { positive: true }),
    ropeTheta: f.num(`${a}.rope.freq_base`, 10000, { positive: true }),
    ropeType,
    ropeFactor,
    ropeLowFreqFactor: 1,
    ropeHighFreqFactor: 4,
    ropeOriginalMaxPositions: 8192,
    // llama.cpp runs a file without output.weight with the token embedding as its output.
    tieWordEmbeddings: !tensors.has('output.weight'),
    qkvBias,
    oBias: has('attn_output.bias'),
    mlpBias: has('ffn_gate.bias'),
    slidingWindow: 0,
    configFile: file,
    bosTokenId: tokenId('tokenizer.ggml.bos_token_id'),
    eosTokenIds: [...new Set(eos)],
  };
}
