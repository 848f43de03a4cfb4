/**
 * Exact mode: self-speculative decoding. One step drafts up to maxDraft tokens with the draft
 * policy, one pass per token (each writes its K/V, computed from skipped-layer states); then
 * forgets those positions and runs one full-depth pass over the last accepted token and every
 * drafted one, which rewrites their K/V at full depth and gives the full model's logits after
 * each. Greedy keeps the longest drafted prefix that equals the full model's argmax, then takes
 * the full model's next token; sampling accepts with min(1, p/q) and resamples a rejection from
 * normalize(max(p - q, 0)) (src/speculativeSampling.ts). The cache is then cut to the tokens
 * kept, so it holds what a plain full-depth run would have written.
 *
 * Repetition, frequency and presence penalties apply to both p and q as a plain run applies them
 * before it samples: the engine penalises each logits row natively (NativeRequest.penalties) over
 * the window that ends at that row's token, and the window holds the context the cache holds, so
 * rejected drafts, once forgotten, are never counted.
 *
 * The verify pass runs under `none`: the scheduler puts it in the pass of other sequences' drafts
 * (whatever their policy) with its rows marked full-depth.
 */
import type { NativeSequence } from './binding';
import { nativePenalties, type NativePenalties, type NativeSampling } from './sampling';
import type { Model } from './model';
import type { SkipPolicy, SpeculativePolicy } from './policy';
import { DEFAULT_MAX_DRAFT } from './policy';
import {
  SplitMix64,
  argmaxOf,
  drawFrom,
  samplingDistribution,
  topProbability,
  verifySampled,
  type TokenDistribution,
} from './speculativeSampling';

/** What exact mode did in a generation (GenerateResult.speculative). */
export interface SpeculativeStats {
  /** Tokens the draft proposed. */
  drafted: number;
  /** Of those, the tokens verification kept. */
  accepted: number;
  /** accepted / drafted (0 when nothing was drafted). */
  acceptanceRate: number;
  /** Verification passes (each emits the accepted drafts plus one token of the full model's). */
  verifications: number;
  /** drafted / verifications. */
  meanDraftLength: number;
  /** Draft passes run (one per drafted token). */
  draftPasses: number;
  /**
   * Layers computed per token emitted by speculative steps: the draft passes' layers plus every
   * verified row's full depth, over the tokens those steps emitted (a plain full-depth run: the
   * model's layer count; below it, exact mode computed less).
   */
  layersPerToken: number;
  /** The draft-stop threshold at the end (it moves when the policy has targetAcceptance). */
  minConfidence: number;
}

/** @internal Per-sequence state of the adaptive draft-stop threshold (it carries over between turns). */
export interface AdaptiveThreshold {
  key: string;
  minConfidence: number;
  /** Exponential moving average of the acceptance rate per verification. */
  ema: number | undefined;
}

/** Moves per verification of the adaptive threshold, and the EMA weight of the newest rate (Self-SD's). */
const ADAPT_STEP = 0.01;
const EMA_NEW = 0.1;

/** @internal The starting draft-stop threshold: the policy's, else Self-SD's start when adapting (0.8 greedy, 0.5 sampling), else 0. */
export function initialThreshold(p: SpeculativePolicy, sampled: boolean): number {
  if (p.minConfidence !== undefined) return p.minConfidence;
  return p.targetAcceptance === undefined ? 0 : sampled ? 0.5 : 0.8;
}

/** The result of one speculative step. */
export interface SpeculativeStep {
  /** The tokens emitted, in order: the accepted drafts, then the full model's token. */
  tokens: number[];
  drafted: number;
  accepted: number;
}

/** @internal Runs the speculative steps of one generation on one sequence. */
export class SpeculativeDecoder {
  private readonly draftPolicy: SkipPolicy;
  private readonly maxDraft: number;
  /** The penalties both passes apply to their logits rows, when any is on. */
  private readonly penalties: NativePenalties | undefined;
  private readonly sampled: boolean;
  private readonly rng: SplitMix64;
  private drafted = 0;
  private accepted = 0;
  private verifications = 0;
  private draftPasses = 0;
  private layers = 0;
  private emitted = 0;

  constructor(
    private readonly model: Model,
    private readonly ns: NativeSequence,
    private readonly policy: SpeculativePolicy,
    private readonly sampling: NativeSampling,
    private readonly threshold: AdaptiveThreshold,
    seed: number,
  ) {
    this.draftPolicy = policy.draft;
    this.penalties = nativePenalties(sampling);
    this.maxDraft = policy.maxDraft ?? DEFAULT_MAX_DRAFT;
    this.sampled = sampling.temperature > 0;
    // Its own stream, apart from the native generator's (which the prompt pass draws from).
    this.rng = new SplitMix64(seed, 0xd1b54a32d192ed03n);
  }

