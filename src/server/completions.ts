/**
 * POST /v1/chat/completions and /v1/completions: validate, tokenize and check the context (all
 * before queueing, so a bad request is answered at once), wait for a generation slot, then run
 * the generation in its own sequence through the model's batching scheduler and answer with
 * OpenAI's JSON or SSE chunk shapes. The request's AbortSignal (its client disconnected, or the
 * server is shutting down) stops the generation between two steps; the sequence is disposed
 * whatever happens.
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { AbortError, InvalidOptionError } from '../errors';
import type { Model, Sequence } from '../model';
import type { GenerateOptions, GenerateResult, TokenChunk } from '../options';
import { formatPolicy, type Policy } from '../policy';
import { HttpError, invalidRequest, toHttpError, unavailable } from './errors';
import type { ServerMetrics } from './metrics';
import type { RequestRecord } from './options';
import type { Admission } from './queue';
import { SseStream } from './sse';
import { parseChatRequest, parseCompletionRequest, type CompletionRequest, type ModelFacts } from './validate';

/** What a generation request needs from its server. */
export interface GenerationContext {
  model: Model;
  facts: ModelFacts;
  modelId: string;
  contextSize: number;
  policy: Policy;
  keepAliveMs: number;
  admission: Admission;
  metrics: ServerMetrics;
  /** Sequences of running requests (their KV reservations are the kv gauge). */
  sequences: Set<Sequence>;
}

/** Why a request's signal aborted. */
export type CancelReason = 'client' | 'shutdown';

/** OpenAI's finish_reason for the engine's. */
function finishReason(r: GenerateResult['finishReason']): 'stop' | 'length' {
  return r === 'eos' || r === 'stop' ? 'stop' : 'length';
}

/**
 * The generation options of a request. A field the request leaves out takes the model's default
 * from generation_config.json (the sampler resolves it, src/sampling.ts), else OpenAI's: a
 * temperature of 1, so a request that names none samples.
 */
function generateOptions(
  model: Model,
  r: CompletionRequest,
  maxTokens: number,
  policy: Policy,
  signal: AbortSignal,
): GenerateOptions {
  const o: GenerateOptions = { maxTokens, policy, signal, stopOnAbort: true, ...r.penalties };
  if (r.temperature !== undefined) o.temperature = r.temperature;
  else if (model.generationDefaults.options.temperature === undefined) o.temperature = 1;
  if (r.topP !== undefined) o.topP = r.topP;
  if (r.topK !== undefined) o.topK = r.topK;
  if (r.seed !== undefined) o.seed = r.seed;
  if (r.stop.length) o.stop = r.stop;
  return o;
}

/** Prompt token ids: chat messages through the model's chat template, text with BOS as the tokenizer says, or ids as given. */
function promptTokens(model: Model, r: CompletionRequest): number[] {
  if (r.messages) {
    let text: string;
    try {
      text = model.applyChatTemplate(r.messages);
    } catch (e) {
      const why =
        e instanceof InvalidOptionError ? e.message.replace(/^option 'messages': /, '') : (e as Error).message;
      throw invalidRequest(`'messages' could not be rendered with the model's chat template: ${why}`, 'messages');
    }
    return model.tokenize(text, { addSpecialTokens: false });
  }
  return typeof r.prompt === 'string' ? model.tokenize(r.prompt) : [...(r.prompt as number[])];
}

function contextError(limit: number, prompt: number, maxTokens: number | undefined, what: string): HttpError {
  const msg =
    maxTokens === undefined
      ? `This model's maximum context length is ${limit} tokens. However, your ${what} resulted in ${prompt} tokens, which leaves no room to generate. Please reduce the length of the ${what}.`
      : `This model's maximum context length is ${limit} tokens. However, you requested ${prompt + maxTokens} tokens (${prompt} in the ${what}, ${maxTokens} in the completion). Please reduce the length of the ${what} or completion.`;
  return invalidRequest(
    msg,
    maxTokens === undefined ? (what === 'messages' ? 'messages' : 'prompt') : 'max_tokens',
    'context_length_exceeded',
  );
}

interface TraceToken {
  token: number;
  text: string;
  layers: number;
  executed: number[];
}

function traceOf(c: TokenChunk): TraceToken {
  return { token: c.token, text: c.text, layers: c.layers, executed: Array.from(c.executed) };
}

/**
 * Serves one generation request whose JSON body has been read. Throws an HttpError while nothing
 * has been sent; once a stream has started, errors go out as an SSE error event instead.
 */
