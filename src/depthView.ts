/**
 * Renders "which depth each token used", like the figures of the FlexiDepth paper: each piece of
 * generated text on a background whose colour says how many of the model's layers the token that
 * produced it ran. Two targets: a terminal (24-bit ANSI colour) and a standalone HTML page.
 *
 * The colour scale is viridis (perceptually uniform, colour-blind safe), reversed so that few
 * layers are light (yellow) and all layers are dark (purple); its luminance falls monotonically
 * with depth, so the figure also reads in greyscale. The scale always spans 0..numLayers, so a
 * given model shows a given depth in the same colour in every rendering.
 */
import { InvalidOptionError } from './errors';

/** One piece of text with the number of layers the token that produced it ran. */
export interface DepthSpan {
  /** The text (one token's worth, or several tokens' that share a depth). */
  text: string;
  /** Number of layers the token ran: an integer in 0..numLayers. */
  layers: number;
  /** Per layer, 1 where the layer ran and 0 where it was skipped (length numLayers, `layers` ones). */
  executed?: ArrayLike<number> | undefined;
}

/** Everything {@link renderDepthHtml} (and {@link renderDepthViewAnsi}) draws. */
export interface DepthViewInput {
  /** The prompt, shown before the generated spans in plain (uncoloured) text. */
  prompt: string;
  /** The generated text, piece by piece, each with its depth. */
  spans: DepthSpan[];
  /** Number of layers of the model (a positive integer). */
  numLayers: number;
  /** Page title (default "Per-token depth"). */
  title?: string | undefined;
  /** The layer-skipping policy, as text, for the header line. */
  policy?: string | undefined;
  /** The model's name or path, for the header line. */
  model?: string | undefined;
  /** Mean number of layers per generated token, for the header line. */
  meanLayers?: number | undefined;
}

// Viridis (matplotlib), 9 evenly spaced samples from 0 (dark purple) to 1 (yellow).
const VIRIDIS: readonly (readonly [number, number, number])[] = [
  [68, 1, 84],
  [71, 45, 123],
  [59, 82, 139],
  [44, 114, 142],
  [33, 145, 140],
  [39, 173, 129],
  [93, 200, 99],
  [170, 220, 50],
  [253, 231, 37],
];

const ESC = '\x1b[';
const RESET = `${ESC}0m`;

function checkNumLayers(numLayers: unknown): asserts numLayers is number {
  if (typeof numLayers !== 'number' || !Number.isInteger(numLayers) || numLayers < 1)
    throw new InvalidOptionError('numLayers', `must be a positive integer, got ${describeValue(numLayers)}`);
}

function checkLayers(layers: unknown, numLayers: number, name: string): asserts layers is number {
  if (typeof layers !== 'number' || !Number.isInteger(layers) || layers < 0 || layers > numLayers)
    throw new InvalidOptionError(name, `must be an integer in 0..${numLayers}, got ${describeValue(layers)}`);
}

function checkSpan(span: unknown, numLayers: number, prefix: string): asserts span is DepthSpan {
  if (typeof span !== 'object' || span === null)
    throw new InvalidOptionError(prefix || 'span', 'must be an object {text, layers}');
  const s = span as DepthSpan;
  const name = (k: string): string => (prefix ? `${prefix}.${k}` : k);
  if (typeof s.text !== 'string')
    throw new InvalidOptionError(name('text'), `must be a string, got ${describeValue(s.text)}`);
  checkLayers(s.layers, numLayers, name('layers'));
  if (s.executed === undefined) return;
  const e = s.executed as unknown;
  if (typeof e !== 'object' || e === null || typeof (e as ArrayLike<number>).length !== 'number')
    throw new InvalidOptionError(name('executed'), `must be an array of 0/1 per layer, got ${describeValue(e)}`);
  const ex = e as ArrayLike<number>;
  if (ex.length !== numLayers)
    throw new InvalidOptionError(name('executed'), `must have one entry per layer (${numLayers}), got ${ex.length}`);
  let ran = 0;
  for (let l = 0; l < numLayers; l++) {
    const v = ex[l];
    if (v !== 0 && v !== 1)
      throw new InvalidOptionError(name('executed'), `entry ${l} must be 0 or 1, got ${describeValue(v)}`);
    ran += v;
  }
  if (ran !== s.layers)
    throw new InvalidOptionError(name('executed'), `marks ${ran} layers as run but layers is ${s.layers}`);
}

