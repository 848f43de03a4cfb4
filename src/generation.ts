/**
 * GenerationStream: a running generation of one sequence. It feeds the prompt in slices, samples
 * token after token, turns tokens into text deltas, holds back text that may start a stop string,
 * and reports each token's depth.
 */
import { randomInt } from 'node:crypto';
import type { NativeSequence } from './binding';
import { AbortError, InvalidOptionError } from './errors';
import type { GenerateOptions, GenerateResult, TokenChunk } from './options';
import { validatePolicy } from './policy';
import { StreamDecoder } from './tokenizer';
import { PREFILL_SLICE } from './scheduler';
import type { GenerateInput, Sequence } from './sequence';

/** Default token limit of a generation. */
export const DEFAULT_MAX_TOKENS = 256;

/**
 * A running generation: iterate it for tokens, await `result` for the outcome. Leaving the loop
 * early stops generation (finishReason 'abort').
 */
export class GenerationStream implements AsyncIterable<TokenChunk> {
  /** Resolves with the outcome when generation ends. */
  readonly result: Promise<GenerateResult>;
  private resolveResult!: (r: GenerateResult) => void;
  private rejectResult!: (e: unknown) => void;
  private started = false;

  /** @internal */
  constructor(
    private readonly seq: Sequence,
    private readonly input: GenerateInput,
    private readonly opts: GenerateOptions,
    private readonly ownsSequence: boolean,
  ) {
    this.result = new Promise((res, rej) => {
      this.resolveResult = res;
      this.rejectResult = rej;
    });
    // An unobserved rejection here is reported through the iterator instead.
    this.result.catch(() => undefined);
  }

  [Symbol.asyncIterator](): AsyncIterator<TokenChunk> {
    if (this.started) throw new InvalidOptionError('stream', 'can be iterated only once');
    this.started = true;
    return this.run();
  }

  private async *run(): AsyncGenerator<TokenChunk> {
    const { seq, opts } = this;
    const model = seq.model;
    const maxTokens = opts.maxTokens ?? DEFAULT_MAX_TOKENS;
    const stops = opts.stop ?? [];
    const eos = new Set(opts.stopOnEos === false ? [] : model.config.eosTokenIds);
    const sampling = { temperature: opts.temperature ?? 0, topK: opts.topK ?? 0, topP: opts.topP ?? 1 };
    const L = model.config.numLayers;
    const policy = validatePolicy(opts.policy, L);
    const layerCounts = new Array<number>(L).fill(0);
    let depthTokens = 0;
    let finishReason: GenerateResult['finishReason'] = 'length';
    const generated: number[] = [];
    const fed: number[] = [];
    let pending: number | null = null;
    let ns: NativeSequence | null = null;
    let promptTokens = 0;
    let prefillMs = 0;
    let decodeStart = 0;
    let text = '';
    let emitted = 0;
    let completed = false;
    const waiting: TokenChunk[] = [];
    let decoder: StreamDecoder;
    // Hands out the held tokens; the text not yet given out goes with the last of them.
    const onToken = opts.onToken;
    function* flush(): Generator<TokenChunk> {
      if (waiting.length === 0) return;
      waiting[waiting.length - 1].text = text.slice(emitted);
      emitted = text.length;
      for (const c of waiting.splice(0)) {
        onToken?.(c);
        yield c;
      }
    }
    try {
      const ids = seq.inputTokens(this.input);
      promptTokens = ids.length;
      seq.checkFits(ids.length);
      ns = seq.acquire();
      ns.setSeed(opts.seed ?? randomInt(0, 2 ** 47));
      decoder = new StreamDecoder(model.tokenizer);
      const abortCheck = () => {
        if (opts.signal?.aborted) throw new AbortError('generation was aborted', opts.signal.reason);
      };
      abortCheck();
      const t0 = performance.now();
      // A long prompt goes in slices: an abort takes effect between them, and other sequences'
      // decode steps are not held up behind the whole prefill.
      let input = ids;
      while (input.length > PREFILL_SLICE) {
        const slice = input.slice(0, PREFILL_SLICE);
        await model.run({ sequence: ns, tokens: Int32Array.from(slice), logits: 'none' }, policy);
        fed.push(...slice);
        input = input.slice(PREFILL_SLICE);
        abortCheck();
      }
      for (let i = 0; i < maxTokens; i++) {
        // The pass producing generated token i; D3 decays its depth with i (the prompt pass is 0).
        const r = await model.run(
          { sequence: ns, tokens: Int32Array.from(input), logits: 'none', sample: sampling, ...(i > 0 ? { genIndex: i } : {}) },
          policy,
        );
        fed.push(...input);
        const token = r.token!;
        pending = token;
        if (i === 0) {
          prefillMs = performance.now() - t0;
          decodeStart = performance.now();
        }
        generated.push(token);
        let layers = 0;
        for (let l = 0; l < L; l++) {
          layerCounts[l] += r.executed[l];
          layers += r.executed[l];
        }
        depthTokens++;
        if (eos.has(token)) {
          finishReason = 'eos';
          break;
        }
        text += decoder.push(token);
        waiting.push({ token, text: '', index: i, layers, executed: r.executed, routerWeights: r.weights });
        // Text that may be the start of a stop string is held back, together with its tokens.
        let hit = -1;
        for (const s of stops) {
          const at = text.indexOf(s, Math.max(0, emitted - s.length));
          if (at >= 0 && (hit < 0 || at < hit)) hit = at;
        }
        if (hit >= 0) {
          text = text.slice(0, hit);
          finishReason = 'stop';
          break;
        }
        let safe = text.length;
        for (const s of stops)
          for (let k = Math.min(s.length - 1, text.length); k > 0; k--)
            if (text.endsWith(s.slice(0, k))) {
              safe = Math.min(safe, text.length - k);
              break;
            }
        if (safe === text.length && !decoder.holding) yield* flush();
        abortCheck();
        if (seq.tokens.length + fed.length + 1 > seq.contextSize) {
          finishReason = 'context';
          break;
        }
        input = [token];
      }
      if (finishReason !== 'stop') text += decoder.finish();
      yield* flush();
      completed = true;
    } catch (e) {
      if (e instanceof AbortError && opts.stopOnAbort) {
        finishReason = 'abort';
        completed = true;
      } else {
        this.rejectResult(e);
        throw e;
      }
    } finally {
      if (!completed && ns) finishReason = 'abort'; // the consumer left the loop
      if (ns) {
        seq.commit(fed, pending);
        seq.release();
      }
      if (this.ownsSequence) seq.dispose();
      const end = performance.now();
      const decodeMs = generated.length > 1 ? end - decodeStart : 0;
      this.resolveResult({
        text,
        tokens: generated,
        finishReason,
        usage: { promptTokens, completionTokens: generated.length },
        depth: {
          layerCounts,
          meanLayers: depthTokens ? layerCounts.reduce((a, b) => a + b, 0) / depthTokens : 0,
          tokens: depthTokens,
        },
        timings: {
          prefillMs,
          decodeMs,
          decodeTokensPerSecond: decodeMs > 0 ? ((generated.length - 1) * 1000) / decodeMs : 0,
          prefillTokensPerSecond: prefillMs > 0 ? (promptTokens * 1000) / prefillMs : 0,
        },
      });
    }
  }
}
