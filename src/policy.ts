/**
 * Skip policies: which layers each token runs. Typed specs, their validation, and the
 * `--policy` syntax of the CLI. The native side (native/policies/) does the routing.
 */
import { InvalidOptionError } from './errors';

/** Run every layer for every token. */
export interface NonePolicy {
  type: 'none';
}

/**
 * Skip the same layers for every token, prompt included: `skipLayers` drops whole layers,
 * `skipAttention` / `skipMlp` drop one module. Skipped layers still write K/V.
 */
export interface StaticPolicy {
  type: 'static';
  /** Layers skipped entirely (attention and MLP). */
  skipLayers?: number[] | undefined;
  /** Layers whose attention is skipped (K/V still written). */
  skipAttention?: number[] | undefined;
  /** Layers whose MLP is skipped. */
  skipMlp?: number[] | undefined;
}

/**
 * FlexiDepth: a learned router per layer decides per token (prompt tokens too); skipped tokens take
 * the router's adapter. Needs FlexiDepth weights in the checkpoint or an add-on file
 * (`loadModel(dir, {addons: [...]})`).
 */
export interface FlexiDepthPolicy {
  type: 'flexidepth';
  /** A token runs the layer when its router weight w > threshold (default 0.5, as the released model). */
  threshold?: number | undefined;
}

/** SkipLayer: a learned Linear(hidden -> 2) router per layer or per module, argmax, identity when skipped. */
export interface SkipLayerPolicy {
  type: 'skiplayer';
}

/**
 * D3: the pass producing the i-th generated token keeps N = floor(L * alpha^max(0, i - start))
 * layers (at least max(minLayers, 2)): the first ceil(N/2) and the last floor(N/2). The prompt and
 * the first generated token run at full depth.
 */
export interface D3Policy {
  type: 'd3';
  /** Decay per generated token, in (0, 1]; 1 keeps every layer. */
  alpha: number;
  /** Generated tokens before the decay starts (default 0). */
  start?: number | undefined;
  /** Minimum depth (default 2: the first and last layers). */
  minLayers?: number | undefined;
}

/** A skip policy: the layers a token runs. */
export type SkipPolicy = NonePolicy | StaticPolicy | FlexiDepthPolicy | SkipLayerPolicy | D3Policy;

/**
 * Exact mode (self-speculative decoding): `draft`, any skip policy, proposes up to `maxDraft`
 * tokens one by one; one full-depth pass over them checks them all, and the output is the full
 * model's own (greedy: the same tokens as `none`; sampling: the same distribution). The prompt
 * runs at full depth. Stops drafting early when the draft's top-1 probability is below
 * `minConfidence`; with `targetAcceptance`, that threshold adapts per sequence toward the target
 * acceptance rate (as Self-SD does). evaluate() under this policy runs at full depth.
 */
export interface SpeculativePolicy {
  type: 'speculative';
  /** The policy that drafts (not speculative itself). */
  draft: SkipPolicy;
  /** Most tokens drafted per verification, 1..64 (default 4). */
  maxDraft?: number;
  /** Stop drafting after a token whose draft probability is below this, in [0, 1] (default 0: draft maxDraft tokens). */
  minConfidence?: number;
  /** Adapt minConfidence per sequence toward this acceptance rate, in (0, 1] (default: no adaptation). */
  targetAcceptance?: number;
}

/** A policy: a skip policy, or exact mode with a skip policy as its draft. */
export type Policy = SkipPolicy | SpeculativePolicy;

/** Default draft length of the speculative policy. */
export const DEFAULT_MAX_DRAFT = 4;
/** Longest draft the speculative policy accepts. */
export const MAX_DRAFT_LIMIT = 64;

const KEYS: Record<Policy['type'], string[]> = {
  none: ['type'],
  static: ['type', 'skipLayers', 'skipAttention', 'skipMlp'],
  flexidepth: ['type', 'threshold'],
  skiplayer: ['type'],
  d3: ['type', 'alpha', 'start', 'minLayers'],
  speculative: ['type', 'draft', 'maxDraft', 'minConfidence', 'targetAcceptance'],
};