function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : String(v);
}

/** The reversed-viridis colour at position t in [0, 1] (0: few layers, light; 1: all layers, dark). */
function colorAt(t: number): [number, number, number] {
  const x = (1 - Math.min(1, Math.max(0, t))) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  // i is in [0, length - 2] by construction.
  const a = VIRIDIS[i]!;
  const b = VIRIDIS[i + 1]!;
  return [
    Math.round(a[0] + (b[0] - a[0]) * f),
    Math.round(a[1] + (b[1] - a[1]) * f),
    Math.round(a[2] + (b[2] - a[2]) * f),
  ];
}

/** WCAG relative luminance of an sRGB colour. */
function luminance([r, g, b]: readonly [number, number, number]): number {
  const lin = (c: number): number => {
    const s = c / 255;
    return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

/** Black or white, whichever contrasts more with the background. */
function foregroundFor(bg: readonly [number, number, number]): [number, number, number] {
  // Contrast with black (L+0.05)/0.05 equals contrast with white 1.05/(L+0.05) at L ≈ 0.179.
  return luminance(bg) > 0.179 ? [0, 0, 0] : [255, 255, 255];
}

function hex(c: readonly [number, number, number]): string {
  return '#' + c.map((v) => v.toString(16).padStart(2, '0')).join('');
}

/**
 * Control characters other than tab and newline (ESC above all, which model output could use to
 * inject terminal sequences) are shown as their Unicode "control picture" (U+2400 + code), DEL as
 * U+2421 and C1 controls as U+FFFD. A carriage return directly before a newline is kept.
 */
function sanitize(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/g, (c) => {
    const code = c.charCodeAt(0);
    if (code < 0x20) return String.fromCharCode(0x2400 + code);
    if (code === 0x7f) return '\u2421';
    return '\ufffd';
  });
}

/** The depth ticks of the legends: 0, L/4, L/2, 3L/4 and L, rounded, without repeats. */
function legendTicks(numLayers: number): number[] {
  return [...new Set([0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(f * numLayers)))];
}

/** How a terminal rendering draws its colours (see {@link renderDepthAnsi}). */
export interface DepthAnsiOptions {
  /**
   * The shallowest depth the scale spans (default 0): depths from it to numLayers get the whole
   * colour range, so when a policy can only skip a few layers (FlexiDepth on the second half)
   * neighbouring depths still differ visibly. Shallower depths take the lightest colour.
   */
  minLayers?: number | undefined;
  /** '24bit' (default: `ESC[48;2;r;g;bm`) or '256' (the nearest colour of xterm's 6x6x6 cube). */
  colors?: '24bit' | '256' | undefined;
}

function checkAnsiOptions(
  o: DepthAnsiOptions | undefined,
  numLayers: number,
): { min: number; colors: '24bit' | '256' } {
  if (o === undefined) return { min: 0, colors: '24bit' };
  if (typeof o !== 'object' || o === null)
    throw new InvalidOptionError('options', 'must be an object {minLayers?, colors?}');
  const min = o.minLayers ?? 0;
  if (!Number.isInteger(min) || min < 0 || min > numLayers)
    throw new InvalidOptionError(
      'minLayers',
      `must be an integer in 0..${numLayers}, got ${describeValue(o.minLayers)}`,
    );
  const colors = o.colors ?? '24bit';
  if (colors !== '24bit' && colors !== '256')
    throw new InvalidOptionError('colors', `must be '24bit' or '256', got ${describeValue(o.colors)}`);
  return { min, colors };
}

/** Position of a depth on a scale spanning min..numLayers (a scale of one depth is its darkest). */
function scaled(layers: number, numLayers: number, min: number): number {
  return min >= numLayers ? (layers >= numLayers ? 1 : 0) : (layers - min) / (numLayers - min);
}

/**
 * The colour for a depth, as [r, g, b] in 0..255: a reversed viridis scale (colour-blind safe,
 * perceptually uniform), interpolated between 9 stops, from light yellow at 0 layers to dark purple
 * at `numLayers`. The scale always spans 0..numLayers (not the observed minimum and maximum), so a
 * given model always shows a given depth in the same colour; luminance falls monotonically with depth.
 * @throws InvalidOptionError when `numLayers` is not a positive integer or `layers` not an integer in 0..numLayers.
 */
export function depthColor(layers: number, numLayers: number): [number, number, number] {
  checkNumLayers(numLayers);
  checkLayers(layers, numLayers, 'layers');
  return colorAt(layers / numLayers);
}

/** The index in xterm's 256-colour palette of the cube colour nearest to c. */
function xterm256(c: readonly [number, number, number]): number {
  const levels = [0, 95, 135, 175, 215, 255];
  const near = (v: number) =>
    levels.reduce((best, l, i) => (Math.abs(l - v) < Math.abs(levels[best]! - v) ? i : best), 0);
  return 16 + 36 * near(c[0]) + 6 * near(c[1]) + near(c[2]);
}

function ansiColors(
  layers: number,
  numLayers: number,
  o: { min: number; colors: '24bit' | '256' } = { min: 0, colors: '24bit' },
): string {
  const bg = colorAt(scaled(layers, numLayers, o.min));
  const fg = foregroundFor(bg);
  if (o.colors === '256') return `${ESC}48;5;${xterm256(bg)}m${ESC}38;5;${fg[0] ? 231 : 16}m`;
  return `${ESC}48;2;${bg[0]};${bg[1]};${bg[2]}m${ESC}38;2;${fg[0]};${fg[1]};${fg[2]}m`;
}

/**
 * Terminal rendering of one span: its text on a 24-bit (or `options.colors` '256') background of {@link depthColor}
 * (over the scale `options.minLayers`..numLayers)
 * (`ESC[48;2;r;g;bm`) with a black or white foreground (`ESC[38;2;r;g;bm`, whichever reads better),
 * followed by a reset (`ESC[0m`). Newlines inside the span do not carry the background past the line
 * end: the colour is reset before each `\n` (or `\r\n`) and applied again after it; empty lines get
 * no colour. Control characters other than tab and newline are shown as visible symbols, so model
 * output cannot emit terminal escape sequences. Print the prompt before the spans in the default
 * colour (or use {@link renderDepthViewAnsi}).
 * @throws InvalidOptionError when `numLayers` or the span's `layers` (or `executed`) is invalid.
 */
export function renderDepthAnsi(span: DepthSpan, numLayers: number, options?: DepthAnsiOptions): string {
  checkNumLayers(numLayers);
  checkSpan(span, numLayers, '');
  const on = ansiColors(span.layers, numLayers, checkAnsiOptions(options, numLayers));
  return sanitize(span.text)
    .split(/(\r?\n)/)
    .map((part, i) => (i % 2 === 1 || part === '' ? part : on + part + RESET))
    .join('');
}

/**
 * A legend line for the terminal: `layers: ` followed by a swatch, in its colour, for each of the
 * depths min, min + S/4, min + S/2, min + 3S/4 and L (S = L - min, rounded, without repeats; every
 * depth when S <= 8), each showing its number. No trailing newline.
 * @throws InvalidOptionError when `numLayers` is not a positive integer.
 */
export function depthLegendAnsi(numLayers: number, options?: DepthAnsiOptions): string {
  checkNumLayers(numLayers);
  const o = checkAnsiOptions(options, numLayers);
  // Over a scale of a few depths, every depth has its swatch; over a long one, five ticks.
  const ticks =
    numLayers - o.min <= 8
      ? Array.from({ length: numLayers - o.min + 1 }, (_, i) => o.min + i)
      : legendTicks(numLayers - o.min).map((d) => d + o.min);
  return 'layers: ' + ticks.map((d) => `${ansiColors(d, numLayers, o)} ${d} ${RESET}`).join(' ');
}

/**
 * Terminal rendering of a whole view: the prompt in the default colour, each span as
 * {@link renderDepthAnsi} renders it, then a newline and the {@link depthLegendAnsi} legend line
 * (with the mean number of layers when `meanLayers` is given). Ends with a newline.
 * @throws InvalidOptionError when `numLayers`, `meanLayers` or a span is invalid.
 */
export function renderDepthViewAnsi(input: DepthViewInput): string {
  const { spans, numLayers } = checkInput(input);
  let out = sanitize(input.prompt);
  for (const s of spans) out += renderDepthAnsi(s, numLayers);
  let legend = depthLegendAnsi(numLayers);
  if (input.meanLayers !== undefined) legend += `  mean ${input.meanLayers.toFixed(2)} of ${numLayers}`;
  return `${out}\n${legend}\n`;
}

function checkInput(input: DepthViewInput): DepthViewInput {
  if (typeof input !== 'object' || input === null)
    throw new InvalidOptionError('input', 'must be an object {prompt, spans, numLayers}');
  checkNumLayers(input.numLayers);
  if (typeof input.prompt !== 'string')
    throw new InvalidOptionError('prompt', `must be a string, got ${describeValue(input.prompt)}`);
  if (!Array.isArray(input.spans))
    throw new InvalidOptionError('spans', `must be an array, got ${describeValue(input.spans)}`);
  input.spans.forEach((s, i) => checkSpan(s, input.numLayers, `spans[${i}]`));
  for (const k of ['title', 'policy', 'model'] as const)
    if (input[k] !== undefined && typeof input[k] !== 'string')
      throw new InvalidOptionError(k, `must be a string, got ${describeValue(input[k])}`);
  const m = input.meanLayers;
  if (m !== undefined && (typeof m !== 'number' || !Number.isFinite(m) || m < 0 || m > input.numLayers))
    throw new InvalidOptionError('meanLayers', `must be a number in [0, ${input.numLayers}], got ${describeValue(m)}`);
  return input;
}

/** Escapes text for HTML content and (double- or single-quoted) attribute values. */
function escapeHtml(text: string): string {
  return sanitize(text).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string,
  );
}

