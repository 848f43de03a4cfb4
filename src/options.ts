/**
 * Option types and their validation. Unknown keys and wrong types are refused with an
 * InvalidOptionError naming the option, so a typo never silently falls back to a default. Every
 * number is checked against the range of the type the engine stores it in (an int32 topK, a
 * uint64 seed, ...), so no value is silently wrapped or clamped natively.
 */
import type { SpeculativeStats } from './speculative';
import { InvalidOptionError } from './errors';
import type { Policy } from './policy';
import { SAMPLING_KEYS, validateSamplingOptions, type ResolvedSampling, type SamplingOptions } from './sampling';

/** LoadOptions.weights: 'stored', or the block format the weights are quantized to on load. */
export type WeightFormatOption = 'stored' | 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';
/** @internal The values of LoadOptions.weights (and of the CLI's --weights). */
export const WEIGHT_FORMATS: readonly WeightFormatOption[] = ['stored', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /**
   * Compute backend (default: $DEPTHGATE_BACKEND, else 'auto'). 'cpu' is the tested backend.
   * 'cuda' uses the CUDA library when it is present and a usable GPU is seen, and is otherwise a
   * BackendUnavailableError with the reason. 'auto' picks the CPU in this version: the CUDA backend
   * has not been validated on a GPU yet, so it runs only when asked for by name.
   */
  backend?: 'auto' | 'cpu' | 'cuda' | undefined;
  /**
   * Threads for the CPU kernels, the calling thread included (default: the processors this process
   * may use: `getBuildInfo().usableProcessors`). More threads than processors are accepted but
   * the extra ones stay idle.
   */
  threads?: number | undefined;
  /** Default context length (tokens) of new sequences (default: the model's max_position_embeddings, at most 4096). */
  contextSize?: number | undefined;
  /**
   * Bytes the KV caches of all live sequences may reach together (default: 90% of the machine's
   * memory minus the weights). Each sequence reserves its whole context up front.
   */
  memoryLimit?: number | undefined;
  /** Read every weight page in during load (default true) so the first token is not slow. */
  prefault?: boolean | undefined;
  /**
   * The dtype of the KV cache (default 'bf16'): K and V are computed in f32 and rounded once, to
   * nearest even, when written; attention reads them in this dtype. 'bf16' and 'f16' take half the
   * memory (and half the bytes read per decode step) of 'f32', which keeps exactly what was computed.
   */
  kvCacheType?: 'f32' | 'f16' | 'bf16' | undefined;
  /**
   * The weights' format in memory (default 'stored': the checkpoint's own dtype, memory-mapped).
   * The others quantize on load, for the CPU backend, every decoder layer's q, k, v, o, gate, up and
   * down projection and the LM head to llama.cpp's block formats; the embedding table, norms and
   * router / adapter weights keep their dtype:
   *  * 'q8_0', 'q4_0': Q8_0 / Q4_0 (8.5 / 4.5 bits a weight), the LM head Q8_0;
   *  * 'q4_k': llama.cpp's Q4_K_M mix: Q4_K (4.5 bits), with v and down in Q6_K (6.56 bits) on the
   *    layers llama.cpp's use_more_bits picks (first and last eighth, every third between), the LM
   *    head Q6_K;
   *  * 'q6_k': Q6_K throughout, the LM head included.
   * Those matrices must be a multiple of 32 columns wide; for 'q4_k' / 'q6_k' one that is not a
   * multiple of 256 is quantized to Q8_0 instead.
   */
  weights?: WeightFormatOption | undefined;
  /** Called with the fraction loaded, from 0 to 1. */
  onProgress?: ((fraction: number) => void) | undefined;
  /** Cancels the load; the promise rejects with AbortError and everything taken is freed. */
  signal?: AbortSignal | undefined;
  /**
   * Use generation_config.json's sampling fields (do_sample, temperature, top_k, top_p,
   * repetition_penalty, max_new_tokens) as the defaults of generation (default true;
   * `model.info.generationDefaults` says which). false ignores them: greedy, 256 tokens, no
   * penalty, unless a call says otherwise. Its eos ids are read either way.
   */
  generationConfig?: boolean | undefined;
  /**
   * Add-on safetensors files with router weights (FlexiDepth `model.layers.{i}.router.*` and
   * `router_proj.*`, or SkipLayer `skip_router`) applied to this base model. A relative path is
   * taken from the working directory (not the model directory), as the CLI's `--addon` is.
   */
  addons?: string[] | undefined;
}