  /**
   * One step from `last`, the token not yet fed (the cache holds every position before it).
   * `genIndex` is the index of the first token this step emits (D3 counts it); at most `limit`
   * tokens are emitted (>= 1), and the draft never runs past the context. `check` runs after
   * every draft pass and may throw (cancel, abort): the drafted positions are then forgotten, so
   * the cache again ends just before `last`. On return the cache holds `last` and every emitted
   * token but the final one.
   */
  async step(last: number, genIndex: number, limit: number, check: () => void): Promise<SpeculativeStep> {
    const ns = this.ns;
    const base = ns.length;
    const L = this.model.config.numLayers;
    // k drafts need k + 1 verified rows: positions base .. base + k.
    const k = Math.max(0, Math.min(this.maxDraft, limit - 1, ns.contextSize - base - 1));
    const drafts: number[] = [];
    const qs: TokenDistribution[] = [];
    let draftLayers = 0;
    let ok = false;
    try {
      let input = last;
      while (drafts.length < k) {
        const r = await this.model.run(
          {
            sequence: ns,
            tokens: Int32Array.of(input),
            logits: 'last',
            genIndex: genIndex + drafts.length,
            ...(this.penalties ? { penalties: this.penalties } : {}),
          },
          this.draftPolicy,
        );
        this.draftPasses++;
        for (let l = 0; l < L; l++) draftLayers += r.executed[l] ?? 0;
        const logits = r.logits!;
        let token: number;
        let confidence: number;
        if (this.sampled) {
          const q = samplingDistribution(logits, this.sampling);
          token = drawFrom(q, this.rng.uniform());
          confidence = q.probs[0]!;
          qs.push(q);
        } else {
          token = argmaxOf(logits);
          confidence = topProbability(logits);
        }
        drafts.push(token);
        input = token;
        check();
        // The low-confidence token is kept (its pass is paid for); drafting stops after it.
        if (confidence < this.threshold.minConfidence) break;
      }
      // Forget the draft's K/V and verify at full depth: the pass rewrites those positions.
      ns.truncate(base);
      const rows = [last, ...drafts];
      const r = await this.model.run(
        {
          sequence: ns,
          tokens: Int32Array.from(rows),
          logits: 'all',
          ...(this.penalties ? { penalties: this.penalties } : {}),
        },
        { type: 'none' },
      );
      const logits = r.logits!;
      const V = this.model.config.vocabSize;
      const row = (j: number) => logits.subarray(j * V, (j + 1) * V);
      let tokens: number[];
      if (this.sampled) {
        const ps = rows.map((_, j) => samplingDistribution(row(j), this.sampling));
        tokens = verifySampled(drafts, qs, ps, () => this.rng.uniform());
      } else {
        tokens = [];
        for (let j = 0; j <= drafts.length; j++) {
          const best = argmaxOf(row(j));
          tokens.push(best);
          if (j === drafts.length || best !== drafts[j]) break;
        }
      }
      const accepted = tokens.length - 1;
      // Keep `last` and the accepted drafts; the rejected positions are forgotten.
      ns.truncate(base + 1 + accepted);
      this.drafted += drafts.length;
      this.accepted += accepted;
      this.verifications++;
      this.layers += draftLayers + rows.length * L;
      this.emitted += tokens.length;
      if (drafts.length > 0) this.adapt(accepted / drafts.length);
      ok = true;
      return { tokens, drafted: drafts.length, accepted };
    } finally {
      if (!ok) ns.truncate(base);
    }
  }

  /** Self-SD's rule: an EMA of the acceptance rate; below the target, stop drafting sooner. */
  private adapt(rate: number): void {
    const target = this.policy.targetAcceptance;
    if (target === undefined) return;
    const t = this.threshold;
    t.ema = t.ema === undefined ? rate : (1 - EMA_NEW) * t.ema + EMA_NEW * rate;
    t.minConfidence = Math.min(1, Math.max(0, t.minConfidence + (t.ema < target ? ADAPT_STEP : -ADAPT_STEP)));
  }

  stats(): SpeculativeStats {
    return {
      drafted: this.drafted,
      accepted: this.accepted,
      acceptanceRate: this.drafted ? this.accepted / this.drafted : 0,
      verifications: this.verifications,
      meanDraftLength: this.verifications ? this.drafted / this.verifications : 0,
      draftPasses: this.draftPasses,
      layersPerToken: this.emitted ? this.layers / this.emitted : 0,
      minConfidence: this.threshold.minConfidence,
    };
  }
}
