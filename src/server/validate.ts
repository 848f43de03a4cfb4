/**
 * Validation of /v1/chat/completions and /v1/completions bodies. Every field is type- and
 * range-checked; an unknown field is a 400 naming it (a typo never silently falls back to a
 * default); fields OpenAI defines but this server does not implement are accepted only at the
 * value that means "off" and otherwise refused with `unsupported_parameter`, never ignored.
 * `null` means "not given", as in OpenAI's API.
 */
import { InvalidOptionError } from '../errors';
import { parsePolicy, validatePolicy, type Policy } from '../policy';
import type { ChatMessage } from '../tokenizer';
import { invalidRequest, unsupported, type HttpError } from './errors';

/** What validation needs to know about the model. */
export interface ModelFacts {
  numLayers: number;
  vocabSize: number;
  /** Layers with FlexiDepth routers; a flexidepth policy needs at least one. */
  flexiDepthLayers: number[];
  /** Layers with SkipLayer routers; a skiplayer policy needs at least one. */
  skipRouterLayers: number[];
}

/**
 * The request's repetition penalties: OpenAI's frequency_penalty and presence_penalty (-2..2)
 * and transformers' repetition_penalty (above 0, 1 = off), as the sampler applies them
 * (src/sampling.ts); absent = the model's default (generation_config.json), else off.
 */
export interface Penalties {
  frequencyPenalty?: number;
  presencePenalty?: number;
  repetitionPenalty?: number;
}

/** A validated generation request of either endpoint. */
export interface CompletionRequest {
  endpoint: 'chat' | 'completions';
  /** The `model` field, when given (checked against the served model by the handler). */
  model?: string;
  /** Chat: the messages, roles mapped for the chat template (`developer` becomes `system`). */
  messages?: ChatMessage[];
  /** Completions: the prompt text, or its token ids. */
  prompt?: string | number[];
  /** max_completion_tokens or max_tokens, when given. */
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  /** 0 = off (a request's -1 is normalised to 0). */
  topK?: number;
  seed?: number;
  stop: string[];
  stream: boolean;
  /** stream_options.include_usage. */
  includeUsage: boolean;
  /** depthgate.policy, validated against the model; undefined = the server's default policy. */
  policy?: Policy;
  /** depthgate.trace: per-token layers in the response. */
  trace: boolean;
  penalties: Penalties;
}

const MAX_STOP = 16;
const MAX_STOP_LENGTH = 1024;
const INT32_MAX = 2 ** 31 - 1;

const COMMON_KEYS = [
  'model',
  'max_tokens',
  'temperature',
  'top_p',
  'top_k',
  'seed',
  'stop',
  'n',
  'stream',
  'stream_options',
  'frequency_penalty',
  'presence_penalty',
  'repetition_penalty',
  'user',
  'logit_bias',
  'depthgate',
];
const CHAT_KEYS = new Set([
  ...COMMON_KEYS,
  'messages',
  'max_completion_tokens',
  'logprobs',
  'top_logprobs',
  'response_format',
  'tools',
  'tool_choice',
  'functions',
  'function_call',
  'parallel_tool_calls',
]);
const COMPLETION_KEYS = new Set([...COMMON_KEYS, 'prompt', 'logprobs', 'echo', 'suffix', 'best_of']);

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a decimal';
  return `a ${typeof v}`;
}

function invalidType(param: string, expected: string, v: unknown): HttpError {
  return invalidRequest(
    `Invalid type for '${param}': expected ${expected}, but got ${typeName(v)} instead.`,
    param,
    'invalid_type',
  );
}

function invalidValue(param: string, rule: string, v: unknown): HttpError {
  const shown = JSON.stringify(v);
  return invalidRequest(
    `Invalid value for '${param}': ${rule}, got ${shown.length > 80 ? shown.slice(0, 77) + '...' : shown}.`,
    param,
  );
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A JSON number field in [min, max] (or (min, max] when minExclusive); null or absent is undefined. */
function optNumber(
  o: Record<string, unknown>,
  key: string,
  min: number,
  max: number,
  minExclusive = false,
  param = key,
): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidType(param, 'a number', v);
  if (v < min || v > max || (minExclusive && v === min))
    throw invalidValue(param, `must be ${minExclusive ? 'greater than' : 'at least'} ${min} and at most ${max}`, v);
  return v;
}

