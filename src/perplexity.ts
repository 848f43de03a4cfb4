/**
 * Perplexity of a text under a layer-skipping policy, with the mean number of layers each scored
 * token ran: the two axes of a quality-versus-depth comparison.
 *
 * The token ids are cut into non-overlapping windows of `window` tokens, each evaluated in a
 * fresh sequence. In each window the first `context` tokens are a prompt (not scored) and the
 * rest are scored as a continuation generated token by token (teacher forcing): the row that
 * predicts continuation token j is the pass that would produce generated token j, so D3's
 * depth decays along the continuation exactly as it does in `generate()`. Every policy is scored
 * on the same tokens. A token's depth is the number of layers that ran in the pass predicting it.
 */
import { AbortError, InvalidOptionError } from './errors';
import type { Model } from './model';
import type { Policy } from './policy';

/** Options of {@link measurePerplexity}. */
export interface PerplexityOptions {
  /** Which layers each token runs (default: the model's `defaultPolicy`; `{type: 'none'}` runs all). */
  policy?: Policy | undefined;
  /** Tokens per window (default: min(256, contextSize)). */
  window?: number | undefined;
  /** Unscored prompt tokens at the start of each window (default: window / 4, at least 1). */
  context?: number | undefined;
  /** Stop after scoring about this many tokens (whole windows; default: all). */
  maxTokens?: number | undefined;
  /** Cancels between windows. */
  signal?: AbortSignal | undefined;
}

/** Result of {@link measurePerplexity}. */
export interface PerplexityResult {
  /** exp(mean negative log-likelihood) over the scored tokens. */
  perplexity: number;
  /** Mean negative log-likelihood in nats per scored token. */
  nll: number;
  /** Tokens scored. */
  tokens: number;
  /** Windows evaluated. */
  windows: number;
  /** Mean number of layers run by the passes that predicted the scored tokens. */
  meanLayers: number;
  /** Fraction of scored tokens that ran each layer. */
  layerFractions: number[];
}

function intOption(v: unknown, name: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new InvalidOptionError(name, `must be an integer in [${min}, ${max}], got ${String(v)}`);
  return v;
}

/** Scores `ids` with `model` under `options.policy`; see the module comment for the protocol. */
export async function measurePerplexity(
  model: Model,
  ids: ArrayLike<number>,
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const maxWindow = model.info.contextSize;
  const window =
    options.window === undefined ? Math.min(256, maxWindow) : intOption(options.window, 'window', 2, maxWindow);
  const context =
    options.context === undefined
      ? Math.max(1, Math.floor(window / 4))
      : intOption(options.context, 'context', 1, window - 1);
  const maxTokens =
    options.maxTokens === undefined ? Infinity : intOption(options.maxTokens, 'maxTokens', 1, Number.MAX_SAFE_INTEGER);
  if (ids.length < window)
    throw new InvalidOptionError('text', `has ${ids.length} tokens, fewer than one window of ${window}`);
  const L = model.config.numLayers;
  const perLayer = new Float64Array(L);
  let nllSum = 0;
  let scored = 0;
  let layerSum = 0;
  let windows = 0;
  for (let start = 0; start + window <= ids.length && scored < maxTokens; start += window) {
    if (options.signal?.aborted) throw new AbortError('perplexity measurement was aborted', options.signal.reason);
    const w = Array.from({ length: window }, (_, i) => ids[start + i]!);
    const seq = model.createSequence();
    try {
      const r = await seq.evaluate(w, {
        ...(options.policy ? { policy: options.policy } : {}),
        generatedFrom: context,
        signal: options.signal,
      });
      // Row k predicts token k + 1; the scored tokens are context..window-1.
      for (let k = context - 1; k < window - 1; k++) {
        const row = r.logits[k]!;
        let max = -Infinity;
        for (let v = 0; v < row.length; v++) if (row[v]! > max) max = row[v]!;
        let sum = 0;
        for (let v = 0; v < row.length; v++) sum += Math.exp(row[v]! - max);
        nllSum += Math.log(sum) + max - row[w[k + 1]!]!;
        const ex = r.executed[k]!;
        for (let l = 0; l < L; l++) {
          perLayer[l]! += ex[l]!;
          layerSum += ex[l]!;
        }
        scored++;
      }
      windows++;
    } finally {
      seq.dispose();
    }
  }
  const nll = nllSum / scored;
  return {
    perplexity: Math.exp(nll),
    nll,
    tokens: scored,
    windows,
    meanLayers: layerSum / scored,
    layerFractions: Array.from(perLayer, (c) => c / scored),
  };
}