/** The policy a pass runs at full depth under exact mode; other policies unchanged. */
export function fullDepthOf(p: Policy): SkipPolicy {
  return p.type === 'speculative' ? { type: 'none' } : p;
}

function layerList(v: unknown, name: string, layers: number): number[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((x) => !Number.isInteger(x) || x < 0 || x >= layers))
    throw new InvalidOptionError(name, `must be an array of layer numbers 0..${layers - 1}`);
  return [...new Set(v as number[])].sort((a, b) => a - b);
}

/** Validates a policy against a model of `layers` layers; returns a normalised copy. */
export function validatePolicy(p: unknown, layers: number): Policy {
  if (p === undefined) return { type: 'none' };
  if (typeof p !== 'object' || p === null || Array.isArray(p))
    throw new InvalidOptionError('policy', 'must be an object with a type');
  const o = p as Record<string, unknown>;
  const type = o.type as Policy['type'];
  if (typeof type !== 'string' || !Object.hasOwn(KEYS, type))
    throw new InvalidOptionError(
      'policy.type',
      `must be one of ${Object.keys(KEYS).join(', ')}, got ${JSON.stringify(o.type)}`,
    );
  for (const k of Object.keys(o))
    if (!KEYS[type].includes(k))
      throw new InvalidOptionError(
        `policy.${k}`,
        `is not an option of the ${type} policy (known: ${KEYS[type].join(', ')})`,
      );
  switch (type) {
    case 'none':
    case 'skiplayer':
      return { type };
    case 'speculative':
      return validateSpeculative(o, layers);
    case 'static': {
      const out: StaticPolicy = { type };
      const sl = layerList(o.skipLayers, 'policy.skipLayers', layers);
      const sa = layerList(o.skipAttention, 'policy.skipAttention', layers);
      const sm = layerList(o.skipMlp, 'policy.skipMlp', layers);
      if (sl) out.skipLayers = sl;
      if (sa) out.skipAttention = sa;
      if (sm) out.skipMlp = sm;
      return out;
    }
    case 'flexidepth': {
      const t = o.threshold;
      if (t !== undefined && (typeof t !== 'number' || !(t >= 0 && t <= 1)))
        throw new InvalidOptionError('policy.threshold', `must be a number in [0, 1], got ${JSON.stringify(t)}`);
      return t === undefined ? { type } : { type, threshold: t };
    }
    case 'd3': {
      const { alpha, start, minLayers } = o;
      if (typeof alpha !== 'number' || !(alpha > 0 && alpha <= 1))
        throw new InvalidOptionError('policy.alpha', `must be a number in (0, 1], got ${JSON.stringify(alpha)}`);
      // int32 natively
      if (start !== undefined && (!Number.isInteger(start) || (start as number) < 0 || (start as number) > 2 ** 31 - 1))
        throw new InvalidOptionError(
          'policy.start',
          `must be an integer in 0..${2 ** 31 - 1}, got ${JSON.stringify(start)}`,
        );
      if (
        minLayers !== undefined &&
        (!Number.isInteger(minLayers) || (minLayers as number) < 0 || (minLayers as number) > layers)
      )
        throw new InvalidOptionError(
          'policy.minLayers',
          `must be an integer in 0..${layers}, got ${JSON.stringify(minLayers)}`,
        );
      const out: D3Policy = { type, alpha };
      if (start !== undefined) out.start = start as number;
      if (minLayers !== undefined) out.minLayers = minLayers as number;
      return out;
    }
  }
}

