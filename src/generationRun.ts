/**
 * One generation's state and its decode loop: it feeds the prompt in slices, samples token after
 * token, turns tokens into text deltas, holds back text that may start a stop string, and counts
 * each token's depth. It owns what the generation holds (the sequence's busy flag, the tokens fed
 * so far, and a one-shot sequence with its KV reservation) and gives it all back exactly once,
 * in settle(), however the generation ends: completed, failed, cancelled, aborted, or abandoned
 * by a consumer that stopped reading (src/generation.ts).
 */
import { randomInt } from 'node:crypto';
import type { NativeSequence } from './binding';
import { AbortError } from './errors';
import type { GenerateOptions, GenerateResult, TokenChunk } from './options';
import type { Policy } from './policy';
import { nativeSampling, resolveSampling, type ResolvedSampling } from './sampling';
import { StopDetector } from './stopDetector';
import { StreamDecoder } from './streamDecoder';
import { PREFILL_SLICE } from './scheduler';
import { SpeculativeDecoder } from './speculative';
import type { GenerateInput } from './input';
import type { Sequence } from './sequence';

/** Default token limit of a generation. */
export const DEFAULT_MAX_TOKENS = 256;

/** How a generation ended. */
type Outcome = { finishReason: GenerateResult['finishReason'] } | { error: unknown };

/** @internal */
export class GenerationRun {
  readonly result: Promise<GenerateResult>;
  /** True once settled: everything held is given back and `result` is settled. */
  done = false;
  /** next() calls in flight: while there is one, the loop may be running (a pass in flight). */
  active = 0;
  /** The error a run settled from outside failed with (an abort without stopOnAbort). */
  private failure: unknown = undefined;
  /** Set by cancel() during a next(): the loop stops at its next check. */
  private cancelRequested = false;
  private resolveResult!: (r: GenerateResult) => void;
  private rejectResult!: (e: unknown) => void;
  private ns: NativeSequence | null = null; // the sequence, once acquired
  private readonly fed: number[] = [];
  private pending: number | null = null;
  private readonly generated: number[] = [];
  private readonly layerCounts: number[];
  private text = '';
  private promptTokens = 0;
  private prefillMs = 0;
  private decodeStart = 0;
  private readonly onAbort = () => this.aborted();
  /** The caller's sampling options over the model's generation_config.json defaults. */
  private readonly sampling: ResolvedSampling;
  private readonly maxTokens: number;
  /** Exact mode's drafting and verification, when the policy is speculative. */
  private spec: SpeculativeDecoder | null = null;

  constructor(
    private readonly seq: Sequence,
    private readonly input: GenerateInput,
    private readonly opts: GenerateOptions,
    private readonly policy: Policy,
    private readonly ownsSequence: boolean,
  ) {
    this.layerCounts = new Array<number>(seq.model.config.numLayers).fill(0);
    const defaults = seq.model.generationDefaults.options;
    this.sampling = resolveSampling(opts, defaults);
    this.maxTokens = opts.maxTokens ?? defaults.maxTokens ?? DEFAULT_MAX_TOKENS;
    if (opts.maxTokens === undefined && defaults.maxTokens !== undefined)
      this.sampling.fromGenerationConfig.push('maxTokens');
    this.result = new Promise((res, rej) => {
      this.resolveResult = res;
      this.rejectResult = rej;
    });
    // An unobserved rejection here is reported through the iterator instead.
    this.result.catch(() => undefined);
    opts.signal?.addEventListener('abort', this.onAbort, { once: true });
    // Aborted before it began: nothing to wait for (the listener would never fire).
    if (opts.signal?.aborted) this.aborted();
  }

  /**
   * Stops the generation: at once when no next() is running (nothing is in flight then), else
   * when the pass in flight returns. The result resolves with finishReason 'abort'.
   */
  cancel(): void {
    if (this.done) return;
    this.cancelRequested = true;
    if (this.active === 0) this.settle({ finishReason: 'abort' });
  }

  /** A next() call returned and none is running: a cancel or abort that came during it applies now. */
  idle(): void {
    if (this.done || this.active > 0) return;
    if (this.cancelRequested) this.settle({ finishReason: 'abort' });
    else if (this.opts.signal?.aborted) this.aborted();
  }

  /** The consumer can no longer read this generation (it was garbage-collected). */
  abandon(): void {
    if (this.active === 0) this.settle({ finishReason: 'abort' });
  }

