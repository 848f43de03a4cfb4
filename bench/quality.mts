// Quality against depth for every policy on one model: perplexity of a held-out text and the mean
// number of layers each scored token ran (the protocol of measurePerplexity: windows, a prompt,
// the rest scored as a generated continuation). Writes bench/results/quality-<model>.json and
// an SVG plot of perplexity against mean layers.
//   npm run bench:quality -- [--model models/default] [--text bench/data/kjv-heldout.txt] [--max-tokens 20000]
// The JSON records every argument as resolved (defaults included), the command that gives them
// all explicitly, and the commit it ran at.
// Policies: none; static skipping of the k layers with the lowest block influence (k = 1..L/2,
// from MODEL/block_influence.json, written by train/block_influence.py); D3 over a sweep of
// alpha; FlexiDepth for every flexidepth-*.safetensors add-on in MODEL, at several thresholds;
// SkipLayer for every skiplayer*.safetensors add-on.
// Weight formats: the model quantized on load to each of --weights (default q8_0,q4_0,q4_k; a
// format this build does not have is recorded as such), scored with no skipping and with the
// default FlexiDepth add-on (--weights-addon) at its default threshold, against the stored
// weights scored the same way (rows `weights` and `weightsClaims` in the JSON). `--sweep false`
// runs only that part and writes quality-<model>-weights.json instead.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { depthgate, gitCommit, machine, saveResult } from './machine.mjs';

type Policy = import('../dist/index.js').Policy;
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(root, 'models', 'default') },
    text: { type: 'string', default: path.join(root, 'bench', 'data', 'kjv-heldout.txt') },
    window: { type: 'string', default: '256' },
    context: { type: 'string', default: '64' },
    'max-tokens': { type: 'string', default: '20000' },
    alphas: { type: 'string', default: '0.999,0.995,0.99,0.98,0.95' },
    thresholds: { type: 'string', default: '0.3,0.5,0.7' },
    svg: { type: 'string', default: path.join(root, 'docs', 'quality.svg') },
    weights: { type: 'string', default: 'q8_0,q4_0,q4_k' },
    'weights-addon': { type: 'string', default: 'flexidepth-p3e-4.safetensors' },
    sweep: { type: 'string', default: 'true' },
  },
});
if (values.sweep !== 'true' && values.sweep !== 'false')
  throw new Error(`--sweep must be true or false, got ${values.sweep}`);
const sweep = values.sweep === 'true';
const modelDir = path.resolve(values.model!);
const text = fs.readFileSync(values.text!, 'utf8');
const opts = {
  window: Number(values.window),
  context: Number(values.context),
  ...(values['max-tokens'] ? { maxTokens: Number(values['max-tokens']) } : {}),
};

interface Row {
  method: string;
  policy: string;
  addon: string | null;
  perplexity: number;
  nll: number;
  meanLayers: number;
  tokens: number;
  layerFractions: number[];
  seconds: number;
}
const rows: Row[] = [];
/** Layers that carry FlexiDepth routers, as the engine reports them once an add-on is loaded. */
let routedLayers = 0;

async function score(addon: string | null, runs: [string, string, Policy][]) {
  const model = await depthgate.loadModel(modelDir, addon ? { addons: [path.join(modelDir, addon)] } : {});
  try {
    routedLayers = Math.max(routedLayers, model.info.flexiDepthLayers.length);
    const ids = model.tokenizer.encode(text, false);
    for (const [method, label, policy] of runs) {
      const t0 = performance.now();
      const r = await depthgate.measurePerplexity(model, ids, { ...opts, policy });
      const row = {
        method,
        policy: label,
        addon,
        perplexity: r.perplexity,
        nll: r.nll,
        meanLayers: r.meanLayers,
        tokens: r.tokens,
        layerFractions: r.layerFractions,
        seconds: (performance.now() - t0) / 1000,
      };
      rows.push(row);
      console.log(
        `${method.padEnd(11)} ${label.padEnd(34)} ${(addon ?? '').padEnd(32)} ppl ${r.perplexity.toFixed(3).padStart(9)}  layers ${r.meanLayers.toFixed(2)}`,
      );
    }
    return model.config.numLayers;
  } finally {
    await model.dispose();
  }
}