/** A JSON integer field in [min, max]; null or absent is undefined. */
function optInt(o: Record<string, unknown>, key: string, min: number, max: number, param = key): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw invalidType(param, 'an integer', v);
  if (v < min || v > max) throw invalidValue(param, `must be an integer from ${min} to ${max}`, v);
  return v;
}

function optBool(o: Record<string, unknown>, key: string, param = key): boolean | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalidType(param, 'a boolean', v);
  return v;
}

/** Unknown keys are refused, named: the first one found, in the body's own order. */
function checkKeys(o: Record<string, unknown>, known: Set<string>, prefix = ''): void {
  for (const k of Object.keys(o))
    if (!known.has(k)) throw invalidRequest(`Unknown parameter: '${prefix}${k}'.`, prefix + k, 'unknown_parameter');
}

/** The repetition penalties, in the ranges the sampler takes (completions.ts maps them to GenerateOptions). */
export function penaltyFields(o: Record<string, unknown>): Penalties {
  return dropUndefined({
    frequencyPenalty: optNumber(o, 'frequency_penalty', -2, 2),
    presencePenalty: optNumber(o, 'presence_penalty', -2, 2),
    repetitionPenalty: optNumber(o, 'repetition_penalty', 0, 10, true),
  });
}

function stopField(o: Record<string, unknown>): string[] {
  const v = o.stop;
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list)) throw invalidType('stop', 'a string or an array of strings', v);
  if (list.length > MAX_STOP) throw invalidValue('stop', `must have at most ${MAX_STOP} strings`, list.length);
  list.forEach((s, i) => {
    const param = typeof v === 'string' ? 'stop' : `stop[${i}]`;
    if (typeof s !== 'string') throw invalidType(param, 'a string', s);
    if (s.length === 0) throw invalidValue(param, 'must not be empty', s);
    if (s.length > MAX_STOP_LENGTH)
      throw invalidValue(param, `must be at most ${MAX_STOP_LENGTH} characters`, s.length);
  });
  return list as string[];
}

/** `depthgate: {policy, trace}`: the request's policy in the CLI's --policy syntax (or a Policy object). */
function depthgateField(o: Record<string, unknown>, facts: ModelFacts): { policy?: Policy; trace: boolean } {
  const v = o.depthgate;
  if (v === undefined || v === null) return { trace: false };
  if (!isObject(v)) throw invalidType('depthgate', 'an object', v);
  checkKeys(v, new Set(['policy', 'trace']), 'depthgate.');
  const trace = optBool(v, 'trace', 'depthgate.trace') ?? false;
  const p = v.policy;
  if (p === undefined || p === null) return { trace };
  if (typeof p !== 'string' && !isObject(p))
    throw invalidType('depthgate.policy', "a policy string (e.g. 'flexidepth:threshold=0.5') or object", p);
  let policy: Policy;
  try {
    policy = typeof p === 'string' ? parsePolicy(p, facts.numLayers) : validatePolicy(p, facts.numLayers);
  } catch (e) {
    if (e instanceof InvalidOptionError)
      throw invalidRequest(`Invalid value for 'depthgate.policy': ${e.message}.`, 'depthgate.policy');
    throw e;
  }
  if (policy.type === 'flexidepth' && facts.flexiDepthLayers.length === 0)
    throw invalidRequest(
      "Invalid value for 'depthgate.policy': this model has no FlexiDepth routers.",
      'depthgate.policy',
    );
  if (policy.type === 'skiplayer' && facts.skipRouterLayers.length === 0)
    throw invalidRequest(
      "Invalid value for 'depthgate.policy': this model has no SkipLayer routers.",
      'depthgate.policy',
    );
  return { policy, trace };
}

/** Fields that exist in OpenAI's API and are accepted here only when they ask for nothing. */
function offOnly(o: Record<string, unknown>, key: string, isOff: (v: unknown) => boolean, why: string): void {
  const v = o[key];
  if (v === undefined || v === null || isOff(v)) return;
  throw unsupported(key, `'${key}' is not supported: ${why}.`);
}