/**
 * Options of generation. The sampling options (temperature, topK, topP, the penalties: see
 * {@link SamplingOptions}) and maxTokens default to the model's generation_config.json where it
 * sets them (`model.info.generationDefaults`); an option set here wins.
 */
export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default: generation_config.json's max_new_tokens, else 256). */
  maxTokens?: number | undefined;
  /** Seed for sampling: the same seed, prompt and options give the same output. */
  seed?: number | undefined;
  /** Stop when the generated text contains one of these strings (which is not included). */
  stop?: string[] | undefined;
  /** Stop on the model's end-of-sequence tokens (default true). */
  stopOnEos?: boolean | undefined;
  /** Cancels generation: the promise rejects with AbortError, or resolves with what was made if `stopOnAbort`. */
  signal?: AbortSignal | undefined;
  /** With a `signal`, resolve with the partial result (finishReason 'abort') instead of rejecting. */
  stopOnAbort?: boolean | undefined;
  /** Called for every generated token. */
  onToken?: ((chunk: TokenChunk) => void) | undefined;
  /** Which layers each token runs (default: the model's `defaultPolicy`; `{type: 'none'}` runs all). */
  policy?: Policy | undefined;
}

/** One generated token. */
export interface TokenChunk {
  /** The token id. */
  token: number;
  /** Text this token completes (may be empty while a multi-byte character or a possible stop string is held back). */
  text: string;
  /** Index of the token among the generated ones, from 0. */
  index: number;
  /** Number of layers whose full computation ran in the pass that produced this token. */
  layers: number;
  /** Per layer, 1 where the full computation ran for the row that produced this token. */
  executed: Uint8Array;
  /** Per layer, the router weight (FlexiDepth), NaN where the layer has none. */
  routerWeights: Float32Array;
  /**
   * Exact mode only (tokens after the first): `accepted` when the draft proposed this token and
   * verification kept it, false when it is the full model's own token; `step` counts verifications from 1.
   */
  speculative?: { accepted: boolean; step: number };
}

/** Depth statistics of a generation, over its generated tokens. */
export interface DepthStats {
  /** Per layer, how many generated tokens ran it in full. */
  layerCounts: number[];
  /** Mean number of layers run per generated token. */
  meanLayers: number;
  /** Tokens counted. */
  tokens: number;
}

/** The outcome of a generation. */
export interface GenerateResult {
  /** The generated text (without the prompt and without a matched stop string). */
  text: string;
  /** The generated token ids. */
  tokens: number[];
  /** The sampling it ran with, and which values came from generation_config.json. */
  sampling: ResolvedSampling;
  /** Why generation ended. */
  finishReason: 'eos' | 'stop' | 'length' | 'context' | 'abort';
  /** Tokens in the prompt (as fed, including a pending token from a previous turn) and generated. */
  usage: { promptTokens: number; completionTokens: number };
  /** Which layers the generated tokens ran. */
  depth: DepthStats;
  /** Where the time went. */
  timings: {
    /** Time to process the prompt and pick the first token, in ms. */
    prefillMs: number;
    /** Time spent on the remaining tokens, in ms. */
    decodeMs: number;
    /** Tokens per second after the first one. */
    decodeTokensPerSecond: number;
    /** Prompt tokens per second. */
    prefillTokensPerSecond: number;
  };
  /** What exact mode did (drafted, accepted, acceptance rate...): present under the speculative policy. */
  speculative?: SpeculativeStats;
}

/** Largest int32: the engine's type for token counts, positions, topK and layer indices. */
export const INT32_MAX = 2 ** 31 - 1;

const GENERATE_KEYS = new Set([
  'maxTokens',
  ...SAMPLING_KEYS,
  'seed',
  'stop',
  'stopOnEos',
  'signal',
  'stopOnAbort',
  'onToken',
  'policy',
]);
const LOAD_KEYS = new Set([
  'backend',
  'threads',
  'contextSize',
  'memoryLimit',
  'prefault',
  'kvCacheType',
  'weights',
  'onProgress',
  'signal',
  'addons',
  'generationConfig',
]);

function checkKeys(o: object, allowed: Set<string>, prefix: string): void {
  for (const k of Object.keys(o))
    if (!allowed.has(k))
      throw new InvalidOptionError(prefix + k, `is not a known option (known: ${[...allowed].join(', ')})`);
}