function validateSpeculative(o: Record<string, unknown>, layers: number): SpeculativePolicy {
  if (o.draft === undefined)
    throw new InvalidOptionError(
      'policy.draft',
      'is required: the skip policy that drafts (e.g. {type: "flexidepth"})',
    );
  if (typeof o.draft === 'object' && o.draft !== null && (o.draft as { type?: unknown }).type === 'speculative')
    throw new InvalidOptionError('policy.draft', 'must be a skip policy, not speculative');
  let draft: SkipPolicy;
  try {
    draft = validatePolicy(o.draft, layers) as SkipPolicy;
  } catch (e) {
    // Name the draft's field: policy.draft.threshold, not policy.threshold.
    if (e instanceof InvalidOptionError)
      throw new InvalidOptionError(
        e.option.replace(/^policy/, 'policy.draft'),
        e.message.replace(/^option '[^']*': /, ''),
      );
    throw e;
  }
  const out: SpeculativePolicy = { type: 'speculative', draft };
  const { maxDraft, minConfidence, targetAcceptance } = o;
  if (maxDraft !== undefined) {
    if (!Number.isInteger(maxDraft) || (maxDraft as number) < 1 || (maxDraft as number) > MAX_DRAFT_LIMIT)
      throw new InvalidOptionError(
        'policy.maxDraft',
        `must be an integer in 1..${MAX_DRAFT_LIMIT}, got ${JSON.stringify(maxDraft)}`,
      );
    out.maxDraft = maxDraft as number;
  }
  if (minConfidence !== undefined) {
    if (typeof minConfidence !== 'number' || !(minConfidence >= 0 && minConfidence <= 1))
      throw new InvalidOptionError(
        'policy.minConfidence',
        `must be a number in [0, 1], got ${JSON.stringify(minConfidence)}`,
      );
    out.minConfidence = minConfidence;
  }
  if (targetAcceptance !== undefined) {
    if (typeof targetAcceptance !== 'number' || !(targetAcceptance > 0 && targetAcceptance <= 1))
      throw new InvalidOptionError(
        'policy.targetAcceptance',
        `must be a number in (0, 1], got ${JSON.stringify(targetAcceptance)}`,
      );
    out.targetAcceptance = targetAcceptance;
  }
  return out;
}

/** D3's depth for the pass producing generated token `genIndex` (0 = the prompt pass: full depth). */
export function d3Depth(layers: number, genIndex: number, alpha: number, start = 0, minLayers = 2): number {
  if (genIndex < 1) return layers;
  const n = Math.floor(layers * alpha ** Math.max(0, genIndex - start) + 1e-9);
  return Math.min(layers, Math.max(Math.max(minLayers, 2), n));
}

/** The layers D3 keeps at a depth: the first ceil(N/2) and the last floor(N/2). */
export function d3LayerSet(layers: number, depth: number): number[] {
  const head = Math.ceil(depth / 2);
  const tail = Math.floor(depth / 2);
  const out: number[] = [];
  for (let l = 0; l < layers; l++) if (l < head || l >= layers - tail) out.push(l);
  return out;
}

/**
 * Parses the CLI syntax: `none`, `static:skip=3+5`, `static:attn=2,mlp=4+6`, `flexidepth`,
 * `flexidepth:threshold=0.6`, `skiplayer`, `d3:alpha=0.9,start=4,min=8`, and exact mode:
 * `speculative:draft=flexidepth,threshold=0.6,maxDraft=6,minConfidence=0.5,target=0.8` (the
 * parameters other than draft, maxDraft, minConfidence and target belong to the draft).
 */
export function parsePolicy(text: string, layers: number): Policy {
  const colon = text.indexOf(':');
  const type = colon < 0 ? text : text.slice(0, colon);
  const rest = colon < 0 ? undefined : text.slice(colon + 1);
  if (type === 'speculative') return parseSpeculative(rest ?? '', layers);
  const params: Record<string, string> = {};
  if (rest)
    for (const kv of rest.split(',')) {
      const [k, v] = kv.split('=', 2);
      if (!k || v === undefined) throw new InvalidOptionError('policy', `'${kv}' is not key=value`);
      params[k.trim()] = v.trim();
    }
  // Values are plain decimals ('0x10', ' ', Infinity are refused), never empty: `threshold=` is
  // an error, not 0.
  const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;
  const num = (k: string, v: string) => {
    if (!DECIMAL.test(v))
      throw new InvalidOptionError(`policy.${k}`, v === '' ? 'needs a value' : `'${v}' is not a number`);
    return Number(v);
  };
  const list = (k: string, v: string) => {
    if (v === '') throw new InvalidOptionError(`policy.${k}`, 'needs a value (layer numbers joined with +)');
    return v.split('+').map((x) => {
      if (!/^\d+$/.test(x)) throw new InvalidOptionError(`policy.${k}`, `'${v}' is not layer numbers joined with +`);
      return Number(x);
    });
  };
  const spec: Record<string, unknown> = { type };
  const rename: Record<string, string> = {
    skip: 'skipLayers',
    attn: 'skipAttention',
    mlp: 'skipMlp',
    threshold: 'threshold',
    alpha: 'alpha',
    start: 'start',
    min: 'minLayers',
  };
  for (const [k, v] of Object.entries(params)) {
    const key = Object.hasOwn(rename, k) ? rename[k] : undefined;
    if (!key)
      throw new InvalidOptionError(
        `policy.${k}`,
        'is not a known policy parameter (skip, attn, mlp, threshold, alpha, start, min)',
      );
    spec[key] = ['skipLayers', 'skipAttention', 'skipMlp'].includes(key) ? list(k, v) : num(k, v);
  }
  return validatePolicy(spec, layers);
}