  /** The signal fired: between next() calls, the generation ends now, as it would at the next check. */
  private aborted(): void {
    if (this.done || this.active > 0) return;
    this.settle(this.opts.stopOnAbort ? { finishReason: 'abort' } : { error: this.abortError() });
  }

  private abortError(): AbortError {
    return new AbortError('generation was aborted', this.opts.signal?.reason);
  }

  /** Gives back everything held and settles `result`; only the first call does anything. */
  settle(outcome: Outcome): void {
    if (this.done) return;
    this.done = true;
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    if (this.ns) {
      // Exact mode verifies ahead: positions past the tokens kept (a stop, eos or cancel inside
      // a step's tokens, or drafts of a step that was cut short) are forgotten.
      if (!this.seq.disposed) this.ns.truncate(this.seq.tokens.length + this.fed.length);
      this.seq.commit(this.fed, this.pending);
      this.seq.release();
    }
    if (this.ownsSequence) this.seq.dispose();
    if ('error' in outcome) {
      this.failure = outcome.error;
      this.rejectResult(outcome.error);
      return;
    }
    const n = this.generated.length;
    const depthTokens = n; // every generated token's pass counts, an eos token's too
    const decodeMs = n > 1 ? performance.now() - this.decodeStart : 0;
    this.resolveResult({
      text: this.text,
      tokens: this.generated,
      sampling: { ...this.sampling, fromGenerationConfig: [...this.sampling.fromGenerationConfig] },
      finishReason: outcome.finishReason,
      usage: { promptTokens: this.promptTokens, completionTokens: n },
      depth: {
        layerCounts: this.layerCounts,
        meanLayers: depthTokens ? this.layerCounts.reduce((a, b) => a + b, 0) / depthTokens : 0,
        tokens: depthTokens,
      },
      timings: {
        prefillMs: this.prefillMs,
        decodeMs,
        decodeTokensPerSecond: decodeMs > 0 ? ((n - 1) * 1000) / decodeMs : 0,
        prefillTokensPerSecond: this.prefillMs > 0 ? (this.promptTokens * 1000) / this.prefillMs : 0,
      },
      ...(this.spec ? { speculative: this.spec.stats() } : {}),
    });
  }

  /** Where the loop resumes (its start, after a yield): a run settled meanwhile goes no further. */
  private resumeCheck(): void {
    if (this.done) throw new SettledRun();
  }