export async function handleGeneration(
  ctx: GenerationContext,
  endpoint: 'chat' | 'completions',
  body: unknown,
  res: ServerResponse,
  signal: AbortSignal,
  record: RequestRecord,
  headers: Record<string, string>,
): Promise<void> {
  const r = endpoint === 'chat' ? parseChatRequest(body, ctx.facts) : parseCompletionRequest(body, ctx.facts);
  if (r.model !== undefined && r.model !== ctx.modelId)
    throw new HttpError(
      404,
      `The model '${r.model}' does not exist (this server serves '${ctx.modelId}').`,
      'invalid_request_error',
      'model',
      'model_not_found',
    );
  const what = endpoint === 'chat' ? 'messages' : 'prompt';
  const ids = promptTokens(ctx.model, r);
  if (ids.length === 0) throw invalidRequest(`'prompt' is empty: it has no tokens.`, what);
  const limit = ctx.contextSize;
  if (ids.length >= limit || (r.maxTokens !== undefined && ids.length + r.maxTokens > limit))
    throw contextError(limit, ids.length, ids.length >= limit ? undefined : r.maxTokens, what);
  // No max_tokens: the model's max_new_tokens (generation_config.json) when it fits, else the rest of the context.
  const maxTokens =
    r.maxTokens ?? Math.min(ctx.model.generationDefaults.options.maxTokens ?? Infinity, limit - ids.length);
  const policy = r.policy ?? ctx.policy;
  const label = formatPolicy(policy);
  const id = `${endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
  record.id = id;
  record.policy = label;
  record.promptTokens = ids.length;
  const slot = ctx.admission.acquire(signal); // a full queue throws 429 here, before any response
  const created = Math.floor(Date.now() / 1000);
  const object = endpoint === 'chat' ? 'chat.completion' : 'text_completion';
  const base = {
    id,
    object: r.stream ? (endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion') : object,
    created,
    model: ctx.modelId,
  };
  // A stream starts at once, so that keep-alive comments flow while the request waits for a slot.
  const sse = r.stream ? new SseStream(res, ctx.keepAliveMs, headers) : null;
  const usageNull = r.includeUsage ? { usage: null } : {};
  const chunk = (delta: Record<string, unknown> | string, finish: string | null, trace?: TraceToken[]) => ({
    ...base,
    choices: [
      {
        index: 0,
        ...(typeof delta === 'string' ? { text: delta } : { delta }),
        logprobs: null,
        finish_reason: finish,
        ...(trace ? { depthgate: { tokens: trace } } : {}),
      },
    ],
    ...usageNull,
  });
  let release: (() => void) | null = null;
  let seq: Sequence | null = null;
  try {
    release = await slot;
    seq = ctx.model.createSequence({ contextSize: ids.length + maxTokens });
    ctx.sequences.add(seq);
    ctx.metrics.prompt(ids.length);
    if (sse && endpoint === 'chat') await sse.send(chunk({ role: 'assistant', content: '' }, null));
    const stream = seq.stream({ tokens: ids }, generateOptions(ctx.model, r, maxTokens, policy, signal));
    const trace: TraceToken[] = [];
    let seen = 0;
    let seenAtCancel = -1;
    const onAbort = () => {
      seenAtCancel = seen;
    };
    signal.addEventListener('abort', onAbort, { once: true });
    const start = performance.now();
    try {
      for await (const c of stream) {
        if (seen++ === 0) record.firstTokenMs = performance.now() - start;
        ctx.metrics.token();
        if (r.trace) trace.push(traceOf(c));
        if (sse && (c.text !== '' || r.trace)) {
          await sse.send(
            chunk(endpoint === 'chat' ? { content: c.text } : c.text, null, r.trace ? trace.splice(0) : undefined),
          );
        }
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    const result = await stream.result;
    ctx.metrics.generation(
      label,
      result.usage.completionTokens,
      result.depth.tokens,
      result.depth.layerCounts.reduce((a, b) => a + b, 0),
    );
    record.completionTokens = result.usage.completionTokens;
    record.finishReason = result.finishReason;
    record.meanLayers = result.depth.meanLayers;
    if (signal.aborted) {
      ctx.metrics.cancel();
      record.cancelled = signal.reason as CancelReason;
      record.tokensAfterCancel = Math.max(0, result.usage.completionTokens - Math.max(0, seenAtCancel));
      if (record.cancelled === 'client') return; // nobody to answer
      throw unavailable('the server shut down before this generation finished; it was cancelled', 'shutting_down');
    }
    const usage = {
      prompt_tokens: result.usage.promptTokens,
      completion_tokens: result.usage.completionTokens,
      total_tokens: result.usage.promptTokens + result.usage.completionTokens,
      depthgate: { mean_layers: result.depth.meanLayers, num_layers: ctx.facts.numLayers, policy: label },
    };
    const finish = finishReason(result.finishReason);
    if (sse) {
      await sse.send(chunk(endpoint === 'chat' ? {} : '', finish, r.trace && trace.length ? trace : undefined));
      if (r.includeUsage) await sse.send({ ...base, choices: [], usage });
      sse.done();
      return;
    }
    const choice =
      endpoint === 'chat'
        ? { index: 0, message: { role: 'assistant', content: result.text }, logprobs: null, finish_reason: finish }
        : { index: 0, text: result.text, logprobs: null, finish_reason: finish };
    sendJson(
      res,
      200,
      { ...base, choices: [{ ...choice, ...(r.trace ? { depthgate: { tokens: trace } } : {}) }], usage },
      headers,
    );
  } catch (e) {
    if (e instanceof AbortError && signal.aborted && signal.reason === 'client') {
      // The client left while waiting for a slot (or before its sequence started): nothing to answer.
      ctx.metrics.cancel();
      record.cancelled = 'client';
      sse?.end();
      return;
    }
    if (!sse) throw e;
    const err = toHttpError(e);
    record.error = err.code ?? err.type;
    await sse.send(err.body());
    sse.done();
  } finally {
    if (seq) {
      seq.dispose();
      ctx.sequences.delete(seq);
    }
    release?.();
  }
}

/** Sends a JSON response. */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(text)),
  });
  res.end(text);
}
