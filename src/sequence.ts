/**
 * Sequence: one sequence of tokens with its own KV cache (a conversation, a document). It
 * remembers its tokens, so a chat can continue where it left off; evaluate, generate and stream
 * continue it, one call at a time.
 */
import type { NativeSequence } from './binding';
import { AbortError, BusyError, ContextOverflowError, DisposedError, InvalidOptionError } from './errors';
import { checkObject, validateGenerateOptions, type GenerateOptions, type GenerateResult } from './options';
import type { Policy, SpeculativePolicy } from './policy';
import { initialThreshold, type AdaptiveThreshold } from './speculative';
import type { Model } from './model';
import { GenerationStream } from './generation';
import { PREFILL_SLICE } from './scheduler';
import { tokenizeInput, type GenerateInput } from './input';

export type { GenerateInput } from './input';

/** Options of {@link Model.evaluate} and {@link Sequence.evaluate}. */
export interface EvaluateOptions {
  /** Which layers each token runs (default: the model's `defaultPolicy`; `{type: 'none'}` runs all). */
  policy?: Policy | undefined;
  /** Cancels between slices of 512 tokens; the promise rejects with AbortError. */
  signal?: AbortSignal | undefined;
  /**
   * Index in `tokens` where a known continuation starts, to score it as if it had been generated
   * (teacher forcing): the row at `generatedFrom + j` feeds generated token j and produces token
   * j + 1, which is what D3 counts; earlier rows are prompt rows. Default: every row is prompt.
   * Only D3 depends on it.
   */
  generatedFrom?: number | undefined;
}

/** Per-position logits from {@link Model.evaluate}. */
export interface EvaluateResult {
  /**
   * The token ids fed, one per row: the input, led by the last generated token of a previous
   * `generate()` on the same sequence when that token had not been fed yet.
   */
  tokens: number[];
  /** One row of `vocabSize` logits per fed token. */
  logits: Float32Array[];
  /** Length of each logits row. */
  vocabSize: number;
  /** Per position, per layer: 1 where the layer's full computation ran for that token. */
  executed: Uint8Array[];
  /** Per position, per layer: router weight (FlexiDepth), NaN where none. */
  routerWeights: Float32Array[];
  /**
   * Weight bytes read by the forward passes that served this call (a pass is shared with any
   * requests the scheduler batched with it): what skipping saves in memory traffic.
   */
  weightBytes: number;
}

/** One sequence of tokens with its own KV cache (a conversation, a document). */
export class Sequence implements Disposable, AsyncDisposable {
  /** Tokens whose K/V are in the cache. */
  readonly tokens: number[] = [];
  /** Context length in tokens. */
  readonly contextSize: number;
  private ns: NativeSequence | null;
  private busy = false;
  /** A sampled token not yet fed to the model; it leads the next call's input. */
  private pendingToken: number | null = null;

  /** @internal use {@link Model.createSequence} */
  constructor(
    readonly model: Model,
    ns: NativeSequence,
    contextSize: number,
  ) {
    this.ns = ns;
    this.contextSize = contextSize;
  }

  get disposed(): boolean {
    return this.ns === null;
  }

  /**
   * Frees the KV cache, at once (synchronous: also `using` and `await using`). A generation
   * running on this sequence fails with DisposedError at its next step.
   */
  dispose(): void {
    if (!this.ns) return;
    this.ns.dispose();
    this.ns = null;
    this.model.forget(this);
  }

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** dispose(), for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  /** Forgets everything: the next input starts at position 0. Refused (BusyError) while a call is generating. */
  reset(): void {
    const ns = this.live();
    if (this.busy)
      throw new BusyError('the sequence is generating: reset() it once that call has ended (or cancel it first)');
    ns.truncate(0);
    this.tokens.length = 0;
    this.pendingToken = null;
  }

  private live(): NativeSequence {
    if (!this.ns) throw new DisposedError('the sequence');
    this.model.live();
    return this.ns;
  }

  /**
   * @internal converts input to ids: BOS only at the start of a sequence; chat templates render
   * their own. An input that cannot fit the positions left is refused before it is tokenized.
   */
  inputTokens(input: GenerateInput): number[] {
    const fresh = this.tokens.length === 0 && this.pendingToken === null;
    const room = this.contextSize - this.tokens.length - (this.pendingToken === null ? 0 : 1);
    const ids = tokenizeInput(
      this.model.tokenizer,
      input,
      fresh,
      this.model.config.vocabSize,
      Math.max(0, room),
      this.contextSize,
    );
    if (this.pendingToken !== null) ids.unshift(this.pendingToken);
    if (ids.length === 0) throw new InvalidOptionError('input', 'is empty');
    return ids;
  }

  /** @internal Throws ContextOverflowError when n more tokens do not fit. */
  checkFits(n: number): void {
    const used = this.tokens.length;
    if (used + n > this.contextSize)
      throw new ContextOverflowError(
        `the prompt is ${n} tokens but only ${this.contextSize - used} of its ${this.contextSize} context positions are left (contextSize ${this.contextSize})`,
      );
  }

