/**
 * Typed errors. Every error depthgate throws is a {@link DepthgateError} with a stable `code`;
 * errors about a file carry `file`, errors about an option carry `option`.
 */

/**
 * The stable codes of depthgate's errors, as a union: `err.code === 'ERR_DEPTHGATE_ABORT'` (a typo)
 * does not compile. Written out here (not derived from an internal value) so that the shipped
 * declarations, built with stripInternal, carry the union itself.
 */
export type DepthgateErrorCode =
  | 'ERR_DEPTHGATE_MODEL_FORMAT'
  | 'ERR_DEPTHGATE_MODEL_IO'
  | 'ERR_DEPTHGATE_UNSUPPORTED'
  | 'ERR_DEPTHGATE_INVALID_OPTION'
  | 'ERR_DEPTHGATE_CONTEXT_OVERFLOW'
  | 'ERR_DEPTHGATE_OUT_OF_MEMORY'
  | 'ERR_DEPTHGATE_DISPOSED'
  | 'ERR_DEPTHGATE_BUSY'
  | 'ERR_DEPTHGATE_ABORTED'
  | 'ERR_DEPTHGATE_BACKEND_UNAVAILABLE'
  | 'ERR_DEPTHGATE_NATIVE_LOAD'
  | 'ERR_DEPTHGATE_CUDA'
  | 'ERR_DEPTHGATE_INTERNAL';

/** Every code once: a Record over the union, so the compiler refuses a missing or an extra one. */
const CODE_SET: Record<DepthgateErrorCode, true> = {
  ERR_DEPTHGATE_MODEL_FORMAT: true,
  ERR_DEPTHGATE_MODEL_IO: true,
  ERR_DEPTHGATE_UNSUPPORTED: true,
  ERR_DEPTHGATE_INVALID_OPTION: true,
  ERR_DEPTHGATE_CONTEXT_OVERFLOW: true,
  ERR_DEPTHGATE_OUT_OF_MEMORY: true,
  ERR_DEPTHGATE_DISPOSED: true,
  ERR_DEPTHGATE_BUSY: true,
  ERR_DEPTHGATE_ABORTED: true,
  ERR_DEPTHGATE_BACKEND_UNAVAILABLE: true,
  ERR_DEPTHGATE_NATIVE_LOAD: true,
  ERR_DEPTHGATE_CUDA: true,
  ERR_DEPTHGATE_INTERNAL: true,
};

/**
 * @internal Every code a DepthgateError can carry, one per row of the README's errors table
 * (test/badInput.test.ts checks both ways).
 */
export const ERROR_CODES = Object.keys(CODE_SET) as DepthgateErrorCode[];

