/**
 * Options of {@link createServer} and their validation: wrong types and unknown names are an
 * InvalidOptionError naming the option, like the rest of the API. Options that depend on the
 * model (context size, default policy) are checked again once the model is loaded.
 */
import * as path from 'node:path';
import { InvalidOptionError } from '../errors';
import type { Model } from '../model';
import { parsePolicy, validatePolicy, type Policy } from '../policy';

/** One answered HTTP request, for access logs ({@link ServerOptions.onRequest}). */
export interface RequestRecord {
  /** The response id (`chatcmpl-...`, `cmpl-...`), or a request number for other routes. */
  id: string;
  method: string;
  /** The path, without the query string. */
  path: string;
  /** The HTTP status sent (200 for a stream, even one cut short after it started; 499 when the client left before any answer). */
  status: number;
  /** From the first byte of the request to the end of the response, in ms. */
  durationMs: number;
  /** Generation requests: tokens in the prompt and generated. */
  promptTokens?: number | undefined;
  completionTokens?: number | undefined;
  /** Generation requests: the engine's reason (`eos`, `stop`, `length`, `context`, `abort`). */
  finishReason?: string | undefined;
  /** Generation requests: the policy that ran, in the `--policy` syntax, and its mean layers per generated token. */
  policy?: string | undefined;
  meanLayers?: number | undefined;
  /** Why a generation stopped early: its client disconnected, or the server shut down. */
  cancelled?: 'client' | 'shutdown' | undefined;
  /** With `cancelled`: tokens generated after the cancellation was seen (at most one step's). */
  tokensAfterCancel?: number | undefined;
  /** The error code of a stream that started and then failed (its status stays 200), e.g. `shutting_down`. */
  error?: string | undefined;
  /** Time from the start of generation (after any wait for a slot) to its first token, in ms. */
  firstTokenMs?: number | undefined;
}

/** Options of {@link createServer}. */
export interface ServerOptions {
  /** Generations that run at once, sharing batched forward passes (default 4; `--parallel`). */
  parallel?: number | undefined;
  /** Requests that may wait for a slot; more are refused with 429 (default 64; `--queue`). */
  queueLength?: number | undefined;
  /**
   * Context of each request in tokens: its prompt plus max_tokens must fit (else 400
   * context_length_exceeded), and a request without max_tokens may generate up to the rest of it.
   * Each running request reserves its context's KV cache (default: the model's contextSize; `--context`).
   */
  contextSize?: number | undefined;
  /** The policy of requests that name none, as a Policy or in the `--policy` syntax (default: the model's defaultPolicy). */
  policy?: Policy | string | undefined;
  /** When set, every route but /health needs `Authorization: Bearer <apiKey>` (401 otherwise). */
  apiKey?: string | undefined;
  /** Origins allowed to call the server from a browser (CORS), or `['*']` for any; default none (no CORS headers). */
  cors?: string[] | undefined;
  /** The model's name in /v1/models and the `model` requests must name (default: the model directory's name). */
  modelId?: string | undefined;
  /** Largest request body in bytes (default 1 MiB); larger ones get 413. */
  bodyLimit?: number | undefined;
  /** Time a client has to send its whole request body, in ms (default 10 000); slower ones get 408. */
  bodyTimeoutMs?: number | undefined;
  /** A stream writes a `: ping` comment after this many ms without an event (default 15 000). */
  keepAliveMs?: number | undefined;
  /** How long close() lets running generations finish before cancelling them, in ms (default 10 000). */
  shutdownTimeoutMs?: number | undefined;
  /** Called once per answered request (access log, monitoring). */
  onRequest?: ((record: RequestRecord) => void) | undefined;
}

/** Options with their defaults; the model-dependent ones are resolved by {@link resolveModelOptions}. */
export interface CheckedOptions {
  parallel: number;
  queueLength: number;
  contextSize?: number | undefined;
  policy?: Policy | string | undefined;
  apiKey?: string | undefined;
  cors: string[];
  modelId?: string | undefined;
  bodyLimit: number;
  bodyTimeoutMs: number;
  keepAliveMs: number;
  shutdownTimeoutMs: number;
  onRequest?: ((record: RequestRecord) => void) | undefined;
}

const KEYS = [
  'parallel',
  'queueLength',
  'contextSize',
  'policy',
  'apiKey',
  'cors',
  'modelId',
  'bodyLimit',
  'bodyTimeoutMs',
  'keepAliveMs',
  'shutdownTimeoutMs',
  'onRequest',
];