interface WeightsRow {
  weights: string;
  policy: string;
  addon: string | null;
  supported: boolean;
  error?: string;
  perplexity?: number;
  nll?: number;
  meanLayers?: number;
  tokens?: number;
  dtype?: string;
  weightBytes?: number;
  quantizeMs?: number;
  seconds?: number;
}
const weightsRows: WeightsRow[] = [];

/** Perplexity with the weights quantized on load to `weights` ('stored': as stored), with and without the add-on. */
async function scoreWeights(weights: string, addon: string | null) {
  const policy: Policy = addon ? { type: 'flexidepth' } : { type: 'none' };
  const label = addon ? 'flexidepth' : 'none';
  let model: Awaited<ReturnType<typeof depthgate.loadModel>>;
  try {
    model = await depthgate.loadModel(modelDir, {
      // a format newer than this build's option type is passed as is: the load says whether it knows it
      ...(weights === 'stored' ? {} : { weights: weights as 'q8_0' }),
      ...(addon ? { addons: [path.join(modelDir, addon)] } : {}),
    });
  } catch (e) {
    const error = `${(e as Error).name}: ${(e as Error).message}`;
    weightsRows.push({ weights, policy: label, addon, supported: false, error });
    console.log(`weights ${weights.padEnd(7)} ${label.padEnd(11)} not supported by this build (${error})`);
    return;
  }
  try {
    const ids = model.tokenizer.encode(text, false);
    const t0 = performance.now();
    const r = await depthgate.measurePerplexity(model, ids, { ...opts, policy });
    weightsRows.push({
      weights,
      policy: label,
      addon,
      supported: true,
      perplexity: r.perplexity,
      nll: r.nll,
      meanLayers: r.meanLayers,
      tokens: r.tokens,
      dtype: model.info.dtype,
      weightBytes: model.info.weightBytes,
      quantizeMs: model.info.quantizeMs,
      seconds: (performance.now() - t0) / 1000,
    });
    console.log(
      `weights ${weights.padEnd(7)} ${label.padEnd(11)} ${(addon ?? '').padEnd(32)} ppl ${r.perplexity.toFixed(3).padStart(9)}  layers ${r.meanLayers.toFixed(2)}`,
    );
  } finally {
    await model.dispose();
  }
}

const bi = JSON.parse(fs.readFileSync(path.join(modelDir, 'block_influence.json'), 'utf8')) as { skip_order: number[] };
const cfg = JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8')) as { num_hidden_layers: number };
const L = cfg.num_hidden_layers;
const files = fs.readdirSync(modelDir).sort();
if (sweep) {
  const base: [string, string, Policy][] = [['none', 'none', { type: 'none' }]];
  for (let k = 1; k <= L / 2; k++) {
    const skip = bi.skip_order.slice(0, k).sort((a, b) => a - b);
    base.push(['static-BI', `static:skip=${skip.join('+')}`, { type: 'static', skipLayers: skip }]);
  }
  for (const a of values.alphas!.split(',').map(Number)) base.push(['D3', `d3:alpha=${a}`, { type: 'd3', alpha: a }]);
  await score(null, base);
  for (const f of files.filter((f) => /^flexidepth.*\.safetensors$/.test(f)))
    await score(
      f,
      values
        .thresholds!.split(',')
        .map(Number)
        .map(
          (t) =>
            ['FlexiDepth', `flexidepth:threshold=${t}`, { type: 'flexidepth', threshold: t }] as [
              string,
              string,
              Policy,
            ],
        ),
    );
  for (const f of files.filter((f) => /^skiplayer.*\.safetensors$/.test(f)))
    await score(f, [['SkipLayer', 'skiplayer', { type: 'skiplayer' }]]);
}
const weightsAddon = files.includes(values['weights-addon']!) ? values['weights-addon']! : null;
const weightFormats = values.weights ? values.weights.split(',').filter((w) => w && w !== 'stored') : [];
if (weightFormats.length)
  for (const w of ['stored', ...weightFormats])
    for (const a of weightsAddon ? [null, weightsAddon] : [null]) await scoreWeights(w, a);