function commonFields(o: Record<string, unknown>, facts: ModelFacts) {
  const model = o.model;
  if (model !== undefined && model !== null && typeof model !== 'string') throw invalidType('model', 'a string', model);
  if (o.user !== undefined && o.user !== null && typeof o.user !== 'string')
    throw invalidType('user', 'a string', o.user);
  const n = optInt(o, 'n', 1, INT32_MAX);
  if (n !== undefined && n !== 1)
    throw unsupported('n', "'n' must be 1: this server generates one choice per request.");
  offOnly(o, 'logit_bias', (v) => isObject(v) && Object.keys(v).length === 0, 'logit biases are not implemented');
  const stream = optBool(o, 'stream') ?? false;
  let includeUsage = false;
  const so = o.stream_options;
  if (so !== undefined && so !== null) {
    if (!isObject(so)) throw invalidType('stream_options', 'an object', so);
    if (!stream) throw invalidRequest("'stream_options' is only allowed when 'stream' is true.", 'stream_options');
    checkKeys(so, new Set(['include_usage']), 'stream_options.');
    includeUsage = optBool(so, 'include_usage', 'stream_options.include_usage') ?? false;
  }
  const topK = optInt(o, 'top_k', -1, INT32_MAX);
  return {
    ...(typeof model === 'string' ? { model } : {}),
    maxTokens: optInt(o, 'max_tokens', 1, INT32_MAX),
    temperature: optNumber(o, 'temperature', 0, 2),
    topP: optNumber(o, 'top_p', 0, 1, true),
    topK: topK === -1 ? 0 : topK,
    seed: optInt(o, 'seed', 0, Number.MAX_SAFE_INTEGER),
    stop: stopField(o),
    stream,
    includeUsage,
    penalties: penaltyFields(o),
    ...depthgateField(o, facts),
  };
}

function dropUndefined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

function messageContent(v: unknown, param: string): string {
  if (typeof v === 'string') return v;
  if (!Array.isArray(v)) throw invalidType(param, 'a string or an array of content parts', v);
  return v
    .map((part, j) => {
      const pp = `${param}[${j}]`;
      if (!isObject(part)) throw invalidType(pp, 'an object', part);
      if (part.type !== 'text')
        throw unsupported(
          `${pp}.type`,
          `content parts of type ${JSON.stringify(part.type)} are not supported; only 'text' is.`,
        );
      checkKeys(part, new Set(['type', 'text']), `${pp}.`);
      if (typeof part.text !== 'string') throw invalidType(`${pp}.text`, 'a string', part.text);
      return part.text;
    })
    .join('');
}

const ROLES: Record<string, string> = { system: 'system', developer: 'system', user: 'user', assistant: 'assistant' };

function messagesField(v: unknown): ChatMessage[] {
  if (v === undefined || v === null)
    throw invalidRequest("Missing required parameter: 'messages'.", 'messages', 'missing_required_parameter');
  if (!Array.isArray(v)) throw invalidType('messages', 'an array of messages', v);
  if (v.length === 0) throw invalidValue('messages', 'must hold at least one message', v);
  return v.map((m, i) => {
    const p = `messages[${i}]`;
    if (!isObject(m)) throw invalidType(p, 'an object', m);
    if (m.tool_calls !== undefined || m.tool_call_id !== undefined)
      throw unsupported(
        `${p}.${m.tool_calls !== undefined ? 'tool_calls' : 'tool_call_id'}`,
        'tool calls are not supported.',
      );
    checkKeys(m, new Set(['role', 'content', 'name']), `${p}.`);
    if (typeof m.role !== 'string') throw invalidType(`${p}.role`, 'a string', m.role);
    const role = Object.hasOwn(ROLES, m.role) ? ROLES[m.role] : undefined;
    if (!role) {
      if (m.role === 'tool' || m.role === 'function')
        throw unsupported(`${p}.role`, `messages with role '${m.role}' (tool results) are not supported.`);
      throw invalidValue(`${p}.role`, "must be 'system', 'developer', 'user' or 'assistant'", m.role);
    }
    if (m.name !== undefined && m.name !== null && typeof m.name !== 'string')
      throw invalidType(`${p}.name`, 'a string', m.name);
    if (m.content === undefined || m.content === null)
      throw invalidRequest(`Missing required parameter: '${p}.content'.`, `${p}.content`, 'missing_required_parameter');
    return { role, content: messageContent(m.content, `${p}.content`) };
  });
}

