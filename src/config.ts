/**
 * Reads a Hugging Face model directory's JSON files: config.json (architecture and shapes),
 * model.safetensors.index.json (shards), generation_config.json (eos ids). Every field is
 * checked here so that an unsupported option is refused with its name, not misread.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NativeConfig } from './binding';
import { ModelFileError, ModelFormatError, UnsupportedModelError } from './errors';
import { jsonSizeLimit, readRegularFile } from './modelFiles';
import { readFlexiDepthFields } from './flexiDepthConfig';

/** The architectures depthgate runs. DDLlamaForCausalLM is the official FlexiDepth checkpoint: a Llama model with routers in its own weights (src/flexiDepthConfig.ts). */
export const SUPPORTED_ARCHITECTURES = [
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'Qwen2ForCausalLM',
  'DDLlamaForCausalLM',
] as const;
/** One of {@link SUPPORTED_ARCHITECTURES}. */
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

/** A model's configuration, normalised from config.json. */
export interface ModelConfig extends NativeConfig {
  architecture: Architecture;
  modelType: string;
  torchDtype: string | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/**
 * Reads and parses a JSON file of a model directory; typed errors name the file. Only a regular
 * file up to its size cap is read (src/modelFiles.ts): anything else is a ModelFileError at once.
 */
export function readJson(file: string, what: string): unknown {
  const text = readRegularFile(file, what, jsonSizeLimit(what));
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${what} is not valid JSON: ${(e as Error).message}`, file, e);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class Fields {
  constructor(
    readonly o: Record<string, unknown>,
    readonly file: string,
  ) {}
  fail(key: string, why: string): never {
    throw new ModelFormatError(`'${key}' ${why}`, this.file);
  }
  int(key: string, opts: { min?: number; def?: number } = {}): number {
    const v = this.o[key];
    if (v === undefined || v === null) {
      if (opts.def !== undefined) return opts.def;
      this.fail(key, 'is missing');
    }
    if (typeof v !== 'number' || !Number.isInteger(v)) this.fail(key, `must be an integer, got ${JSON.stringify(v)}`);
    if (v < (opts.min ?? 1)) this.fail(key, `must be at least ${opts.min ?? 1}, got ${v}`);
    if (v > 2 ** 31 - 1) this.fail(key, `is too large (${v})`);
    return v;
  }
  num(key: string, def: number, opts: { positive?: boolean } = {}): number {
    const v = this.o[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, `must be a number, got ${JSON.stringify(v)}`);
    if (opts.positive && v <= 0) this.fail(key, `must be positive, got ${v}`);
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.o[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }
}

function tokenIds(v: unknown, key: string, file: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  for (const x of list)
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0)
      throw new ModelFormatError(`'${key}' must be a token id or a list of token ids`, file);
  return list as number[];
}

/** Parses and validates config.json (and generation_config.json when present) in `dir`. */
export function readModelConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  const raw = readJson(file, 'config.json');
  if (!isObject(raw)) throw new ModelFormatError('config.json must hold a JSON object', file);
  const archs = raw.architectures;
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? (archs[0] as string) : undefined;
  if (!arch) throw new ModelFormatError("'architectures' is missing", file);
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch))
    throw new UnsupportedModelError(
      `architecture '${arch}' is not supported (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`,
      file,
    );
  const f: Fields = new Fields(raw, file);
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu') throw new UnsupportedModelError(`hidden_act '${String(act)}' is not supported (only silu)`, file);

  const hidden = f.int('hidden_size');
  const heads = f.int('num_attention_heads');
  const kvHeads = f.int('num_key_value_heads', { def: heads });
  if (heads % kvHeads !== 0)
    f.fail('num_attention_heads', `(${heads}) must be a multiple of num_key_value_heads (${kvHeads})`);
  let headDim: number;
  if (raw.head_dim === undefined || raw.head_dim === null) {
    if (hidden % heads !== 0)
      f.fail(
        'hidden_size',
        `(${hidden}) must be divisible by num_attention_heads (${heads}) when head_dim is not given`,
      );
    headDim = hidden / heads;
  } else {
    headDim = f.int('head_dim');
  }
  if (headDim % 2 !== 0) f.fail('head_dim', `must be even for rotary embeddings, got ${headDim}`);

  let ropeType: NativeConfig['ropeType'] = 'default';
  let ropeFactor = 1;
  let low = 1;
  let high = 4;
  let origMax = 8192;
  const rs = raw.rope_scaling;
  if (rs !== undefined && rs !== null) {
    if (!isObject(rs)) f.fail('rope_scaling', 'must be an object or null');
    const t = rs.rope_type ?? rs.type;
    const rf = new Fields(rs, file);
    if (t === 'linear') {
      ropeType = 'linear';
      ropeFactor = rf.num('factor', NaN, { positive: true });
      if (Number.isNaN(ropeFactor)) f.fail('rope_scaling.factor', 'is missing');
    } else if (t === 'llama3') {
      ropeType = 'llama3';
      ropeFactor = rf.num('factor', NaN, { positive: true });
      low = rf.num('low_freq_factor', NaN, { positive: true });
      high = rf.num('high_freq_factor', NaN, { positive: true });
      origMax = rf.int('original_max_position_embeddings');
      if ([ropeFactor, low, high].some(Number.isNaN))
        f.fail('rope_scaling', 'needs factor, low_freq_factor and high_freq_factor');
      if (high <= low) f.fail('rope_scaling', 'high_freq_factor must be greater than low_freq_factor');
    } else if (t === 'default') {
      // no scaling
    } else {
      throw new UnsupportedModelError(`rope_scaling type '${String(t)}' is not supported (linear, llama3)`, file);
    }
  }

  const modelType = typeof raw.model_type === 'string' ? raw.model_type : '';
  let qkvBias = false;
  let oBias = false;
  let slidingWindow = 0;
  if (arch === 'Qwen2ForCausalLM') {
    qkvBias = true;
    if (f.bool('use_sliding_window', false))
      throw new UnsupportedModelError("'use_sliding_window: true' is not supported for Qwen2", file);
  } else {
    const ab = f.bool('attention_bias', false);
    qkvBias = ab;
    oBias = ab;
  }
  if (arch === 'MistralForCausalLM' && raw.sliding_window !== undefined && raw.sliding_window !== null)
    slidingWindow = f.int('sliding_window');
  const mlpBias = f.bool('mlp_bias', false);
  const numLayers = f.int('num_hidden_layers');
  const flexiDepth = readFlexiDepthFields(raw, arch, numLayers, file);
  if (raw.pretraining_tp !== undefined && raw.pretraining_tp !== null && raw.pretraining_tp !== 1)
    f.int('pretraining_tp'); // any integer is fine: tensor-parallel slicing gives the same math

  const cfg: ModelConfig = {
    architecture: arch as Architecture,
    modelType,
    torchDtype:
      typeof raw.torch_dtype === 'string' ? raw.torch_dtype : typeof raw.dtype === 'string' ? raw.dtype : null,
    vocabSize: f.int('vocab_size'),
    hiddenSize: hidden,
    numLayers,
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    intermediateSize: f.int('intermediate_size'),
    maxPositionEmbeddings: f.int('max_position_embeddings', { def: 2048 }),
    rmsNormEps: f.num('rms_norm_eps', 1e-6, { positive: true }),
    ropeTheta: f.num('rope_theta', 10000, { positive: true }),
    ropeType,
    ropeFactor,
    ropeLowFreqFactor: low,
    ropeHighFreqFactor: high,
    ropeOriginalMaxPositions: origMax,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    qkvBias,
    oBias,
    mlpBias,
    slidingWindow,
    ...flexiDepth,
    configFile: file,
    bosTokenId: tokenIds(raw.bos_token_id, 'bos_token_id', file)[0] ?? null,
    eosTokenIds: tokenIds(raw.eos_token_id, 'eos_token_id', file),
  };
  const gen = path.join(dir, 'generation_config.json');
  if (fs.existsSync(gen)) {
    const g = readJson(gen, 'generation_config.json');
    if (!isObject(g)) throw new ModelFormatError('generation_config.json must hold a JSON object', gen);
    const eos = tokenIds(g.eos_token_id, 'eos_token_id', gen);
    if (eos.length) cfg.eosTokenIds = eos;
    const bos = tokenIds(g.bos_token_id, 'bos_token_id', gen);
    const firstBos = bos[0];
    if (firstBos !== undefined) cfg.bosTokenId = firstBos;
  }
  for (const id of cfg.eosTokenIds)
    if (id >= cfg.vocabSize)
      throw new ModelFormatError(`eos token id ${id} is outside the vocabulary (${cfg.vocabSize})`, file);
  return cfg;
}

/** The safetensors files of a model directory: model.safetensors, or the shards its index lists. */
export function listWeightFiles(dir: string): {
  files: string[];
  weightMap?: Record<string, string>;
  indexFile?: string;
} {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) {
    const raw = readJson(index, 'model.safetensors.index.json');
    if (!isObject(raw) || !isObject(raw.weight_map))
      throw new ModelFormatError("'weight_map' is missing or not an object", index);
    const weightMap: Record<string, string> = {};
    const files: string[] = [];
    for (const [name, shard] of Object.entries(raw.weight_map)) {
      if (typeof shard !== 'string' || shard.length === 0)
        throw new ModelFormatError(`weight_map entry '${name}' must be a file name`, index);
      if (path.isAbsolute(shard) || shard.split(/[\\/]/).includes('..'))
        throw new ModelFormatError(`weight_map entry '${name}' points outside the model directory: ${shard}`, index);
      const full = path.join(dir, shard);
      weightMap[name] = full;
      if (!files.includes(full)) files.push(full);
    }
    if (files.length === 0) throw new ModelFormatError("'weight_map' lists no tensors", index);
    for (const f of files)
      if (!fs.existsSync(f)) throw new ModelFileError('shard listed in model.safetensors.index.json is missing', f);
    return { files, weightMap, indexFile: index };
  }
  if (fs.existsSync(single)) return { files: [single] };
  throw new ModelFileError('no model.safetensors or model.safetensors.index.json found', dir);
}