function executedList(e: ArrayLike<number>): string {
  const ran: number[] = [];
  for (let l = 0; l < e.length; l++) if (e[l]) ran.push(l);
  return ran.join(' ');
}

const CSS = `
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; }
.meta { color: #555; margin-top: 0; }
.text { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.7; border: 1px solid #ddd; border-radius: 4px; padding: 0.8em; }
.prompt { color: #888; }
.tok { border-radius: 2px; }
h2 { font-size: 1em; margin: 1.5em 0 0.4em; }
.scale { position: relative; max-width: 30em; }
.bar { height: 1.2em; border: 1px solid #999; }
.ticks { position: relative; height: 1.4em; font-size: 0.85em; }
.tick { position: absolute; top: 0; border-left: 1px solid #555; height: 1.2em; }
.tick b { font-weight: normal; position: relative; top: 0.3em; left: 0.2em; }
.layers { display: grid; column-gap: 1px; max-width: 60em; }
.col { display: flex; flex-direction: column; justify-content: flex-end; height: 6em; min-width: 0; border-bottom: 1px solid #999; }
.fill { background: #3b528b; }
.lab { grid-row: 2; justify-self: center; white-space: nowrap; font-size: 0.7em; line-height: 1.6; color: #555; }
.note { color: #555; font-size: 0.85em; }
`;

