/** Helpers of the server tests: raw HTTP requests, SSE parsing, /metrics parsing, waiting. */
import * as http from 'node:http';
import * as net from 'node:net';
import OpenAI from 'openai';
import type { RequestRecord } from '../src/server/options';

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json(): any;
}

/** One HTTP request with node:http (no client-side checks or retries), the whole body read. */
export function raw(
  base: string,
  method: string,
  path: string,
  body?: string | Buffer,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  const u = new URL(path, base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: u.port,
        path: u.pathname + u.search,
        method,
        headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode!, headers: res.headers, text, json: () => JSON.parse(text) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** POSTs a JSON body. */
export function post(
  base: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  return raw(base, 'POST', path, JSON.stringify(body), headers);
}

/** The events of an SSE body: each `data:` payload (JSON-parsed unless [DONE]) and each comment. */
export function parseSse(text: string): { data: any[]; comments: string[]; done: boolean; blocks: string[] } {
  const blocks = text.split('\n\n');
  expect(blocks.pop()).toBe(''); // every event ends with a blank line
  const data: any[] = [];
  const comments: string[] = [];
  let done = false;
  for (const b of blocks) {
    if (b.startsWith(':')) comments.push(b);
    else if (b === 'data: [DONE]') done = true;
    else {
      expect(b.startsWith('data: ')).toBe(true);
      expect(done).toBe(false); // nothing after [DONE]
      data.push(JSON.parse(b.slice(6)));
    }
  }
  return { data, comments, done, blocks };
}

/** /metrics as a map from `name{labels}` to value, the format checked line by line. */
export async function metrics(base: string, headers: Record<string, string> = {}): Promise<Map<string, number>> {
  const r = await raw(base, 'GET', '/metrics', undefined, headers);
  expect(r.status).toBe(200);
  expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
  const out = new Map<string, number>();
  for (const line of r.text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
    const m = /^([a-z_]+(?:\{[^}]*\})?) (-?[\d.e+-]+|NaN)$/.exec(line);
    expect(m).not.toBeNull();
    out.set(m![1], Number(m![2]));
  }
  return out;
}

/** An OpenAI client for a server, without retries (a 429 must be seen, not retried). */
export function client(url: string, apiKey = 'unused'): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });
}

/** Polls `f` until it returns true (every 5 ms, up to `ms`). */
export async function until(f: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Collects the server's request records; `next(pred)` waits for one matching. */
export class RecordLog {
  readonly all: RequestRecord[] = [];
  readonly onRequest = (r: RequestRecord) => {
    this.all.push(r);
  };
  async next(pred: (r: RequestRecord) => boolean, ms = 10_000): Promise<RequestRecord> {
    let found: RequestRecord | undefined;
    await until(() => (found = this.all.find(pred)) !== undefined, ms);
    return found!;
  }
}

/** A raw TCP connection for clients that misbehave (trickle a body, cut it short, send bytes HTTP forbids). */
export function connect(base: string): Promise<net.Socket> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(u.port), u.hostname, () => resolve(s));
    s.on('error', reject);
  });
}

/** Everything a socket receives until it closes (or `ms` passes). */
export function readAll(s: net.Socket, ms = 10_000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const t = setTimeout(() => resolve({ text: Buffer.concat(chunks).toString('utf8'), closed: false }), ms);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('close', () => {
      clearTimeout(t);
      resolve({ text: Buffer.concat(chunks).toString('utf8'), closed: true });
    });
  });
}

/** A promise with its resolve and reject functions. */
export function deferred<T>(): { promise: Promise<T>; resolve(v: T): void; reject(e: unknown): void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