function int(o: Record<string, unknown>, key: string, min: number, max: number, dflt: number): number;
function int(o: Record<string, unknown>, key: string, min: number, max: number): number | undefined;
function int(o: Record<string, unknown>, key: string, min: number, max: number, dflt?: number): number | undefined {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new InvalidOptionError(key, `must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return v;
}

/** Validates the options that do not depend on the model. */
export function checkServerOptions(options: unknown): CheckedOptions {
  if (options === undefined) options = {};
  if (typeof options !== 'object' || options === null || Array.isArray(options))
    throw new InvalidOptionError('options', 'must be an object');
  const o = options as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!KEYS.includes(k)) throw new InvalidOptionError(k, `is not a known option (known: ${KEYS.join(', ')})`);
  const str = (key: string) => {
    const v = o[key];
    if (v !== undefined && (typeof v !== 'string' || v === ''))
      throw new InvalidOptionError(key, 'must be a non-empty string');
    return v as string | undefined;
  };
  const cors = o.cors ?? [];
  if (!Array.isArray(cors) || cors.some((c) => typeof c !== 'string' || c === ''))
    throw new InvalidOptionError('cors', "must be an array of origins (e.g. 'https://app.example.com') or ['*']");
  if (o.policy !== undefined && typeof o.policy !== 'string' && (typeof o.policy !== 'object' || o.policy === null))
    throw new InvalidOptionError('policy', 'must be a Policy object or a string in the --policy syntax');
  if (o.onRequest !== undefined && typeof o.onRequest !== 'function')
    throw new InvalidOptionError('onRequest', 'must be a function');
  const apiKey = str('apiKey');
  const modelId = str('modelId');
  const contextSize = int(o, 'contextSize', 2, 2 ** 31 - 1);
  return {
    parallel: int(o, 'parallel', 1, 4096, 4),
    queueLength: int(o, 'queueLength', 0, 1_000_000, 64),
    ...(contextSize !== undefined ? { contextSize } : {}),
    ...(o.policy !== undefined ? { policy: o.policy as Policy | string } : {}),
    ...(apiKey !== undefined ? { apiKey } : {}),
    cors: cors as string[],
    ...(modelId !== undefined ? { modelId } : {}),
    bodyLimit: int(o, 'bodyLimit', 1024, 2 ** 31 - 1, 2 ** 20),
    bodyTimeoutMs: int(o, 'bodyTimeoutMs', 1, 2 ** 31 - 1, 10_000),
    keepAliveMs: int(o, 'keepAliveMs', 1, 2 ** 31 - 1, 15_000),
    shutdownTimeoutMs: int(o, 'shutdownTimeoutMs', 0, 2 ** 31 - 1, 10_000),
    ...(o.onRequest !== undefined ? { onRequest: o.onRequest as (r: RequestRecord) => void } : {}),
  };
}

/** The options that depend on the model, resolved against it. */
export interface ModelOptions {
  modelId: string;
  contextSize: number;
  policy: Policy;
}

/** Resolves contextSize, policy and modelId against a loaded model; throws InvalidOptionError. */
export function resolveModelOptions(o: CheckedOptions, model: Model): ModelOptions {
  const L = model.config.numLayers;
  const max = model.config.maxPositionEmbeddings;
  const contextSize = o.contextSize ?? model.contextSize;
  if (contextSize > max)
    throw new InvalidOptionError(
      'contextSize',
      `must be at most the model's max_position_embeddings (${max}), got ${contextSize}`,
    );
  let policy: Policy;
  if (o.policy === undefined) policy = { ...model.defaultPolicy.policy };
  else policy = typeof o.policy === 'string' ? parsePolicy(o.policy, L) : validatePolicy(o.policy, L);
  const info = model.info;
  if (policy.type === 'flexidepth' && info.flexiDepthLayers.length === 0)
    throw new InvalidOptionError('policy', 'flexidepth needs FlexiDepth routers, and this model has none');
  if (policy.type === 'skiplayer' && info.skipRouterLayers.length === 0)
    throw new InvalidOptionError('policy', 'skiplayer needs SkipLayer routers, and this model has none');
  return { modelId: o.modelId ?? path.basename(model.dir), contextSize, policy };
}