// Each format against the stored weights under the same policy.
const weightsClaims = weightsRows
  .filter((r) => r.weights !== 'stored' && r.supported)
  .map((r) => {
    const ref = weightsRows.find((s) => s.weights === 'stored' && s.policy === r.policy && s.supported)!;
    const change = r.perplexity! / ref.perplexity! - 1;
    return {
      weights: r.weights,
      policy: r.policy,
      addon: r.addon,
      perplexity: r.perplexity,
      storedPerplexity: ref.perplexity,
      change,
      // the issue's target for Q8_0: within +0.5% of the stored (bf16) weights
      ...(r.weights === 'q8_0' ? { withinHalfPercent: change <= 0.005 } : {}),
    };
  });

// The paper's claims, checked on these numbers.
const full = rows.find((r) => r.method === 'none');
const statics = rows
  .filter((r) => r.method === 'static-BI' || r.method === 'none')
  .sort((a, b) => a.meanLayers - b.meanLayers);
function staticAt(depth: number): number | null {
  for (let i = 0; i + 1 < statics.length; i++) {
    const a = statics[i],
      b = statics[i + 1];
    if (depth >= a.meanLayers && depth <= b.meanLayers) {
      const t = (depth - a.meanLayers) / (b.meanLayers - a.meanLayers || 1);
      return Math.exp(Math.log(a.perplexity) * (1 - t) + Math.log(b.perplexity) * t);
    }
  }
  return null;
}
const claims = rows
  .filter((r) => r.method === 'FlexiDepth')
  .map((r) => {
    const s = staticAt(r.meanLayers);
    return {
      addon: r.addon,
      policy: r.policy,
      meanLayers: r.meanLayers,
      perplexity: r.perplexity,
      staticBIPerplexityAtSameDepth: s,
      beatsStatic: s === null ? null : r.perplexity < s,
      routedLayersSkippedFraction: routedLayers ? (L - r.meanLayers) / routedLayers : null,
      within5PercentOfFull: r.perplexity <= 1.05 * full!.perplexity,
    };
  });
const rel = (p: string) => path.relative(root, path.resolve(p)) || '.';
const args = {
  model: rel(modelDir),
  text: rel(values.text!),
  window: values.window!,
  context: values.context!,
  'max-tokens': values['max-tokens']!,
  alphas: values.alphas!,
  thresholds: values.thresholds!,
  weights: values.weights!,
  'weights-addon': values['weights-addon']!,
  sweep: values.sweep!,
};
const out = saveResult(`quality-${path.basename(modelDir)}${sweep ? '' : '-weights'}.json`, {
  command: `npm run bench:quality -- ${Object.entries(args)
    .map(([k, v]) => `--${k} ${v}`)
    .join(' ')}`,
  arguments: args,
  commit: gitCommit(),
  date: new Date().toISOString(),
  machine: machine(),
  loadAverage: os.loadavg().map((x) => +x.toFixed(2)),
  model: rel(modelDir),
  text: rel(values.text!),
  ...opts,
  layers: L,
  routedLayers,
  rows,
  claims,
  weights: weightsRows,
  weightsClaims,
});
console.log(`wrote ${out}`);
if (sweep) {
  fs.mkdirSync(path.dirname(values.svg!), { recursive: true });
  fs.writeFileSync(values.svg!, plot(rows, L));
  console.log(`wrote ${values.svg}`);
}

/** The plot's series: the method, and for FlexiDepth the add-on's penalty. */
function seriesKey(r: Row): string {
  return r.method === 'FlexiDepth' && r.addon
    ? `${r.method} ${r.addon.replace(/^flexidepth-|\.safetensors$/g, '')}`
    : r.method;
}

