/**
 * GenerationStream: a running generation, as an async iterable of tokens with a `result`. The
 * loop itself is in src/generationRun.ts; this file is about its life: whatever way a stream ends
 * (read to the end, left with break or return(), cancel(), its signal, an error, or dropped
 * by a consumer that stops reading), what it holds is given back and `result` settles.
 */
import { BusyError } from './errors';
import type { GenerateOptions, GenerateResult, TokenChunk } from './options';
import type { Policy } from './policy';
import type { GenerateInput } from './input';
import type { Sequence } from './sequence';
import { GenerationRun } from './generationRun';

export { DEFAULT_MAX_TOKENS } from './generationRun';

/** What a stream drives: a generation, or one that failed before it could start. */
interface Run {
  readonly result: Promise<GenerateResult>;
  active: number;
  idle(): void;
  cancel(): void;
  abandon(): void;
  tokens(): AsyncGenerator<TokenChunk>;
}

/** A generation refused before it took anything (a policy the model cannot run, a prompt that cannot fit). */
class FailedRun implements Run {
  readonly result: Promise<GenerateResult>;
  active = 0;
  constructor(private readonly error: unknown) {
    this.result = Promise.reject(error);
    this.result.catch(() => undefined); // reported through the iterator too
  }
  idle(): void {}
  cancel(): void {}
  abandon(): void {}
  // eslint-disable-next-line require-yield -- a stream that failed before it began yields nothing
  async *tokens(): AsyncGenerator<TokenChunk> {
    throw this.error;
  }
}

/**
 * A stream that can no longer be read gives back what it holds. Two kinds of targets share a
 * run: the stream (it matters only while it has not been iterated: until then nothing else can
 * start the run) and the iterator (once iterating, the iterator is what a reader holds). The
 * loop holds references to neither, so dropping them lets them be collected.
 */
const unreachable = new FinalizationRegistry<{ run: Run; stream: boolean; state: { started: boolean } }>((held) => {
  if (!held.stream || !held.state.started) held.run.abandon();
});

/**
 * A running generation: iterate it for tokens, await `result` for the outcome. Leaving the loop
 * early stops generation (finishReason 'abort'); so do cancel() and the options' signal, at once
 * when no token is being computed. A stream that is dropped without being read to the end is
 * given back when it is garbage-collected (its `result` resolves with finishReason 'abort').
 */
export class GenerationStream implements AsyncIterable<TokenChunk>, Disposable, AsyncDisposable {
  /**
   * Resolves with the outcome when generation ends (for any reason). The stream does not run by
   * itself: it generates as it is read, so `result` settles once the stream has been read to the
   * end, left early, cancel()ed, aborted by its signal, or dropped and garbage-collected; awaiting
   * it without reading waits for one of those. To run a generation without reading it, use
   * `generate()` (it reads the stream for you; `onToken` still sees every token).
   */
  readonly result: Promise<GenerateResult>;
  private readonly run: Run;
  // Shared with the registry's held value, which must not reference the stream itself.
  private readonly state = { started: false };

  /** @internal use Model.stream / Sequence.stream */
  constructor(run: Run) {
    this.run = run;
    this.result = run.result;
    unreachable.register(this, { run, stream: true, state: this.state });
  }

  /** @internal A stream generating a continuation of `seq`; it owns `seq` when `ownsSequence`. */
  static start(
    seq: Sequence,
    input: GenerateInput,
    opts: GenerateOptions,
    policy: Policy,
    ownsSequence: boolean,
  ): GenerationStream {
    return new GenerationStream(new GenerationRun(seq, input, opts, policy, ownsSequence));
  }

  /** @internal A stream whose iteration (and result) fail with `error`, holding nothing. */
  static failed(error: unknown): GenerationStream {
    return new GenerationStream(new FailedRun(error));
  }

  [Symbol.asyncIterator](): AsyncIterator<TokenChunk> {
    if (this.state.started) throw new BusyError('the stream can be iterated only once');
    this.state.started = true;
    const run = this.run;
    const gen = run.tokens();
    let begun = false;
    // Counted calls: while a next() runs, a pass may be in flight and nothing is given back early.
    const counted = async (call: () => Promise<IteratorResult<TokenChunk>>) => {
      run.active++;
      try {
        return await call();
      } finally {
        run.active--;
        run.idle();
      }
    };
    const iterator: AsyncIterator<TokenChunk> & AsyncIterable<TokenChunk> = {
      next: () => {
        begun = true;
        return counted(() => gen.next());
      },
      return: (value?: unknown) => {
        // A generator that never started runs no finally: give back here.
        if (!begun) run.cancel();
        return counted(() => gen.return(value as never));
      },
      throw: (e?: unknown) => counted(() => gen.throw(e)),
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    unreachable.register(iterator, { run, stream: false, state: this.state });
    return iterator;
  }

  /**
   * Stops the generation and gives back what it holds: at once when no token is being computed,
   * otherwise as soon as the pass in flight returns. `result` resolves with finishReason 'abort'
   * and what was generated so far. A server's disconnect path calls this (or aborts the signal).
   */
  cancel(): void {
    this.run.cancel();
  }

  /** cancel(), for `using`: what the stream holds is given back at once. */
  [Symbol.dispose](): void {
    this.run.cancel();
  }

  /** cancel(), for `await using`; also waits until `result` has settled. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.run.cancel();
    await this.result.catch(() => undefined);
  }
}
