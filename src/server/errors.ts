/**
 * HTTP errors in the body shape OpenAI clients parse: `{"error": {"message", "type", "param", "code"}}`
 * (vLLM's and OpenAI's shape; `param` names the request field at fault, `code` is a stable string).
 * The library's typed errors map onto statuses here, in one place.
 */
import {
  AbortError,
  ContextOverflowError,
  DepthgateError,
  DisposedError,
  InvalidOptionError,
  OutOfMemoryError,
} from '../errors';

/** The JSON body of every error response. */
export interface ErrorBody {
  /** What went wrong. */
  error: {
    /** A sentence for a person: the field, what it must be and what it was. */
    message: string;
    /** The class of error: `invalid_request_error`, `authentication_error`, `not_found_error`, `rate_limit_error`, `unavailable_error`, `server_error`. */
    type: string;
    /** The request field at fault (dotted path, e.g. `messages[0].role`), or null. */
    param: string | null;
    /** A stable machine-readable code (e.g. `context_length_exceeded`, `unknown_parameter`), or null. */
    code: string | null;
  };
}

/** An error answered with an HTTP status and an OpenAI-shaped body. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (Retry-After, WWW-Authenticate, Allow). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400: a request field of the wrong type or value; `code` says which kind. */
export function invalidRequest(
  message: string,
  param: string | null,
  code: string | null = 'invalid_value',
): HttpError {
  return new HttpError(400, message, 'invalid_request_error', param, code);
}

/** 400: a field OpenAI defines that this server does not implement (or only some values of it). */
export function unsupported(param: string, message: string): HttpError {
  return new HttpError(400, message, 'invalid_request_error', param, 'unsupported_parameter');
}

/** 503 with Retry-After: the model is loading, or the server is shutting down. */
export function unavailable(
  message: string,
  code: 'model_loading' | 'model_load_failed' | 'shutting_down' | 'insufficient_memory',
): HttpError {
  return new HttpError(503, message, 'unavailable_error', null, code, { 'Retry-After': '1' });
}

/**
 * The HTTP error for an error thrown while serving a request. Typed library errors are the
 * client's fault (400) or a temporary lack of resources (503); anything else is a 500 whose
 * message is kept (the server is a local tool, not a multi-tenant API hiding its internals).
 */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof ContextOverflowError) return invalidRequest(e.message, null, 'context_length_exceeded');
  if (e instanceof InvalidOptionError) return invalidRequest(e.message, e.option);
  if (e instanceof OutOfMemoryError)
    return unavailable(`not enough memory for this request's KV cache right now: ${e.message}`, 'insufficient_memory');
  if (e instanceof DisposedError) return unavailable('the server is shutting down', 'shutting_down');
  if (e instanceof AbortError) return unavailable('the request was cancelled', 'shutting_down');
  const message = e instanceof Error ? e.message : String(e);
  const code = e instanceof DepthgateError ? e.code : null;
  return new HttpError(500, `internal error: ${message}`, 'server_error', null, code);
}