  /** Logits (and the layers each token ran) at every position of `tokens`, appended to this sequence. */
  async evaluate(tokens: ArrayLike<number>, options?: EvaluateOptions): Promise<EvaluateResult> {
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o))
      if (k !== 'policy' && k !== 'signal' && k !== 'generatedFrom')
        throw new InvalidOptionError(k, 'is not a known option (known: policy, signal, generatedFrom)');
    const signal = o.signal as AbortSignal | undefined;
    if (signal !== undefined && (typeof signal !== 'object' || signal === null || typeof signal.aborted !== 'boolean'))
      throw new InvalidOptionError('signal', 'must be an AbortSignal');
    const L = this.model.config.numLayers;
    const policy = this.model.checkPolicy(o.policy);
    const ids = this.inputTokens({ tokens });
    // A pending token from an earlier generate() leads `ids`; generatedFrom indexes `tokens`.
    const given = ids.length - (this.pendingToken === null ? 0 : 1);
    const gf = o.generatedFrom;
    if (gf !== undefined && (typeof gf !== 'number' || !Number.isInteger(gf) || gf < 0 || gf > given))
      throw new InvalidOptionError('generatedFrom', `must be an integer in [0, ${given}] (an index in tokens)`);
    const genStart = gf === undefined ? undefined : gf + ids.length - given;
    this.checkFits(ids.length);
    // The rows of logits this call returns count against the memory budget while it runs.
    const releaseLogits = this.model.reserveLogits(ids.length);
    let ns: NativeSequence;
    try {
      ns = this.acquire();
    } catch (e) {
      releaseLogits();
      throw e;
    }
    try {
      const v = this.model.config.vocabSize;
      const logits: Float32Array[] = [];
      const executed: Uint8Array[] = [];
      const routerWeights: Float32Array[] = [];
      let weightBytes = 0;
      for (let start = 0; start < ids.length; start += PREFILL_SLICE) {
        if (signal?.aborted) throw new AbortError('evaluation was aborted', signal.reason);
        const slice = ids.slice(start, start + PREFILL_SLICE);
        const genIndex = genStart === undefined ? {} : { genIndex: start - genStart + 1 };
        const r = await this.model.run(
          { sequence: ns, tokens: Int32Array.from(slice), logits: 'all', ...genIndex },
          policy,
        );
        this.tokens.push(...slice);
        this.pendingToken = null;
        weightBytes += r.weightBytes;
        for (let i = 0; i < slice.length; i++) {
          logits.push(r.logits!.subarray(i * v, (i + 1) * v));
          executed.push(r.executed.subarray(i * L, (i + 1) * L));
          routerWeights.push(r.routerWeights.subarray(i * L, (i + 1) * L));
        }
      }
      return { tokens: ids, logits, vocabSize: v, executed, routerWeights, weightBytes };
    } finally {
      this.busy = false;
      releaseLogits();
    }
  }

  /** Generates a continuation of this sequence. */
  async generate(input: GenerateInput, options?: GenerateOptions): Promise<GenerateResult> {
    const stream = this.stream(input, options);
    for await (const _ of stream) {
      // drain; onToken (if any) is called by the stream
    }
    return stream.result;
  }

  /**
   * Streams a continuation of this sequence. Bad options throw here; a policy the model cannot
   * run, like every error about the input, comes from iterating the stream (and its `result`).
   */
  stream(input: GenerateInput, options?: GenerateOptions): GenerationStream {
    const opts = validateGenerateOptions(options);
    let policy: Policy;
    try {
      policy = this.model.checkPolicy(opts.policy);
    } catch (e) {
      return GenerationStream.failed(e);
    }
    return GenerationStream.start(this, input, opts, policy, false);
  }

  /**
   * @internal K and V of one layer at every cached position, in f32 ([positions, kvHeads *
   * headDim] each): for tests that compare caches. Waits for a pass in flight.
   */
  kvCache(layer: number): { k: Float32Array; v: Float32Array; positions: number } {
    const ns = this.live();
    return { ...ns.readKv(layer), positions: ns.length };
  }

  /** @internal */
  acquire(): NativeSequence {
    const ns = this.live();
    if (this.busy) throw new BusyError('the sequence is already generating: use another sequence for concurrent work');
    this.busy = true;
    return ns;
  }

  /** @internal */
  release(): void {
    this.busy = false;
  }

  /**
   * @internal What the next pass continues from: the tokens in the cache, then a sampled token
   * not fed yet (it leads the next input).
   */
  heldTokens(): number[] {
    return this.pendingToken === null ? [...this.tokens] : [...this.tokens, this.pendingToken];
  }

  /**
   * @internal Keeps the first `length` held tokens (heldTokens()) and forgets the rest, so a
   * caller that re-renders its input (a chat session) can re-feed from where it differs.
   */
  rewind(length: number): void {
    const ns = this.live();
    if (this.busy) throw new BusyError('the sequence is generating: it can be rewound once that call has ended');
    if (length >= this.tokens.length + (this.pendingToken === null ? 0 : 1)) return;
    if (length <= this.tokens.length) {
      this.pendingToken = null;
      if (length < this.tokens.length) {
        ns.truncate(length);
        this.tokens.length = length;
      }
    }
  }

  /**
   * @internal Exact mode's draft-stop threshold for this sequence, which adapts across its turns
   * (started afresh when the policy or greedy/sampling changes).
   */
  speculativeThreshold(policy: SpeculativePolicy, sampled: boolean): AdaptiveThreshold {
    const key = JSON.stringify([policy, sampled]);
    if (this.threshold?.key !== key)
      this.threshold = { key, minConfidence: initialThreshold(policy, sampled), ema: undefined };
    return this.threshold;
  }
  private threshold: AdaptiveThreshold | undefined;

  /** @internal */
  commit(tokens: number[], pending: number | null): void {
    this.tokens.push(...tokens);
    this.pendingToken = pending;
  }
}