/** Validates a /v1/chat/completions body. */
export function parseChatRequest(body: unknown, facts: ModelFacts): CompletionRequest {
  if (!isObject(body)) throw invalidType('body', 'a JSON object', body);
  checkKeys(body, CHAT_KEYS);
  const messages = messagesField(body.messages);
  const common = commonFields(body, facts);
  const mct = optInt(body, 'max_completion_tokens', 1, INT32_MAX);
  if (mct !== undefined && common.maxTokens !== undefined && mct !== common.maxTokens)
    throw invalidRequest(
      "'max_tokens' and 'max_completion_tokens' disagree; give one of them.",
      'max_completion_tokens',
    );
  const logprobs = optBool(body, 'logprobs');
  if (logprobs)
    throw unsupported(
      'logprobs',
      "'logprobs' is not supported: the engine samples each token natively and does not return its log-probabilities during generation.",
    );
  offOnly(body, 'top_logprobs', (v) => v === 0, "it needs 'logprobs', which is not supported");
  offOnly(
    body,
    'response_format',
    (v) => isObject(v) && v.type === 'text' && Object.keys(v).length === 1,
    "only {type: 'text'} is",
  );
  offOnly(body, 'tools', (v) => Array.isArray(v) && v.length === 0, 'tool calls are not implemented');
  offOnly(body, 'functions', (v) => Array.isArray(v) && v.length === 0, 'function calls are not implemented');
  offOnly(body, 'tool_choice', (v) => v === 'none', 'tool calls are not implemented');
  offOnly(body, 'function_call', (v) => v === 'none', 'function calls are not implemented');
  optBool(body, 'parallel_tool_calls');
  return dropUndefined({ endpoint: 'chat' as const, messages, ...common, maxTokens: mct ?? common.maxTokens });
}

function promptField(v: unknown, vocabSize: number): string | number[] {
  if (v === undefined || v === null)
    throw invalidRequest("Missing required parameter: 'prompt'.", 'prompt', 'missing_required_parameter');
  if (typeof v === 'string') return v;
  if (!Array.isArray(v)) throw invalidType('prompt', 'a string, an array of token ids, or an array of one of them', v);
  if (v.length === 0) throw invalidValue('prompt', 'must not be an empty array', v);
  let one: unknown = v;
  if (typeof v[0] === 'string' || Array.isArray(v[0])) {
    if (v.length > 1) throw unsupported('prompt', 'only one prompt per request is supported; send several requests.');
    one = v[0];
    if (typeof one === 'string') return one;
    if ((one as unknown[]).length === 0) throw invalidValue('prompt[0]', 'must not be an empty array', one);
  }
  const ids = one as unknown[];
  ids.forEach((t, i) => {
    if (typeof t !== 'number' || !Number.isInteger(t)) throw invalidType(`prompt[${i}]`, 'an integer token id', t);
    if (t < 0 || t >= vocabSize) throw invalidValue(`prompt[${i}]`, `must be a token id from 0 to ${vocabSize - 1}`, t);
  });
  return ids as number[];
}

/** Validates a /v1/completions body. */
export function parseCompletionRequest(body: unknown, facts: ModelFacts): CompletionRequest {
  if (!isObject(body)) throw invalidType('body', 'a JSON object', body);
  checkKeys(body, COMPLETION_KEYS);
  const prompt = promptField(body.prompt, facts.vocabSize);
  const common = commonFields(body, facts);
  const lp = optInt(body, 'logprobs', 0, 20);
  if (lp !== undefined)
    throw unsupported(
      'logprobs',
      "'logprobs' is not supported: the engine samples each token natively and does not return its log-probabilities during generation.",
    );
  offOnly(body, 'echo', (v) => v === false, 'the prompt is not echoed');
  offOnly(body, 'suffix', (v) => v === '', 'insertion (a suffix) is not implemented');
  const bestOf = optInt(body, 'best_of', 1, INT32_MAX);
  if (bestOf !== undefined && bestOf !== 1)
    throw unsupported('best_of', "'best_of' must be 1: this server generates one choice per request.");
  return dropUndefined({ endpoint: 'completions' as const, prompt, ...common });
}