/** Base class of every error depthgate throws. */
export class DepthgateError extends Error {
  /** Stable machine-readable code, e.g. `ERR_DEPTHGATE_MODEL_FORMAT`. */
  readonly code: DepthgateErrorCode;
  /** The file at fault, when there is one. */
  readonly file?: string;
  constructor(code: DepthgateErrorCode, message: string, options?: { file?: string; cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = new.target.name;
    this.code = code;
    if (options?.file !== undefined) this.file = options.file;
  }
}

/** A checkpoint file is malformed: bad safetensors header, wrong shapes, missing or extra tensors, bad config. */
export class ModelFormatError extends DepthgateError {
  constructor(message: string, file?: string, cause?: unknown) {
    super('ERR_DEPTHGATE_MODEL_FORMAT', file ? `${file}: ${message}` : message, { file, cause });
  }
}

/** A model file is missing or cannot be read. */
export class ModelFileError extends DepthgateError {
  constructor(message: string, file?: string, cause?: unknown) {
    super('ERR_DEPTHGATE_MODEL_IO', file ? `${file}: ${message}` : message, { file, cause });
  }
}

/** The model's architecture or a config option is valid Hugging Face but not supported here. */
export class UnsupportedModelError extends DepthgateError {
  constructor(message: string, file?: string) {
    super('ERR_DEPTHGATE_UNSUPPORTED', file ? `${file}: ${message}` : message, { file });
  }
}

/** An option has the wrong type or value. `option` names it. */
export class InvalidOptionError extends DepthgateError {
  readonly option: string;
  constructor(option: string, message: string) {
    super('ERR_DEPTHGATE_INVALID_OPTION', `option '${option}': ${message}`);
    this.option = option;
  }
}

/** The prompt (plus what must be generated) does not fit in the sequence's context. */
export class ContextOverflowError extends DepthgateError {
  constructor(message: string) {
    super('ERR_DEPTHGATE_CONTEXT_OVERFLOW', message);
  }
}

/** Memory for weights, KV cache or scratch could not be allocated. */
export class OutOfMemoryError extends DepthgateError {
  constructor(message: string) {
    super('ERR_DEPTHGATE_OUT_OF_MEMORY', message);
  }
}

/** The object was used after dispose(). */
export class DisposedError extends DepthgateError {
  /** @param what the object, e.g. "the model"; or, with `message`, ignored. */
  constructor(what: string, message?: string) {
    super('ERR_DEPTHGATE_DISPOSED', message ?? `${what} has been disposed`);
  }
}

/**
 * The object is busy with another operation that must finish first: a sequence that is already
 * generating (one call at a time per sequence), a stream that is already being iterated.
 */
export class BusyError extends DepthgateError {
  constructor(message: string) {
    super('ERR_DEPTHGATE_BUSY', message);
  }
}

/** The operation was cancelled through an AbortSignal. */
export class AbortError extends DepthgateError {
  constructor(message = 'the operation was aborted', cause?: unknown) {
    super('ERR_DEPTHGATE_ABORTED', message, { cause });
  }
}

/** The requested compute backend cannot be used here; `reason` says why. */
export class BackendUnavailableError extends DepthgateError {
  readonly backend: string;
  readonly reason: string;
  constructor(backend: string, reason: string) {
    super('ERR_DEPTHGATE_BACKEND_UNAVAILABLE', `backend '${backend}' is not available: ${reason}`);
    this.backend = backend;
    this.reason = reason;
  }
}

/** The native addon could not be loaded; `attempts` says what was tried and why each failed. */
export class NativeLoadError extends DepthgateError {
  readonly attempts: { path: string; error: string }[];
  constructor(message: string, attempts: { path: string; error: string }[]) {
    super('ERR_DEPTHGATE_NATIVE_LOAD', message);
    this.attempts = attempts;
  }
}

/**
 * Maps an error thrown by the native addon (which carries `code`, and maybe `file` or `option`) to
 * its typed class. Every code that reaches a user is one of the documented ones: a native code
 * that is not (a malformed call from this package to the addon) becomes ERR_DEPTHGATE_INTERNAL.
 */
export function fromNative(e: unknown): Error {
  if (e instanceof DepthgateError) return e;
  // Errors made by the addon belong to the realm of the caller's main context, so under jest or
  // vm they fail `instanceof Error` here: recognise them by shape instead.
  if (typeof e !== 'object' || e === null || typeof (e as { message?: unknown }).message !== 'string')
    return new DepthgateError('ERR_DEPTHGATE_INTERNAL', String(e));
  const err = e as Error;
  const code = (e as { code?: unknown }).code;
  const file = (e as { file?: unknown }).file;
  const option = (e as { option?: unknown }).option;
  const f = typeof file === 'string' ? file : undefined;
  switch (code) {
    case 'ERR_DEPTHGATE_MODEL_FORMAT':
      return new ModelFormatError(err.message, f, err);
    case 'ERR_DEPTHGATE_MODEL_IO':
      return new ModelFileError(err.message, f, err);
    case 'ERR_DEPTHGATE_UNSUPPORTED':
      return new UnsupportedModelError(err.message, f);
    case 'ERR_DEPTHGATE_INVALID_OPTION':
      return new InvalidOptionError(typeof option === 'string' ? option : 'options', err.message);
    case 'ERR_DEPTHGATE_CONTEXT_OVERFLOW':
      return new ContextOverflowError(err.message);
    case 'ERR_DEPTHGATE_OUT_OF_MEMORY':
      return new OutOfMemoryError(err.message);
    case 'ERR_DEPTHGATE_DISPOSED':
      return new DisposedError('', err.message);
    case 'ERR_DEPTHGATE_ABORTED':
      return new AbortError(err.message, err);
    case 'ERR_DEPTHGATE_BACKEND_UNAVAILABLE':
      return new BackendUnavailableError('cuda', err.message);
    case 'ERR_DEPTHGATE_CUDA':
      return new DepthgateError('ERR_DEPTHGATE_CUDA', err.message, { file: f, cause: err });
    case 'ERR_DEPTHGATE_INVALID_ARGUMENT': // a malformed call from this package to the addon
      return new DepthgateError('ERR_DEPTHGATE_INTERNAL', `internal error (a bug in depthgate): ${err.message}`, {
        cause: err,
      });
    default:
      return new DepthgateError('ERR_DEPTHGATE_INTERNAL', err.message, { file: f, cause: err });
  }
}