/** Perplexity (log scale) against mean layers, one colour and marker per method. */
function plot(rs: Row[], layers: number): string {
  const W = 720,
    H = 440,
    m = { l: 70, r: 180, t: 40, b: 56 };
  const pw = W - m.l - m.r,
    ph = H - m.t - m.b;
  const ys = rs.map((r) => Math.log10(r.perplexity));
  const y0 = Math.floor(Math.min(...ys) * 10) / 10,
    y1 = Math.ceil(Math.max(...ys) * 10) / 10 || y0 + 1;
  const xMin = Math.max(0, Math.floor(Math.min(...rs.map((r) => r.meanLayers))) - 1);
  const x = (v: number) => m.l + ((v - xMin) / (layers - xMin)) * pw;
  const y = (p: number) => m.t + ph - ((Math.log10(p) - y0) / (y1 - y0 || 1)) * ph;
  const colours: Record<string, string> = {
    none: '#000000',
    'static-BI': '#e69f00',
    D3: '#56b4e9',
    FlexiDepth: '#009e73',
    SkipLayer: '#cc79a7',
  };
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
  );
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(
    `<text x="${m.l}" y="22" font-size="14">Perplexity of held-out text against mean layers run per token (${layers}-layer model)</text>`,
  );
  parts.push(
    `<line x1="${m.l}" y1="${m.t + ph}" x2="${m.l + pw}" y2="${m.t + ph}" stroke="#333"/><line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${m.t + ph}" stroke="#333"/>`,
  );
  for (let v = xMin; v <= layers; v++)
    parts.push(
      `<line x1="${x(v)}" y1="${m.t + ph}" x2="${x(v)}" y2="${m.t + ph + 5}" stroke="#333"/><text x="${x(v)}" y="${m.t + ph + 18}" text-anchor="middle">${v}</text>`,
    );
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 14}" text-anchor="middle">mean layers run per scored token</text>`);
  for (let e = Math.ceil(y0 * 10) / 10; e <= y1 + 1e-9; e += (y1 - y0) / 6) {
    const p = 10 ** e;
    parts.push(
      `<line x1="${m.l - 5}" y1="${y(p)}" x2="${m.l + pw}" y2="${y(p)}" stroke="#ddd"/><text x="${m.l - 8}" y="${y(p) + 4}" text-anchor="end">${p >= 100 ? p.toFixed(0) : p.toFixed(1)}</text>`,
    );
  }
  parts.push(
    `<text transform="translate(18 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">perplexity (log scale)</text>`,
  );
  const methods = [...new Set(rs.map(seriesKey))];
  methods.forEach((key, i) => {
    const pts = rs.filter((r) => seriesKey(r) === key).sort((a, b) => a.meanLayers - b.meanLayers);
    const c = colours[pts[0]!.method] ?? '#666';
    const dash = i % 2 ? ' stroke-dasharray="4 3"' : '';
    if (pts.length > 1)
      parts.push(
        `<polyline fill="none" stroke="${c}" stroke-width="1.5"${dash} points="${pts.map((r) => `${x(r.meanLayers).toFixed(1)},${y(r.perplexity).toFixed(1)}`).join(' ')}"/>`,
      );
    for (const r of pts)
      parts.push(
        `<circle cx="${x(r.meanLayers).toFixed(1)}" cy="${y(r.perplexity).toFixed(1)}" r="4" fill="${c}"><title>${r.policy}${r.addon ? ` + ${r.addon}` : ''}: ppl ${r.perplexity.toFixed(2)}, ${r.meanLayers.toFixed(2)} layers</title></circle>`,
      );
    const ly = m.t + 10 + i * 20;
    parts.push(
      `<line x1="${m.l + pw + 14}" y1="${ly}" x2="${m.l + pw + 34}" y2="${ly}" stroke="${c}" stroke-width="2"${dash}/><circle cx="${m.l + pw + 24}" cy="${ly}" r="4" fill="${c}"/><text x="${m.l + pw + 40}" y="${ly + 4}">${key === 'static-BI' ? 'static (block influence)' : key}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
