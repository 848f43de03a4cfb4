/**
 * An OpenAI-compatible HTTP server around one model: createServer(model, options).
 *
 * The HTTP stack is node:http with no framework: there are six routes, the request bodies are
 * small JSON documents read by src/server/body.ts, and streaming is plain server-sent events
 * (src/server/sse.ts). A framework would add a dependency (and its release cadence) to a native
 * package for routing that fits in one switch; node:http already parses HTTP, enforces header
 * limits and timeouts, and exposes what disconnect handling needs (the response's 'close').
 *
 * Lifecycle: 'loading' (the model promise is pending: /health and generation answer 503),
 * 'ready', 'failed' (the load rejected: 503 with the reason), 'closing' (close() was called:
 * new requests get 503, waiting ones are refused, running ones finish within the deadline or are
 * cancelled), 'closed'.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Model, Sequence } from '../model';
import { readJsonBody } from './body';
import { handleGeneration, sendJson, type CancelReason, type GenerationContext } from './completions';
import { HttpError, toHttpError, unavailable } from './errors';
import { ServerMetrics } from './metrics';
import {
  checkServerOptions,
  resolveModelOptions,
  type CheckedOptions,
  type RequestRecord,
  type ServerOptions,
} from './options';
import { Admission } from './queue';
import { formatPolicy } from '../policy';

/** The server's state; see the file comment. */
export type ServerState = 'loading' | 'ready' | 'failed' | 'closing' | 'closed';

/** What {@link DepthgateServer.stats} reports. */
export interface ServerStats {
  state: ServerState;
  /** Generations running. */
  active: number;
  /** Requests waiting for a slot. */
  queued: number;
  /** Sequences of running requests that are not disposed yet. */
  liveSequences: number;
  /** KV-cache bytes those sequences reserve. */
  kvReservedBytes: number;
}

const ROUTES: Record<string, string[]> = {
  '/health': ['GET'],
  '/metrics': ['GET'],
  '/v1/models': ['GET'],
  '/v1/chat/completions': ['POST'],
  '/v1/completions': ['POST'],
};

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** An OpenAI-compatible server for one model. Make one with {@link createServer}. */
export class DepthgateServer {
  /** The node:http server (for `server.httpServer.address()`, or to attach it elsewhere). */
  readonly httpServer: http.Server;
  /** Resolves once the model is loaded and the options are checked against it; rejects if the load fails. */
  readonly ready: Promise<void>;
  private state: ServerState = 'loading';
  private loadError: string | null = null;
  private ctx: GenerationContext | null = null;
  private readonly opts: CheckedOptions;
  private readonly admission: Admission;
  private readonly metrics: ServerMetrics;
  private readonly sequences = new Set<Sequence>();
  /** Running generation requests, with the controller that cancels each. */
  private readonly inflight = new Map<Promise<void>, AbortController>();
  private readonly apiKeyDigest: Buffer | null;
  private closing: Promise<void> | null = null;
  private requestCount = 0;
  private kvBytesPerToken = 0;
  private loadedAt = 0;

  /** @internal use {@link createServer} */
  constructor(model: Model | Promise<Model>, options?: ServerOptions) {
    this.opts = checkServerOptions(options);
    this.apiKeyDigest = this.opts.apiKey !== undefined ? digest(this.opts.apiKey) : null;
    this.admission = new Admission(this.opts.parallel, this.opts.queueLength);
    this.metrics = new ServerMetrics(() => {
      const s = this.stats();
      return {
        loaded: this.state === 'ready' || this.state === 'closing' ? 1 : 0,
        queueDepth: s.queued,
        activeSequences: s.active,
        kvReservedBytes: s.kvReservedBytes,
        parallel: this.opts.parallel,
        queueLength: this.opts.queueLength,
      };
    });
    // node's own limit on receiving a whole request is a backstop to the body deadline in body.ts,
    // which answers first and in OpenAI's error shape.
    const requestTimeout = this.opts.bodyTimeoutMs + 5000;
    this.httpServer = http.createServer(
      { requestTimeout, headersTimeout: Math.min(60_000, requestTimeout), connectionsCheckingInterval: 1000 },
      (req, res) => void this.handle(req, res),
    );
    // Generations take long: no socket timeout while a response is being produced.
    this.httpServer.setTimeout(0);
    const attach = (m: Model) => {
      const mo = resolveModelOptions(this.opts, m);
      const info = m.info;
      this.kvBytesPerToken = info.kvBytesPerToken;
      this.loadedAt = Math.floor(Date.now() / 1000);
      this.ctx = {
        model: m,
        modelId: mo.modelId,
        contextSize: mo.contextSize,
        policy: mo.policy,
        keepAliveMs: this.opts.keepAliveMs,
        facts: {
          numLayers: m.config.numLayers,
          vocabSize: m.config.vocabSize,
          flexiDepthLayers: info.flexiDepthLayers,
          skipRouterLayers: info.skipRouterLayers,
        },
        admission: this.admission,
        metrics: this.metrics,
        sequences: this.sequences,
      };
      if (this.state === 'loading') this.state = 'ready';
    };
    if (model instanceof Promise) {
      this.ready = model.then(attach, (e) => {
        this.loadError = e instanceof Error ? e.message : String(e);
        if (this.state === 'loading') this.state = 'failed';
        throw e;
      });
      this.ready.catch(() => undefined); // reported by ready's consumer and by /health
    } else {
      attach(model);
      this.ready = Promise.resolve();
    }
  }

