/**
 * Dense-then-mask float64 reference for dynamic layer skipping (FlexiDepth, SkipLayer, D3 and
 * static skips), for tests only. This is the spec the engine implements.
 *
 * Every layer is computed for every position (attention, MLP and, where present, the FlexiDepth
 * adapter); the policy then decides per (position, layer) which results enter the residual
 * stream. Per layer l and position p, with h the residual entering the layer and
 * x = input_layernorm(h):
 *
 * - K and V of layer l at position p always come from x(p) (k_proj / v_proj (+ bias), RoPE):
 *   skipped positions still write K/V, computed from the hidden state that actually reached
 *   layer l at that position. attention(p) uses q from x(p) over the K/V of positions <= p
 *   (causal, GQA, sliding window); a(p) = o_proj(attention(p)).
 * - none: the plain layer (bit-identical to referenceLogits).
 * - static: skipLayers -> the whole layer is the identity; skipAttention -> h' = h;
 *   skipMlp -> no MLP add. Same for every position.
 * - flexidepth (layers with router tensors only; others are plain): z = router_enc(x);
 *   z = rmsnorm(z) * router_norm.weight (eps = rms_norm_eps); z = tanh(z);
 *   w = sigmoid(router_head(router_dec(z))); run = w > threshold (default 0.5).
 *   h' = h + (run ? a : 0); y = post_attention_layernorm(h');
 *   out = run ? w * mlp(y) : (1 - w) * up_proj(silu(gate_proj(y)) * down_proj(y));
 *   h_next = h' + out.
 * - skiplayer: layer mode (model.layers.l.skip_router): [skip, run] = W x; run = run > skip
 *   (ties skip); a skipped layer is the identity. Module mode: attention decided by
 *   self_attn.skip_router on x, MLP by mlp.skip_router on y = post_attention_layernorm(h').
 * - d3: positions p < promptLength run at full depth; position promptLength + j is processed
 *   with genIndex j + 1 and runs only the layers d3LayerSet(L, genIndex, ...); other layers are
 *   the identity for that position.
 *
 * executed[p][l] = 1 when both attention and MLP ran at (p, l), else 0. weights[p][l] is the
 * FlexiDepth router weight w at routed layers under the flexidepth policy, NaN otherwise.
 */
import * as path from 'node:path';

import {
  applyRope,
  layerWeights,
  linear,
  loadReference,
  optionalTensor,
  readSafetensors,
  rmsNorm,
  silu,
  tensor,
  type ReferenceModel,
  type KvCacheType,
  asCached,
  causalAttention,
} from './reference';

export type RefPolicy =
  | { type: 'none' }
  | { type: 'static'; skipLayers?: number[]; skipAttention?: number[]; skipMlp?: number[] }
  | { type: 'flexidepth'; threshold?: number } // default 0.5
  | { type: 'skiplayer' }
  | { type: 'd3'; alpha: number; start?: number; minLayers?: number; promptLength: number; fullDepthFrom?: number };

export interface RoutedResult {
  /** Logits per position. */
  logits: Float64Array[];
  /** executed[p][l]: 1 when both attention and MLP of layer l ran at position p. */
  executed: number[][];
  /** weights[p][l]: FlexiDepth router weight (flexidepth policy, routed layers), else NaN. */
  weights: number[][];
}

export interface RoutedReferenceModel extends ReferenceModel {
  /** Absolute paths of the add-on files merged in. */
  addonFiles: string[];
  /** Layers that have FlexiDepth router + adapter tensors. */
  flexidepthLayers: number[];
  /** Per layer: SkipLayer router kind present ('layer', 'module' or null). */
  skipRouters: ('layer' | 'module' | null)[];
}

const FD_ROUTER = ['router.router_enc', 'router.router_norm', 'router.router_dec', 'router.router_head'];
const FD_ADAPTER = ['router_proj.gate_proj', 'router_proj.down_proj', 'router_proj.up_proj'];

