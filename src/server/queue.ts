/**
 * Admission: at most `parallel` generations run at once (they share the model's batched forward
 * passes); up to `queueLength` more wait, first come first served; beyond that a request is
 * refused at once (429) instead of waiting without bound. A waiting request whose client leaves
 * gives up its place immediately.
 */
import { AbortError } from '../errors';
import { HttpError } from './errors';

interface Waiter {
  resolve(release: () => void): void;
  reject(e: unknown): void;
  signal: AbortSignal;
  onAbort(): void;
}

/** Slots for running generations and a bounded FIFO of requests waiting for one. */
export class Admission {
  private running = 0;
  private readonly waiters: Waiter[] = [];

  constructor(
    readonly parallel: number,
    readonly queueLength: number,
  ) {}

  /** Generations holding a slot. */
  get active(): number {
    return this.running;
  }

  /** Requests waiting for a slot. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** True when a request would start at once (a free slot and nobody waiting before it). */
  get free(): boolean {
    return this.running < this.parallel && this.waiters.length === 0;
  }

  /**
   * Resolves with a release function once a slot is free, and rejects with AbortError when
   * `signal` aborts while waiting. Throws (synchronously, before any response is started) a 429
   * HttpError when the queue is full.
   */
  acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) return Promise.reject(new AbortError('the request was cancelled while waiting', signal.reason));
    if (this.free) {
      this.running++;
      return Promise.resolve(this.releaser());
    }
    if (this.waiters.length >= this.queueLength)
      throw new HttpError(
        429,
        `the server is busy: ${this.running} generations are running and ${this.waiters.length} requests are waiting (the most it queues); retry later`,
        'rate_limit_error',
        null,
        'queue_full',
        { 'Retry-After': '1' },
      );
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new AbortError('the request was cancelled while waiting', signal.reason));
        },
      };
      signal.addEventListener('abort', w.onAbort, { once: true });
      this.waiters.push(w);
    });
  }

  /** Refuses every waiting request with `error` (shutdown). */
  rejectWaiting(error: unknown): void {
    for (const w of this.waiters.splice(0)) {
      w.signal.removeEventListener('abort', w.onAbort);
      w.reject(error);
    }
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiters.shift();
      if (next) {
        // The slot passes straight to the next waiter: `running` stays the same.
        next.signal.removeEventListener('abort', next.onAbort);
        next.resolve(this.releaser());
      } else this.running--;
    };
  }
}
