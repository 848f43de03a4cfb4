/**
 * Option types and their validation. Unknown keys and wrong types are refused with an
 * InvalidOptionError naming the option, so a typo never silently falls back to a default. Every
 * number is checked against the range of the type the engine stores it in (an int32 topK, a
 * uint64 seed, ...), so no value is silently wrapped or clamped natively.
 */
import type { SpeculativeStats } from './speculative';
import { InvalidOptionError } from './errors';
import type { Policy } from './policy';

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /**
   * Compute backend (default: $DEPTHGATE_BACKEND, else 'auto'). 'cpu' is the tested backend.
   * 'cuda' uses the CUDA library when it is present and a usable GPU is seen, and is otherwise a
   * BackendUnavailableError with the reason. 'auto' picks the CPU in this version: the CUDA backend
   * has not been validated on a GPU yet, so it runs only when asked for by name.
   */
  backend?: 'auto' | 'cpu' | 'cuda';
  /**
   * Threads for the CPU kernels, the calling thread included (default: the processors this process
   * may use: `getBuildInfo().usableProcessors`). More threads than processors are accepted but
   * the extra ones stay idle.
   */
  threads?: number;
  /** Default context length (tokens) of new sequences (default: the model's max_position_embeddings, at most 4096). */
  contextSize?: number;
  /**
   * Bytes the KV caches of all live sequences may reach together (default: 90% of the machine's
   * memory minus the weights). Each sequence reserves its whole context up front.
   */
  memoryLimit?: number;
  /** Read every weight page in during load (default true) so the first token is not slow. */
  prefault?: boolean;
  /**
   * The dtype of the KV cache (default 'bf16'): K and V are computed in f32 and rounded once, to
   * nearest even, when written; attention reads them in this dtype. 'bf16' and 'f16' take half the
   * memory (and half the bytes read per decode step) of 'f32', which keeps exactly what was computed.
   */
  kvCacheType?: 'f32' | 'f16' | 'bf16';
  /** Called with the fraction loaded, from 0 to 1. */
  onProgress?: (fraction: number) => void;
  /** Cancels the load; the promise rejects with AbortError and everything taken is freed. */
  signal?: AbortSignal;
  /**
   * Add-on safetensors files with router weights (FlexiDepth `model.layers.{i}.router.*` and
   * `router_proj.*`, or SkipLayer `skip_router`) applied to this base model.
   */
  addons?: string[];
}

/** Options of generation. */
export interface GenerateOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  /** 0 (default) picks the most likely token; higher values sample more freely. */
  temperature?: number;
  /** Sample among the k most likely tokens (0 = all, the default; at most 2^31 - 1). */
  topK?: number;
  /** Sample from the smallest set whose probability reaches p (1 = all, the default). */
  topP?: number;
  /** Seed for sampling: the same seed, prompt and options give the same output. */
  seed?: number;
  /** Stop when the generated text contains one of these strings (which is not included). */
  stop?: string[];
  /** Stop on the model's end-of-sequence tokens (default true). */
  stopOnEos?: boolean;
  /** Cancels generation: the promise rejects with AbortError, or resolves with what was made if `stopOnAbort`. */
  signal?: AbortSignal;
  /** With a `signal`, resolve with the partial result (finishReason 'abort') instead of rejecting. */
  stopOnAbort?: boolean;
  /** Called for every generated token. */
  onToken?: (chunk: TokenChunk) => void;
  /** Which layers each token runs (default: the model's `defaultPolicy`; `{type: 'none'}` runs all). */
  policy?: Policy;
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
  'maxTokens', 'temperature', 'topK', 'topP', 'seed', 'stop', 'stopOnEos', 'signal', 'stopOnAbort', 'onToken', 'policy',
]);
const LOAD_KEYS = new Set(['backend', 'threads', 'contextSize', 'memoryLimit', 'prefault', 'kvCacheType', 'onProgress', 'signal', 'addons']);

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
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new InvalidOptionError(name, `must be an integer, got ${describe(v)}`);
  if (v < min || v > max) throw new InvalidOptionError(name, `must be between ${min} and ${max}, got ${v}`);
}

function checkNumber(v: unknown, name: string, min: number, max: number, minExclusive = false): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidOptionError(name, `must be a finite number, got ${describe(v)}`);
  if (v < min || v > max || (minExclusive && v === min))
    throw new InvalidOptionError(name, `must be ${minExclusive ? 'above' : 'at least'} ${min} and at most ${max}, got ${v}`);
}

function checkBool(v: unknown, name: string): void {
  if (v !== undefined && typeof v !== 'boolean') throw new InvalidOptionError(name, `must be true or false, got ${describe(v)}`);
}

function checkFunction(v: unknown, name: string): void {
  if (v !== undefined && typeof v !== 'function') throw new InvalidOptionError(name, `must be a function, got ${describe(v)}`);
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
  checkNumber(opts.temperature, 'temperature', 0, 100);
  checkInt(opts.topK, 'topK', 0, INT32_MAX); // int32 natively
  checkNumber(opts.topP, 'topP', 0, 1, true);
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
  if (opts.kvCacheType !== undefined && opts.kvCacheType !== 'f32' && opts.kvCacheType !== 'f16' && opts.kvCacheType !== 'bf16')
    throw new InvalidOptionError('kvCacheType', `must be 'f32', 'f16' or 'bf16', got ${describe(opts.kvCacheType)}`);
  checkFunction(opts.onProgress, 'onProgress');
  checkSignal(opts.signal, 'signal');
  if (opts.addons !== undefined && (!Array.isArray(opts.addons) || opts.addons.some((a) => typeof a !== 'string' || a === '')))
    throw new InvalidOptionError('addons', 'must be an array of safetensors file paths');
  return opts as LoadOptions;
}