/**
 * A complete, self-contained HTML5 page (inline CSS, no scripts, no external resources): the title,
 * a header line with the model, policy and mean layers when given, the prompt in plain grey text,
 * then one `<span class="tok">` per span on its {@link depthColor} background, with a tooltip
 * (`title`) such as "12 of 16 layers: 0 1 2 5 ..." (the list of executed layer indices when
 * `executed` is given). Whitespace and newlines are preserved (`white-space: pre-wrap`). Below the
 * text: a colour bar from 0 to numLayers with tick labels and, when spans carry `executed`, a bar per
 * layer l showing the fraction of those spans that ran layer l. All text is HTML-escaped.
 * @throws InvalidOptionError when `numLayers`, `meanLayers` or a span is invalid.
 */
export function renderDepthHtml(input: DepthViewInput): string {
  const { spans, numLayers: L } = checkInput(input);
  const title = input.title ?? 'Per-token depth';
  const meta: string[] = [];
  if (input.model !== undefined) meta.push(`model: ${escapeHtml(input.model)}`);
  if (input.policy !== undefined) meta.push(`policy: ${escapeHtml(input.policy)}`);
  if (input.meanLayers !== undefined) meta.push(`mean layers: ${input.meanLayers.toFixed(2)} of ${L}`);

  const toks = spans.map((s) => {
    const bg = colorAt(s.layers / L);
    const tip = `${s.layers} of ${L} layers` + (s.executed ? `: ${executedList(s.executed)}` : '');
    return `<span class="tok" style="background:${hex(bg)};color:${hex(foregroundFor(bg))}" title="${escapeHtml(tip)}">${escapeHtml(s.text)}</span>`;
  });

  const stops = VIRIDIS.map(
    (_, i) => `${hex(colorAt(i / (VIRIDIS.length - 1)))} ${((100 * i) / (VIRIDIS.length - 1)).toFixed(1)}%`,
  );
  const ticks = legendTicks(L).map(
    (d) => `<div class="tick" style="left:${((100 * d) / L).toFixed(2)}%"><b>${d}</b></div>`,
  );

  const parts = [
    '<!DOCTYPE html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeHtml(title)}</title>`,
    `<style>${CSS}</style>`,
    '</head>',
    '<body>',
    `<h1>${escapeHtml(title)}</h1>`,
  ];
  if (meta.length) parts.push(`<p class="meta">${meta.join(' · ')}</p>`);
  parts.push(`<div class="text"><span class="prompt">${escapeHtml(input.prompt)}</span>${toks.join('')}</div>`);
  parts.push(
    `<h2>Layers run per token (0 to ${L})</h2>`,
    '<div class="scale">',
    `<div class="bar" style="background:linear-gradient(to right, ${stops.join(', ')})"></div>`,
    `<div class="ticks">${ticks.join('')}</div>`,
    '</div>',
  );

  const withMask = spans.filter((s) => s.executed !== undefined);
  if (withMask.length) {
    // One grid: bar l in row 1 and its label in row 2 share column l, so each label is centred
    // under its own bar at any width and layer count (the label may be wider than its column).
    const cols: string[] = [];
    const labs: string[] = [];
    const every = Math.max(1, Math.ceil(L / 32));
    for (let l = 0; l < L; l++) {
      let ran = 0;
      for (const s of withMask) ran += (s.executed as ArrayLike<number>)[l] ?? 0;
      const frac = ran / withMask.length;
      const pct = (100 * frac).toFixed(1);
      cols.push(
        `<div class="col" title="layer ${l}: ran for ${ran} of ${withMask.length} tokens (${pct}%)"><div class="fill" style="height:${pct}%"></div></div>`,
      );
      if (l % every === 0) labs.push(`<div class="lab" style="grid-column:${l + 1}">${l}</div>`);
    }
    const of =
      withMask.length === spans.length
        ? `${spans.length}`
        : `${withMask.length} (of ${spans.length}) with a layer mask`;
    parts.push(
      '<h2>Fraction of generated tokens that ran each layer</h2>',
      `<div class="layers" style="grid-template-columns:repeat(${L}, minmax(0, 1fr))">${cols.join('')}${labs.join('')}</div>`,
      `<p class="note">Bar height: share of the ${of} generated tokens that ran the layer; layer 0 at the left.</p>`,
    );
  }
  parts.push('</body>', '</html>', '');
  return parts.join('\n');
}