  /** The decode loop. Each yield hands out a token; after each await, a settled run stops. */
  async *tokens(): AsyncGenerator<TokenChunk> {
    const { seq, opts, policy } = this;
    const model = seq.model;
    const maxTokens = this.maxTokens;
    const stops = new StopDetector(opts.stop ?? []);
    const eos = new Set(opts.stopOnEos === false ? [] : model.config.eosTokenIds);
    // Decode ahead (NativeRequest.ahead): the native side runs the next step while this loop
    // streams the token; never past an eos token that ends the run. DEPTHGATE_DECODE_AHEAD=0 turns
    // it off (benchmarks compare both).
    const ahead = process.env.DEPTHGATE_DECODE_AHEAD !== '0';
    const aheadStop = Int32Array.from(eos);
    const sampling = nativeSampling(this.sampling);
    const L = model.config.numLayers;
    let finishReason: GenerateResult['finishReason'] = 'length';
    let emitted = 0;
    const waiting: TokenChunk[] = [];
    const onToken = opts.onToken;
    // Hands out the held tokens; the text not yet given out goes with the last of them.
    const self = this; // eslint-disable-line @typescript-eslint/no-this-alias -- a generator function has no lexical this
    function* flush(): Generator<TokenChunk> {
      if (waiting.length === 0) return;
      waiting[waiting.length - 1]!.text = self.text.slice(emitted); // not empty: checked above
      emitted = self.text.length;
      for (const c of waiting.splice(0)) {
        onToken?.(c);
        yield c;
        self.resumeCheck();
      }
    }
    // After an await: the run may have been settled meanwhile (cancel, abort, dispose).
    const stopCheck = () => {
      if (this.cancelRequested) throw new CancelledRun();
      if (opts.signal?.aborted) throw this.abortError();
    };
    let outcome: Outcome | null = null;
    try {
      this.resumeCheck();
      const ids = seq.inputTokens(this.input);
      this.promptTokens = ids.length;
      seq.checkFits(ids.length);
      this.ns = seq.acquire();
      const ns = this.ns;
      const seed = opts.seed ?? randomInt(0, 2 ** 47);
      ns.setSeed(seed);
      const decoder = new StreamDecoder(model.tokenizer);
      stopCheck();
      const t0 = performance.now();
      // A long prompt goes in slices: an abort takes effect between them, and other sequences'
      // decode steps are not held up behind the whole prefill.
      let input = ids;
      while (input.length > PREFILL_SLICE) {
        const slice = input.slice(0, PREFILL_SLICE);
        await model.run({ sequence: ns, tokens: Int32Array.from(slice), logits: 'none' }, policy);
        this.fed.push(...slice);
        input = input.slice(PREFILL_SLICE);
        stopCheck();
      }
      // Exact mode: after the full-depth prompt pass, each step drafts and verifies several tokens.
      this.spec =
        policy.type === 'speculative'
          ? new SpeculativeDecoder(
              model,
              ns,
              policy,
              sampling,
              seq.speculativeThreshold(policy, sampling.temperature > 0),
              seed,
            )
          : null;
      const fullDepth = new Uint8Array(L).fill(1);
      const noRouterWeights = new Float32Array(L).fill(NaN);
      let i = 0;
      decode: while (i < maxTokens) {
        let produced: {
          token: number;
          executed: Uint8Array;
          routerWeights: Float32Array;
          speculative?: TokenChunk['speculative'];
        }[];
        if (this.spec && i > 0) {
          // Every emitted token comes from a full-depth row of the verification pass.
          const step = await this.spec.step(input[0]!, i, maxTokens - i, stopCheck);
          const verification = this.spec.stats().verifications;
          produced = step.tokens.map((token, j) => ({
            token,
            executed: fullDepth,
            routerWeights: noRouterWeights,
            speculative: { accepted: j < step.accepted, step: verification },
          }));
        } else {
          // The pass producing generated token i; D3 decays its depth with i (the prompt pass is 0).
          const r = await model.run(
            {
              sequence: ns,
              tokens: Int32Array.from(input),
              logits: 'none',
              sample: sampling,
              ...(i > 0 ? { genIndex: i } : {}),
              ...(ahead && i + 1 < maxTokens ? { ahead: true, aheadStop } : {}),
            },
            policy,
          );
          produced = [{ token: r.token!, executed: r.executed, routerWeights: r.routerWeights }];
        }
        for (const { token, executed, routerWeights, speculative } of produced) {
          this.fed.push(...input);
          this.pending = token;
          if (i === 0) {
            this.prefillMs = performance.now() - t0;
            this.decodeStart = performance.now();
          }
          this.generated.push(token);
          let layers = 0;
          for (let l = 0; l < L; l++) {
            const ran = executed[l] ?? 0; // executed has one entry per layer
            this.layerCounts[l] = (this.layerCounts[l] ?? 0) + ran;
            layers += ran;
          }
          const index = i++;
          if (eos.has(token)) {
            finishReason = 'eos';
            break decode;
          }
          this.text += decoder.push(token);
          waiting.push({
            token,
            text: '',
            index,
            layers,
            executed,
            routerWeights,
            ...(speculative ? { speculative } : {}),
          });
          // Text that may be the start of a stop string is held back, together with its tokens.
          const hit = stops.find(this.text, emitted);
          if (hit >= 0) {
            this.text = this.text.slice(0, hit);
            finishReason = 'stop';
            break decode;
          }
          if (stops.safeLength(this.text) === this.text.length && !decoder.holding) yield* flush();
          stopCheck();
          if (seq.tokens.length + this.fed.length + 1 > seq.contextSize) {
            finishReason = 'context';
            break decode;
          }
          input = [token];
        }
      }
      if (finishReason !== 'stop') {
        // The decoder's last held-back text can complete a stop string too.
        this.text += decoder.finish();
        const hit = stops.find(this.text, emitted);
        if (hit >= 0) {
          this.text = this.text.slice(0, hit);
          finishReason = 'stop';
        }
      }
      yield* flush();
      outcome = { finishReason };
    } catch (e) {
      if (e instanceof SettledRun) {
        if (this.failure !== undefined) throw this.failure;
        return;
      }
      if (e instanceof CancelledRun) outcome = { finishReason: 'abort' };
      else if (e instanceof AbortError && opts.stopOnAbort) outcome = { finishReason: 'abort' };
      else {
        outcome = { error: e };
        throw e;
      }
    } finally {
      // The consumer left the loop early (return() at a yield): that is an abort too.
      this.settle(outcome ?? { finishReason: 'abort' });
    }
  }
}

/** Thrown inside the loop when cancel() was called during a pass. */
class CancelledRun extends Error {}

/** Thrown inside the loop when it resumes after the run was settled from outside. */
class SettledRun extends Error {}