/** Loads a checkpoint directory plus add-on safetensors files (absolute paths) merged into it. */
export function loadRoutedReference(dir: string, addonFiles: string[] = []): RoutedReferenceModel {
  const base = loadReference(dir);
  const tensors = new Map(base.tensors);
  for (const f of addonFiles) {
    for (const [name, t] of readSafetensors(path.resolve(f))) {
      if (tensors.has(name)) throw new Error(`routed reference: add-on tensor ${name} (${f}) already present`);
      tensors.set(name, t);
    }
  }
  const L = base.config.layers;
  const flexidepthLayers: number[] = [];
  const skipRouters: ('layer' | 'module' | null)[] = [];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const fdNames = [...FD_ROUTER, ...FD_ADAPTER].map((n) => `${p}.${n}.weight`);
    const present = fdNames.filter((n) => tensors.has(n)).length;
    if (present === fdNames.length) flexidepthLayers.push(l);
    else if (present !== 0) throw new Error(`routed reference: layer ${l} has only some FlexiDepth tensors`);
    const layerMode = tensors.has(`${p}.skip_router.weight`);
    const moduleMode = tensors.has(`${p}.self_attn.skip_router.weight`) || tensors.has(`${p}.mlp.skip_router.weight`);
    if (layerMode && moduleMode) throw new Error(`routed reference: layer ${l} has both layer and module skip routers`);
    skipRouters.push(layerMode ? 'layer' : moduleMode ? 'module' : null);
  }
  const listed = base.rawConfig['routing_layers'];
  if (Array.isArray(listed)) {
    for (const l of listed) {
      if (!flexidepthLayers.includes(l as number))
        throw new Error(`routed reference: routing_layers lists ${String(l)} but it has no router tensors`);
    }
  }
  return { ...base, tensors, addonFiles: addonFiles.map((f) => path.resolve(f)), flexidepthLayers, skipRouters };
}

/**
 * D3 depth for the pass that produces generated token `genIndex` (0 = the prefill pass):
 * clamp(floor(L * alpha^max(0, genIndex - start)), max(minLayers, 2), L); genIndex 0 -> L.
 */
export function d3Depth(L: number, genIndex: number, alpha: number, start = 0, minLayers = 2): number {
  if (!Number.isInteger(L) || L < 1) throw new RangeError(`d3Depth: bad L ${L}`);
  if (!Number.isInteger(genIndex) || genIndex < 0) throw new RangeError(`d3Depth: bad genIndex ${genIndex}`);
  if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`d3Depth: alpha must be in (0, 1] (got ${alpha})`);
  if (genIndex === 0) return L;
  const n = Math.floor(L * Math.pow(alpha, Math.max(0, genIndex - start)));
  return Math.min(L, Math.max(Math.max(minLayers, 2), n));
}

/** D3 kept layers for depth d3Depth(...): the first ceil(N/2) and the last floor(N/2) layers, ascending. */
export function d3LayerSet(L: number, genIndex: number, alpha: number, start = 0, minLayers = 2): number[] {
  const n = d3Depth(L, genIndex, alpha, start, minLayers);
  const head = Math.ceil(n / 2);
  const tail = Math.floor(n / 2);
  const out: number[] = [];
  for (let l = 0; l < head; l++) out.push(l);
  for (let l = L - tail; l < L; l++) out.push(l);
  return out;
}

function checkLayers(what: string, list: number[] | undefined, L: number): Set<number> {
  const s = new Set<number>();
  for (const l of list ?? []) {
    if (!Number.isInteger(l) || l < 0 || l >= L)
      throw new RangeError(`referenceRouted: ${what}: layer ${l} out of range`);
    s.add(l);
  }
  return s;
}

const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));