/** @internal Checks that an options argument is a plain object (or undefined). */
export function checkObject(o: unknown, name: string): Record<string, unknown> {
  if (o === undefined) return {};
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new InvalidOptionError(name, 'must be an object');
  return o as Record<string, unknown>;
}

/** @internal Checks an optional integer option against a range. */
export function checkInt(v: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw new InvalidOptionError(name, `must be an integer, got ${describe(v)}`);
  if (v < min || v > max) throw new InvalidOptionError(name, `must be between ${min} and ${max}, got ${v}`);
}

function checkBool(v: unknown, name: string): void {
  if (v !== undefined && typeof v !== 'boolean')
    throw new InvalidOptionError(name, `must be true or false, got ${describe(v)}`);
}

function checkFunction(v: unknown, name: string): void {
  if (v !== undefined && typeof v !== 'function')
    throw new InvalidOptionError(name, `must be a function, got ${describe(v)}`);
}

function checkSignal(v: unknown, name: string): void {
  if (v === undefined) return;
  const s = v as AbortSignal;
  if (
    typeof s !== 'object' ||
    s === null ||
    typeof s.aborted !== 'boolean' ||
    typeof s.addEventListener !== 'function' ||
    typeof s.removeEventListener !== 'function'
  )
    throw new InvalidOptionError(name, 'must be an AbortSignal');
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : String(v);
}

/** Validates generation options; throws InvalidOptionError naming the first bad one. */
export function validateGenerateOptions(o: unknown): GenerateOptions {
  const opts = checkObject(o, 'options');
  checkKeys(opts, GENERATE_KEYS, '');
  checkInt(opts.maxTokens, 'maxTokens', 1);
  validateSamplingOptions(opts);
  checkInt(opts.seed, 'seed', 0); // uint64 natively: every safe integer >= 0 fits
  if (opts.stop !== undefined) {
    if (!Array.isArray(opts.stop) || opts.stop.some((s) => typeof s !== 'string' || s.length === 0))
      throw new InvalidOptionError('stop', 'must be an array of non-empty strings');
  }
  checkBool(opts.stopOnEos, 'stopOnEos');
  checkBool(opts.stopOnAbort, 'stopOnAbort');
  checkSignal(opts.signal, 'signal');
  checkFunction(opts.onToken, 'onToken');
  return opts as GenerateOptions;
}

/** Validates load options; throws InvalidOptionError naming the first bad one. */
export function validateLoadOptions(o: unknown): LoadOptions {
  const opts = checkObject(o, 'options');
  checkKeys(opts, LOAD_KEYS, '');
  if (opts.backend !== undefined && opts.backend !== 'auto' && opts.backend !== 'cpu' && opts.backend !== 'cuda')
    throw new InvalidOptionError('backend', `must be 'auto', 'cpu' or 'cuda', got ${describe(opts.backend)}`);
  checkInt(opts.threads, 'threads', 1, 1024);
  checkInt(opts.contextSize, 'contextSize', 1, INT32_MAX); // positions are int32 natively
  checkInt(opts.memoryLimit, 'memoryLimit', 0);
  checkBool(opts.prefault, 'prefault');
  checkBool(opts.generationConfig, 'generationConfig');
  if (
    opts.kvCacheType !== undefined &&
    opts.kvCacheType !== 'f32' &&
    opts.kvCacheType !== 'f16' &&
    opts.kvCacheType !== 'bf16'
  )
    throw new InvalidOptionError('kvCacheType', `must be 'f32', 'f16' or 'bf16', got ${describe(opts.kvCacheType)}`);
  if (opts.weights !== undefined && !(WEIGHT_FORMATS as readonly unknown[]).includes(opts.weights))
    throw new InvalidOptionError(
      'weights',
      `must be 'stored', 'q8_0', 'q4_0', 'q4_k' or 'q6_k', got ${describe(opts.weights)}`,
    );
  checkFunction(opts.onProgress, 'onProgress');
  checkSignal(opts.signal, 'signal');
  if (
    opts.addons !== undefined &&
    (!Array.isArray(opts.addons) || opts.addons.some((a) => typeof a !== 'string' || a === ''))
  )
    throw new InvalidOptionError('addons', 'must be an array of safetensors file paths');
  return opts as LoadOptions;
}