const SPECULATIVE_KEYS: Record<string, keyof SpeculativePolicy> = {
  draft: 'draft',
  maxDraft: 'maxDraft',
  minConfidence: 'minConfidence',
  target: 'targetAcceptance',
};

function parseSpeculative(rest: string, layers: number): Policy {
  let draftType: string | undefined;
  const draftParams: string[] = [];
  const spec: Record<string, unknown> = { type: 'speculative' };
  for (const kv of rest === '' ? [] : rest.split(',')) {
    const [k, v] = kv.split('=', 2).map((x) => x.trim());
    if (!k || v === undefined) throw new InvalidOptionError('policy', `'${kv}' is not key=value`);
    const key = Object.hasOwn(SPECULATIVE_KEYS, k) ? SPECULATIVE_KEYS[k] : undefined;
    if (key === 'draft') draftType = v;
    else if (key) {
      if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(v))
        throw new InvalidOptionError(`policy.${key}`, v === '' ? 'needs a value' : `'${v}' is not a number`);
      spec[key] = Number(v);
    } else draftParams.push(kv);
  }
  if (!draftType)
    throw new InvalidOptionError(
      'policy.draft',
      'is required: speculative:draft=<policy>, e.g. speculative:draft=flexidepth',
    );
  if (draftType === 'speculative')
    throw new InvalidOptionError('policy.draft', 'must be a skip policy, not speculative');
  try {
    spec.draft = parsePolicy(draftParams.length ? `${draftType}:${draftParams.join(',')}` : draftType, layers);
  } catch (e) {
    if (e instanceof InvalidOptionError)
      throw new InvalidOptionError(
        e.option.replace(/^policy/, 'policy.draft'),
        e.message.replace(/^option '[^']*': /, ''),
      );
    throw e;
  }
  return validatePolicy(spec, layers);
}

/**
 * Writes a policy in the CLI's `--policy` syntax (the inverse of {@link parsePolicy}:
 * `parsePolicy(formatPolicy(p), layers)` gives back the validated `p`). Used for labels.
 */
export function formatPolicy(p: Policy): string {
  const join = (name: string, pairs: [string, unknown][]) => {
    const set = pairs.filter(([, v]) => v !== undefined && !(Array.isArray(v) && v.length === 0));
    return set.length
      ? `${name}:${set.map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`).join(',')}`
      : name;
  };
  switch (p.type) {
    case 'none':
    case 'skiplayer':
      return p.type;
    case 'flexidepth':
      return join('flexidepth', [['threshold', p.threshold]]);
    case 'static':
      return join('static', [
        ['skip', p.skipLayers],
        ['attn', p.skipAttention],
        ['mlp', p.skipMlp],
      ]);
    case 'd3':
      return join('d3', [
        ['alpha', p.alpha],
        ['start', p.start],
        ['min', p.minLayers],
      ]);
    case 'speculative': {
      const draft = formatPolicy(p.draft);
      const colon = draft.indexOf(':');
      const own = [
        ['maxDraft', p.maxDraft],
        ['minConfidence', p.minConfidence],
        ['target', p.targetAcceptance],
      ]
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k}=${String(v)}`);
      const params = [
        `draft=${colon < 0 ? draft : draft.slice(0, colon)}`,
        ...(colon < 0 ? [] : [draft.slice(colon + 1)]),
        ...own,
      ];
      return `speculative:${params.join(',')}`;
    }
  }
}