  /** Starts listening (default 127.0.0.1:8080; port 0 picks a free one). Resolves with the address. */
  listen(port = 8080, host = '127.0.0.1'): Promise<{ host: string; port: number; url: string }> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.httpServer.once('error', onError);
      this.httpServer.listen(port, host, () => {
        this.httpServer.off('error', onError);
        const a = this.httpServer.address() as AddressInfo;
        const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
        resolve({ host: a.address, port: a.port, url: `http://${h}:${a.port}` });
      });
    });
  }

  /** The served model's name (in /v1/models and requests' `model` field); undefined until the model is loaded. */
  get modelId(): string | undefined {
    return this.ctx?.modelId;
  }

  /** Running and waiting requests, and the KV memory their sequences hold. */
  stats(): ServerStats {
    let live = 0;
    let tokens = 0;
    for (const s of this.sequences)
      if (!s.disposed) {
        live++;
        tokens += s.contextSize;
      }
    return {
      state: this.state,
      active: this.admission.active,
      queued: this.admission.waiting,
      liveSequences: live,
      kvReservedBytes: tokens * this.kvBytesPerToken,
    };
  }

  /**
   * Graceful shutdown: stops accepting connections, answers new requests (on open keep-alive
   * connections) with 503, refuses waiting requests with 503, lets running generations finish for
   * up to `timeoutMs` (default: the shutdownTimeoutMs option), then cancels the rest (each stops
   * within one step; its client gets a 503 or a stream error event) and closes every connection.
   * The model is not disposed: it belongs to the caller.
   */
  close(options?: { timeoutMs?: number }): Promise<void> {
    if (this.closing) return this.closing;
    const timeoutMs = options?.timeoutMs ?? this.opts.shutdownTimeoutMs;
    this.state = 'closing';
    this.closing = (async () => {
      const closed = new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
      this.httpServer.closeIdleConnections();
      this.admission.rejectWaiting(unavailable('the server is shutting down', 'shutting_down'));
      const all = () => Promise.allSettled([...this.inflight.keys()]);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([all(), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
      clearTimeout(timer);
      for (const ac of this.inflight.values()) ac.abort('shutdown' satisfies CancelReason);
      await all();
      this.httpServer.closeAllConnections();
      await closed;
      this.state = 'closed';
    })();
    return this.closing;
  }

  private corsHeaders(req: http.IncomingMessage): Record<string, string> {
    const origin = req.headers.origin;
    const allowed = this.opts.cors;
    if (!origin || allowed.length === 0) return {};
    if (allowed.includes('*')) return { 'Access-Control-Allow-Origin': '*' };
    return allowed.includes(origin) ? { 'Access-Control-Allow-Origin': origin, Vary: 'Origin' } : {};
  }

  /** Constant-time check of `Authorization: Bearer <key>` (digests of equal length, whatever was sent). */
  private authorized(req: http.IncomingMessage): boolean {
    if (!this.apiKeyDigest) return true;
    const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
    return timingSafeEqual(digest(m?.[1]?.trim() ?? ''), this.apiKeyDigest) && m !== null;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    const url = req.url ?? '/';
    const path = url.split('?', 1)[0] ?? '/';
    const record: RequestRecord = {
      id: `req-${++this.requestCount}`,
      method: req.method ?? '',
      path,
      status: 0,
      durationMs: 0,
    };
    const endpoint = Object.hasOwn(ROUTES, path) ? path : 'other';
    const headers = this.corsHeaders(req);
    const closed = new Promise<void>((resolve) => res.once('close', resolve));
    try {
      await this.route(req, res, path, headers, record);
    } catch (e) {
      const err = toHttpError(e);
      if (res.headersSent) res.destroy();
      else this.sendError(req, res, err, headers);
    }
    // The record is complete once the handler is done (a cancelled generation has stopped) and
    // the response is over (sent, or its connection gone).
    await closed;
    // 499 (as nginx logs it): the client left before any answer was sent.
    record.status ||= res.headersSent ? res.statusCode : 499;
    record.durationMs = performance.now() - started;
    this.metrics.request(endpoint, record.status);
    try {
      this.opts.onRequest?.(record);
    } catch {
      // a throwing logger must not take the server down
    }
  }

  private sendError(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    err: HttpError,
    headers: Record<string, string>,
  ): void {
    if (res.destroyed) return;
    const extra: Record<string, string> = { ...headers, ...err.headers };
    if (this.state === 'closing' || this.state === 'closed') extra.Connection = 'close';
    if (!req.complete) {
      if (err.status === 408) {
        // A client too slow to send its body is not waited for any longer.
        extra.Connection = 'close';
        res.on('finish', () => req.socket.destroy());
      } else {
        // Read and drop the rest of the body (up to a bound) so the client can read this answer,
        // instead of getting a reset while it is still sending.
        let drained = 0;
        req.on('data', (c: Buffer) => {
          drained += c.length;
          if (drained > 4 * this.opts.bodyLimit) req.socket.destroy();
        });
        req.resume();
      }
    }
    sendJson(res, err.status, err.body(), extra);
  }

  private async route(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    path: string,
    headers: Record<string, string>,
    record: RequestRecord,
  ): Promise<void> {
    const method = req.method ?? '';
    if (method === 'OPTIONS' && this.opts.cors.length && req.headers['access-control-request-method']) {
      // A CORS preflight: no authentication (browsers send none here), the answer says what is allowed.
      if (headers['Access-Control-Allow-Origin'])
        Object.assign(headers, {
          'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
          'Access-Control-Allow-Headers':
            req.headers['access-control-request-headers'] ?? 'authorization, content-type',
          'Access-Control-Max-Age': '600',
        });
      res.writeHead(204, headers).end();
      return;
    }
    const allowed = Object.hasOwn(ROUTES, path) ? ROUTES[path] : path.startsWith('/v1/models/') ? ['GET'] : null;
    if (!allowed)
      throw new HttpError(404, `Invalid URL (${method} ${path})`, 'invalid_request_error', null, 'not_found');
    if (!allowed.includes(method))
      throw new HttpError(
        405,
        `${method} is not allowed on ${path} (allowed: ${allowed.join(', ')})`,
        'invalid_request_error',
        null,
        'method_not_allowed',
        {
          Allow: allowed.join(', '),
        },
      );
    if (path === '/health') return this.health(res, headers);
    if (!this.authorized(req))
      throw new HttpError(
        401,
        'Incorrect or missing API key: send Authorization: Bearer <key>.',
        'authentication_error',
        null,
        'invalid_api_key',
        {
          'WWW-Authenticate': 'Bearer',
        },
      );
    if (path === '/metrics') {
      const text = this.metrics.render();
      res.writeHead(200, { ...headers, 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(text);
      return;
    }
    const ctx = this.readyContext();
    if (path === '/v1/models' || path.startsWith('/v1/models/')) return this.models(res, headers, path, ctx);
    const ac = new AbortController();
    // The response's 'close' before its end means the client went away: cancel at once.
    res.on('close', () => {
      if (!res.writableFinished) ac.abort('client' satisfies CancelReason);
    });
    const body = await readJsonBody(req, this.opts.bodyLimit, this.opts.bodyTimeoutMs);
    const live = this.readyContext(); // the server may have started closing while the body arrived
    const work = handleGeneration(
      live,
      path === '/v1/chat/completions' ? 'chat' : 'completions',
      body,
      res,
      ac.signal,
      record,
      headers,
    );
    const tracked = work.catch(() => undefined);
    this.inflight.set(tracked, ac);
    try {
      await work;
    } finally {
      this.inflight.delete(tracked);
    }
  }

  /** The generation context, or a 503 saying why there is none. */
  private readyContext(): GenerationContext {
    if (this.state === 'closing' || this.state === 'closed')
      throw unavailable('the server is shutting down', 'shutting_down');
    if (this.state === 'failed') throw unavailable(`the model failed to load: ${this.loadError}`, 'model_load_failed');
    if (!this.ctx) throw unavailable('Loading model', 'model_loading');
    return this.ctx;
  }

  private health(res: http.ServerResponse, headers: Record<string, string>): void {
    this.readyContext();
    sendJson(res, 200, { status: 'ok' }, headers);
  }

  private models(
    res: http.ServerResponse,
    headers: Record<string, string>,
    path: string,
    ctx: GenerationContext,
  ): void {
    const m = ctx.model;
    const card = {
      id: ctx.modelId,
      object: 'model',
      created: this.loadedAt,
      owned_by: 'depthgate',
      meta: {
        architecture: m.config.architecture,
        num_layers: m.config.numLayers,
        context_size: ctx.contextSize,
        default_policy: formatPolicy(ctx.policy),
        flexidepth_layers: ctx.facts.flexiDepthLayers,
      },
    };
    if (path === '/v1/models') return sendJson(res, 200, { object: 'list', data: [card] }, headers);
    let id = path.slice('/v1/models/'.length);
    try {
      id = decodeURIComponent(id);
    } catch {
      // not percent-encoded UTF-8: compared as sent
    }
    if (id !== ctx.modelId)
      throw new HttpError(
        404,
        `The model '${id}' does not exist (this server serves '${ctx.modelId}').`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    sendJson(res, 200, card, headers);
  }
}

/**
 * An OpenAI-compatible server for `model` (or for the model a pending `loadModel()` promise will
 * give: until then /health answers 503). Call `listen()` to start it and `close()` to stop it.
 */
export function createServer(model: Model | Promise<Model>, options?: ServerOptions): DepthgateServer {
  return new DepthgateServer(model, options);
}