/** Logits, executed mask and router weights of `tokens` (from position 0) under `policy`. */
export function referenceRouted(
  model: RoutedReferenceModel,
  tokens: number[],
  policy: RefPolicy,
  options: { kvCacheType?: KvCacheType } = {},
): RoutedResult {
  const kvType = options.kvCacheType ?? 'f32';
  const c = model.config;
  const L = c.layers;
  const d = c.hidden;
  const hd = c.headDim;
  const qDim = c.heads * hd;
  const kvDim = c.kvHeads * hd;
  const ff = c.intermediate;
  const T = tokens.length;
  const eps = c.rmsNormEps;

  // ---- policy set-up ----
  let skipLayers = new Set<number>();
  let skipAttention = new Set<number>();
  let skipMlp = new Set<number>();
  let threshold = 0.5;
  /** d3: per position, the set of kept layers (null = all). */
  const d3Kept: (Set<number> | null)[] = [];
  switch (policy.type) {
    case 'none':
    case 'skiplayer':
      break;
    case 'static':
      skipLayers = checkLayers('skipLayers', policy.skipLayers, L);
      skipAttention = checkLayers('skipAttention', policy.skipAttention, L);
      skipMlp = checkLayers('skipMlp', policy.skipMlp, L);
      break;
    case 'flexidepth':
      threshold = policy.threshold ?? 0.5;
      if (!Number.isFinite(threshold)) throw new RangeError('referenceRouted: bad threshold');
      break;
    case 'd3': {
      const P = policy.promptLength;
      if (!Number.isInteger(P) || P < 1)
        throw new RangeError(`referenceRouted: d3 promptLength must be >= 1 (got ${P})`);
      for (let p = 0; p < T; p++) {
        // fullDepthFrom: a later turn's prompt, run at full depth after the generated tokens.
        if (p < P || (policy.fullDepthFrom !== undefined && p >= policy.fullDepthFrom)) d3Kept.push(null);
        else d3Kept.push(new Set(d3LayerSet(L, p - P + 1, policy.alpha, policy.start ?? 0, policy.minLayers ?? 2)));
      }
      break;
    }
    default:
      throw new RangeError(`referenceRouted: unknown policy ${(policy as { type: string }).type}`);
  }

  const executed: number[][] = Array.from({ length: T }, () => new Array<number>(L).fill(1));
  const weights: number[][] = Array.from({ length: T }, () => new Array<number>(L).fill(NaN));

  const embed = tensor(model, 'model.embed_tokens.weight', [c.vocabSize, d]);
  let xs: Float64Array[] = tokens.map((tok) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= c.vocabSize)
      throw new Error(`reference: token ${tok} out of range`);
    return embed.slice(tok * d, (tok + 1) * d);
  });

  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const { inNorm, postNorm, wq, wk, wv, wo, bq, bk, bv, bo, wg, wu, wd } = layerWeights(model, l);
    const window = c.slidingWindow[l] ?? null;

    // FlexiDepth tensors (only used under the flexidepth policy).
    const fdHere = policy.type === 'flexidepth' && model.flexidepthLayers.includes(l);
    let fd: {
      r: number;
      m: number;
      enc: Float64Array;
      norm: Float64Array;
      dec: Float64Array;
      head: Float64Array;
      gate: Float64Array;
      down: Float64Array;
      up: Float64Array;
    } | null = null;
    if (fdHere) {
      const enc = model.tensors.get(`${p}.router.router_enc.weight`)!;
      const gate = model.tensors.get(`${p}.router_proj.gate_proj.weight`)!;
      const r = enc.shape[0]!;
      const m = gate.shape[0]!;
      fd = {
        r,
        m,
        enc: tensor(model, `${p}.router.router_enc.weight`, [r, d]),
        norm: tensor(model, `${p}.router.router_norm.weight`, [r]),
        dec: tensor(model, `${p}.router.router_dec.weight`, [d, r]),
        head: tensor(model, `${p}.router.router_head.weight`, [1, d]),
        gate: tensor(model, `${p}.router_proj.gate_proj.weight`, [m, d]),
        down: tensor(model, `${p}.router_proj.down_proj.weight`, [m, d]),
        up: tensor(model, `${p}.router_proj.up_proj.weight`, [d, m]),
      };
    }
    // SkipLayer routers (only used under the skiplayer policy).
    const slMode = policy.type === 'skiplayer' ? model.skipRouters[l]! : null;
    const slLayer = slMode === 'layer' ? tensor(model, `${p}.skip_router.weight`, [2, d]) : null;
    const slAttn = slMode === 'module' ? optionalTensor(model, `${p}.self_attn.skip_router.weight`, [2, d]) : null;
    const slMlp = slMode === 'module' ? optionalTensor(model, `${p}.mlp.skip_router.weight`, [2, d]) : null;
    const slRun = (w: Float64Array, v: Float64Array): boolean => {
      const lg = linear(w, null, v, 2, d);
      return lg[1]! > lg[0]!; // [skip, run]; ties skip
    };

    // Attention for every position: K/V always from this layer's input at that position.
    const ns: Float64Array[] = [];
    const qs: Float64Array[] = [];
    const ks: Float64Array[] = [];
    const vs: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const h = rmsNorm(xs[t]!, inNorm, eps);
      const q = linear(wq, bq, h, qDim, d);
      const k = linear(wk, bk, h, kvDim, d);
      const v = linear(wv, bv, h, kvDim, d);
      applyRope(q, c.heads, hd, t, c.invFreq);
      applyRope(k, c.kvHeads, hd, t, c.invFreq);
      ns.push(h);
      qs.push(q);
      ks.push(asCached(k, kvType));
      vs.push(asCached(v, kvType));
    }
    const next: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const attn = causalAttention(qs, ks, vs, t, c.heads, c.kvHeads, hd, window);
      const o = linear(wo, bo, attn, d, qDim);

      // ---- decisions (attention side) ----
      let attnRun = true;
      let mlpRun = true;
      let w = NaN; // FlexiDepth router weight
      if (policy.type === 'static') {
        if (skipLayers.has(l)) attnRun = mlpRun = false;
        if (skipAttention.has(l)) attnRun = false;
        if (skipMlp.has(l)) mlpRun = false;
      } else if (policy.type === 'd3') {
        const kept = d3Kept[t]!;
        if (kept !== null && !kept.has(l)) attnRun = mlpRun = false;
      } else if (fd !== null) {
        let z = linear(fd.enc, null, ns[t]!, fd.r, d);
        z = rmsNorm(z, fd.norm, eps);
        for (let i = 0; i < fd.r; i++) z[i] = Math.tanh(z[i]!);
        const logit = linear(fd.head, null, linear(fd.dec, null, z, d, fd.r), 1, d)[0]!;
        w = sigmoid(logit);
        attnRun = mlpRun = w > threshold;
        weights[t]![l] = w;
      } else if (slLayer !== null) {
        attnRun = mlpRun = slRun(slLayer, ns[t]!);
      } else if (slAttn !== null) {
        attnRun = slRun(slAttn, ns[t]!);
      }

      const x = new Float64Array(d);
      for (let i = 0; i < d; i++) x[i] = attnRun ? xs[t]![i]! + o[i]! : xs[t]![i]!;
      // MLP (always computed)
      const h2 = rmsNorm(x, postNorm, eps);
      const g = linear(wg, null, h2, ff, d);
      const u = linear(wu, null, h2, ff, d);
      const a = new Float64Array(ff);
      for (let i = 0; i < ff; i++) a[i] = silu(g[i]!) * u[i]!;
      const down = linear(wd, null, a, d, ff);
      if (slMlp !== null) mlpRun = slRun(slMlp, h2);

      if (fd !== null) {
        // FlexiDepth: run -> w * mlp(y); skip -> (1 - w) * adapter(y). The adapter is always computed.
        const ag = linear(fd.gate, null, h2, fd.m, d);
        const ad = linear(fd.down, null, h2, fd.m, d);
        const am = new Float64Array(fd.m);
        for (let i = 0; i < fd.m; i++) am[i] = silu(ag[i]!) * ad[i]!;
        const adapter = linear(fd.up, null, am, d, fd.m);
        for (let i = 0; i < d; i++) x[i] = mlpRun ? x[i]! + w * down[i]! : x[i]! + (1 - w) * adapter[i]!;
      } else if (mlpRun) {
        for (let i = 0; i < d; i++) x[i] = x[i]! + down[i]!;
      }
      executed[t]![l] = attnRun && mlpRun ? 1 : 0;
      next.push(x);
    }
    xs = next;
  }

  const finalNorm = tensor(model, 'model.norm.weight', [d]);
  const head = c.tied ? embed : tensor(model, 'lm_head.weight', [c.vocabSize, d]);
  const logits = xs.map((x) => linear(head, null, rmsNorm(x, finalNorm, eps), c.vocabSize, d));
  return { logits, executed, weights };
}
