/**
 * Reading a JSON request body without trusting the client: a size limit (checked against
 * Content-Length before reading, and again while reading a chunked body), a deadline for the
 * whole body (a client that trickles bytes in cannot hold a connection and its memory forever),
 * strict UTF-8 and JSON. Each failure is an HttpError with its status (413, 408, 400).
 */
import type { IncomingMessage } from 'node:http';
import { AbortError } from '../errors';
import { HttpError, invalidRequest } from './errors';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Reads and parses the body; rejects with HttpError, or AbortError when the client goes away first. */
export function readJsonBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const tooLarge = () =>
      new HttpError(
        413,
        `the request body is larger than the limit of ${limit} bytes`,
        'invalid_request_error',
        null,
        'request_too_large',
      );
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) return reject(tooLarge());
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (err: unknown, value?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onClose);
      req.off('close', onClose);
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(
      () =>
        finish(
          new HttpError(
            408,
            `the request body did not arrive within ${timeoutMs} ms`,
            'invalid_request_error',
            null,
            'request_timeout',
          ),
        ),
      timeoutMs,
    );
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return finish(tooLarge());
      chunks.push(chunk);
    };
    const onEnd = () => {
      let text: string;
      try {
        text = utf8.decode(Buffer.concat(chunks, size));
      } catch {
        return finish(invalidRequest('the request body is not valid UTF-8', null, 'invalid_utf8'));
      }
      if (text.trim() === '')
        return finish(invalidRequest('the request body is empty; expected a JSON object', null, 'invalid_json'));
      try {
        finish(null, JSON.parse(text));
      } catch (e) {
        finish(invalidRequest(`the request body is not valid JSON: ${(e as Error).message}`, null, 'invalid_json'));
      }
    };
    const onClose = () => finish(new AbortError('the client closed the connection before sending the whole body'));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onClose);
    req.on('close', onClose);
  });
}
