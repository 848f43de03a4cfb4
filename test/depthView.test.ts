/**
 * Per-token depth rendering (terminal and HTML): colour scale, ANSI escapes, HTML escaping and
 * structure, legends and validation. Pure string functions: no model is loaded.
 */
import {
  depthColor,
  depthLegendAnsi,
  renderDepthAnsi,
  renderDepthHtml,
  renderDepthViewAnsi,
  type DepthSpan,
  type DepthViewInput,
} from '../src/depthView';
import { InvalidOptionError } from '../src/errors';

const ESC = '\x1b[';
const RESET = '\x1b[0m';

function luminance([r, g, b]: [number, number, number]): number {
  const lin = (c: number): number => {
    const s = c / 255;
    return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

function mask(numLayers: number, ran: number[]): Uint8Array {
  const m = new Uint8Array(numLayers);
  for (const l of ran) m[l] = 1;
  return m;
}

function count(s: string, re: RegExp): number {
  return (s.match(re) ?? []).length;
}

describe('depthColor', () => {
  test('0 and numLayers differ; channels are integers in 0..255', () => {
    for (const L of [1, 2, 16, 32, 80]) {
      const lo = depthColor(0, L);
      const hi = depthColor(L, L);
      expect(lo).not.toEqual(hi);
      for (let d = 0; d <= L; d++)
        for (const c of depthColor(d, L)) {
          expect(Number.isInteger(c)).toBe(true);
          expect(c).toBeGreaterThanOrEqual(0);
          expect(c).toBeLessThanOrEqual(255);
        }
    }
  });

  test('luminance falls strictly with depth (few layers light, all layers dark)', () => {
    for (const L of [1, 4, 16, 32, 100]) {
      let prev = Infinity;
      for (let d = 0; d <= L; d++) {
        const y = luminance(depthColor(d, L));
        expect(y).toBeLessThan(prev);
        prev = y;
      }
    }
    expect(luminance(depthColor(0, 16))).toBeGreaterThan(0.5);
    expect(luminance(depthColor(16, 16))).toBeLessThan(0.05);
  });

  test('same depth, same colour; scale is fixed by numLayers, not by the observed depths', () => {
    expect(depthColor(7, 16)).toEqual(depthColor(7, 16));
    expect(depthColor(8, 16)).toEqual(depthColor(16, 32)); // same fraction of the model
    expect(depthColor(16, 16)).toEqual(depthColor(32, 32));
    // Rendering a text whose depths are all high does not stretch the scale.
    const a = renderDepthAnsi({ text: 'x', layers: 12 }, 16);
    const b = renderDepthAnsi({ text: 'y', layers: 12 }, 16);
    expect(a.replace('x', '')).toBe(b.replace('y', ''));
  });

  test('bad numLayers or layers throw InvalidOptionError naming the option', () => {
    for (const L of [0, -1, 1.5, NaN, Infinity, '16' as unknown as number]) {
      expect(() => depthColor(0, L)).toThrow(InvalidOptionError);
      expect(() => depthColor(0, L)).toThrow(/numLayers.*positive integer/);
    }
    for (const d of [-1, 17, 2.5, NaN, undefined as unknown as number]) {
      expect(() => depthColor(d, 16)).toThrow(InvalidOptionError);
      expect(() => depthColor(d, 16)).toThrow(/'layers'.*integer in 0\.\.16/);
    }
    try {
      depthColor(17, 16);
    } catch (e) {
      expect((e as InvalidOptionError).option).toBe('layers');
      expect((e as InvalidOptionError).code).toBe('ERR_DEPTHGATE_INVALID_OPTION');
    }
  });
});

describe('renderDepthAnsi', () => {
  test('24-bit background of the depth colour, readable foreground, ends with a reset', () => {
    const L = 16;
    for (const d of [0, 4, 12, 16]) {
      const out = renderDepthAnsi({ text: 'hello', layers: d }, L);
      const [r, g, b] = depthColor(d, L);
      expect(out.startsWith(`${ESC}48;2;${r};${g};${b}m`)).toBe(true);
      expect(out).toContain('hello');
      expect(out.endsWith(RESET)).toBe(true);
      const fg = /\x1b\[38;2;(\d+);(\d+);(\d+)m/.exec(out);
      expect(fg).not.toBeNull();
      const f = fg!.slice(1).join(';');
      // Light backgrounds get black text, dark ones white.
      expect(f).toBe(luminance([r, g, b]) > 0.179 ? '0;0;0' : '255;255;255');
    }
    expect(renderDepthAnsi({ text: 'a', layers: 0 }, L)).toContain(`${ESC}38;2;0;0;0m`);
    expect(renderDepthAnsi({ text: 'a', layers: L }, L)).toContain(`${ESC}38;2;255;255;255m`);
  });

  test('newlines: reset before each line end, colour again after it, no colour on empty lines', () => {
    const L = 8;
    const [r, g, b] = depthColor(5, L);
    const on = `${ESC}48;2;${r};${g};${b}m`;
    const out = renderDepthAnsi({ text: 'ab\ncd\r\n\nef', layers: 5 }, L);
    const lines = out.split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0].startsWith(on) && lines[0].endsWith(RESET)).toBe(true);
    expect(lines[1].startsWith(on) && lines[1].endsWith(`${RESET}\r`)).toBe(true);
    expect(lines[2]).toBe('');
    expect(lines[3].startsWith(on) && lines[3].endsWith(RESET)).toBe(true);
    // Every '\n' is preceded by a reset (or by '\r' after a reset, or by another newline).
    expect(out).not.toMatch(/[^m\r\n]\r?\n/);
    // A span that is only a newline carries no colour at all.
    expect(renderDepthAnsi({ text: '\n', layers: 5 }, L)).toBe('\n');
    expect(renderDepthAnsi({ text: '', layers: 5 }, L)).toBe('');
  });

  test('control characters in the text cannot inject escape sequences', () => {
    const out = renderDepthAnsi({ text: 'x\x1b[2Jy\x07\tz', layers: 1 }, 4);
    expect(count(out, /\x1b/g)).toBe(3); // background, foreground, reset
    expect(out).toContain('\u241b[2Jy\u2407\tz');
  });

  test('validates its arguments', () => {
    expect(() => renderDepthAnsi({ text: 'a', layers: 17 }, 16)).toThrow(InvalidOptionError);
    expect(() => renderDepthAnsi({ text: 'a', layers: 1 }, 0)).toThrow(InvalidOptionError);
    expect(() => renderDepthAnsi({ text: 'a', layers: 2, executed: mask(4, [0]) }, 4)).toThrow(
      /executed.*1 layers.*layers is 2/,
    );
    expect(() => renderDepthAnsi({ text: 'a', layers: 1, executed: mask(3, [0]) }, 4)).toThrow(
      /one entry per layer \(4\), got 3/,
    );
    expect(() => renderDepthAnsi({ text: 'a', layers: 1, executed: [0, 2, 0, 0] }, 4)).toThrow(
      /entry 1 must be 0 or 1/,
    );
  });
});

describe('terminal legend', () => {
  test('swatches for 0, L/4, L/2, 3L/4 and L, each in its colour and showing its number', () => {
    const L = 30;
    const out = depthLegendAnsi(L);
    expect(out.startsWith('layers: ')).toBe(true);
    const ticks = [0, 8, 15, 23, 30]; // 7.5 and 22.5 round up
    for (const d of ticks) {
      const [r, g, b] = depthColor(d, L);
      expect(out).toMatch(new RegExp(`\\x1b\\[48;2;${r};${g};${b}m\\x1b\\[38;2;\\d+;\\d+;\\d+m ${d} \\x1b\\[0m`));
    }
    expect(count(out, /\x1b\[48;2;/g)).toBe(5);
    expect(out.endsWith(RESET)).toBe(true);
    // The visible text lists the ticks in order.
    expect(
      out
        .replace(/\x1b\[[0-9;]*m/g, '')
        .split(/\s+/)
        .filter(Boolean),
    ).toEqual(['layers:', '0', '8', '15', '23', '30']);
  });

  test('small models have no repeated ticks; bad numLayers throws', () => {
    expect(depthLegendAnsi(1).replace(/\x1b\[[0-9;]*m/g, '')).toBe('layers:  0   1 ');
    expect(count(depthLegendAnsi(2), /\x1b\[48;2;/g)).toBe(3);
    expect(() => depthLegendAnsi(0)).toThrow(InvalidOptionError);
    expect(() => depthLegendAnsi(2.5)).toThrow(InvalidOptionError);
  });

  test('renderDepthViewAnsi: prompt uncoloured, then the spans, then the legend', () => {
    const out = renderDepthViewAnsi({
      prompt: 'Q: 2+2?\n',
      numLayers: 4,
      meanLayers: 2.5,
      spans: [
        { text: 'A:', layers: 4 },
        { text: ' 4', layers: 1 },
      ],
    });
    expect(
      out.startsWith(
        'Q: 2+2?\n' + renderDepthAnsi({ text: 'A:', layers: 4 }, 4) + renderDepthAnsi({ text: ' 4', layers: 1 }, 4),
      ),
    ).toBe(true);
    expect(out).toContain(depthLegendAnsi(4) + '  mean 2.50 of 4\n');
  });
});

describe('renderDepthHtml', () => {
  const L = 16;
  const all = Array.from({ length: L }, (_, l) => l);
  const input: DepthViewInput = {
    prompt: 'Tell me <b>a story</b> & "more"',
    numLayers: L,
    title: 'Depth <of> tokens',
    model: "TinyLlama's",
    policy: 'flexidepth threshold=0.5',
    meanLayers: 11.5,
    spans: [
      { text: 'Once', layers: 16, executed: mask(L, all) },
      { text: ' upon\n', layers: 12, executed: mask(L, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15]) },
      { text: '<script>&"\'', layers: 7, executed: mask(L, [0, 1, 2, 5, 8, 13, 15]) },
      { text: '  a\ttime', layers: 11, executed: mask(L, [0, 1, 2, 3, 4, 5, 6, 7, 8, 14, 15]) },
    ],
  };
  const html = renderDepthHtml(input);

  test('is a self-contained HTML5 page with no scripts or external resources', () => {
    expect(html.startsWith('<!DOCTYPE html>\n<html lang="en">')).toBe(true);
    expect(html.trimEnd().endsWith('</html>')).toBe(true);
    expect(html).toContain('<meta charset="utf-8">');
    expect(html).not.toMatch(/<script|<link|<img|src=|url\(|@import|https?:/i);
    expect(html).toContain('<title>Depth &lt;of&gt; tokens</title>');
    expect(html).toContain('<h1>Depth &lt;of&gt; tokens</h1>');
    expect(html).toMatch(/white-space: pre-wrap/);
  });

  test('escapes all text: &, <, >, ", \'', () => {
    expect(html).toContain('&lt;script&gt;&amp;&quot;&#39;</span>');
    expect(html).toContain('Tell me &lt;b&gt;a story&lt;/b&gt; &amp; &quot;more&quot;');
    expect(html).toContain('model: TinyLlama&#39;s');
    expect(html).not.toContain('<b>a story');
    const escaped = renderDepthHtml({ prompt: '', numLayers: 2, spans: [{ text: '"><span title=\'x', layers: 1 }] });
    expect(escaped).toContain('&quot;&gt;&lt;span title=&#39;x</span>');
  });

  test('header line with model, policy and mean layers, only when given', () => {
    expect(html).toMatch(
      /<p class="meta">model: TinyLlama&#39;s · policy: flexidepth threshold=0.5 · mean layers: 11.50 of 16<\/p>/,
    );
    const bare = renderDepthHtml({ prompt: 'p', numLayers: 4, spans: [] });
    expect(bare).not.toContain('class="meta"');
    expect(bare).toContain('<title>Per-token depth</title>');
  });

  test('one coloured span per DepthSpan, in order, with the tooltip listing executed layers', () => {
    const toks = [
      ...html.matchAll(
        /<span class="tok" style="background:#([0-9a-f]{6});color:#(000000|ffffff)" title="([^"]*)">([^<]*)<\/span>/g,
      ),
    ];
    expect(toks).toHaveLength(input.spans.length);
    expect(count(html, /<span class="tok"/g)).toBe(input.spans.length);
    toks.forEach((m, i) => {
      const s = input.spans[i];
      const [r, g, b] = depthColor(s.layers, L);
      expect(parseInt(m[1], 16)).toBe((r << 16) | (g << 8) | b);
      const ran = Array.from(s.executed!).flatMap((v, l) => (v ? [l] : []));
      expect(m[3]).toBe(`${s.layers} of ${L} layers: ${ran.join(' ')}`);
    });
    expect(toks[2][3]).toBe('7 of 16 layers: 0 1 2 5 8 13 15');
    // Whitespace and newlines are kept as they are.
    expect(toks[1][4]).toBe(' upon\n');
    expect(toks[3][4]).toBe('  a\ttime');
    // Without executed: the tooltip has just the count.
    const plain = renderDepthHtml({ prompt: '', numLayers: 4, spans: [{ text: 'x', layers: 3 }] });
    expect(plain).toContain('title="3 of 4 layers">x</span>');
  });

  test('the prompt is plain grey text before the spans', () => {
    expect(html).toMatch(/<div class="text"><span class="prompt">Tell me [^<]*<\/span><span class="tok"/);
    expect(html).toMatch(/\.prompt \{ color: #888; \}/);
  });

  test('every opened <span> and <div> is closed, and properly nested', () => {
    for (const tag of ['span', 'div', 'p', 'h1', 'h2', 'b', 'style', 'title', 'head', 'body', 'html'])
      expect([tag, count(html, new RegExp(`<${tag}[\\s>]`, 'g'))]).toEqual([
        tag,
        count(html, new RegExp(`</${tag}>`, 'g')),
      ]);
    // Nesting check with a stack over every tag that has a closing tag.
    const voids = new Set(['meta', '!DOCTYPE']);
    const stack: string[] = [];
    const body = html.replace(/<style>[\s\S]*?<\/style>/, '');
    for (const m of body.matchAll(/<(\/?)([!\w]+)[^>]*>/g)) {
      if (voids.has(m[2])) continue;
      if (m[1]) expect(stack.pop()).toBe(m[2]);
      else stack.push(m[2]);
    }
    expect(stack).toEqual([]);
  });

  test('legend: colour bar from 0 to numLayers with tick labels', () => {
    expect(html).toContain('Layers run per token (0 to 16)');
    const grad = /<div class="bar" style="background:linear-gradient\(to right, ([^)]*)\)"><\/div>/.exec(html);
    expect(grad).not.toBeNull();
    const stops = grad![1].split(', ');
    const hexOf = (c: [number, number, number]): string => '#' + c.map((v) => v.toString(16).padStart(2, '0')).join('');
    expect(stops[0]).toBe(`${hexOf(depthColor(0, L))} 0.0%`);
    expect(stops[stops.length - 1]).toBe(`${hexOf(depthColor(L, L))} 100.0%`);
    const ticks = [...html.matchAll(/<div class="tick" style="left:([\d.]+)%"><b>(\d+)<\/b><\/div>/g)].map((m) => [
      Number(m[1]),
      Number(m[2]),
    ]);
    expect(ticks).toEqual([
      [0, 0],
      [25, 4],
      [50, 8],
      [75, 12],
      [100, 16],
    ]);
  });

  test('per-layer bar: the fraction of generated spans that ran each layer', () => {
    const cols = [
      ...html.matchAll(
        /<div class="col" title="layer (\d+): ran for (\d+) of (\d+) tokens \(([\d.]+)%\)"><div class="fill" style="height:([\d.]+)%"><\/div><\/div>/g,
      ),
    ];
    expect(cols).toHaveLength(L);
    cols.forEach((m, l) => {
      const ran = input.spans.filter((s) => s.executed![l]).length;
      expect(Number(m[1])).toBe(l);
      expect(Number(m[2])).toBe(ran);
      expect(Number(m[3])).toBe(4);
      expect(Number(m[5])).toBeCloseTo((100 * ran) / 4, 1);
    });
    expect(Number(cols[0][5])).toBe(100); // every token ran layer 0
    expect(Number(cols[10][5])).toBe(25); // only 'Once' (all layers) ran layer 10
    expect(Number(cols[13][5])).toBe(50);
    // Only when spans carry executed masks.
    const noMask = renderDepthHtml({
      ...input,
      spans: input.spans.map(({ text, layers }): DepthSpan => ({ text, layers })),
    });
    expect(noMask).not.toContain('class="col"');
    expect(noMask).not.toContain('Fraction of generated tokens');
    // Mixed: the fraction is over the spans that have a mask.
    const mixed = renderDepthHtml({ ...input, spans: [...input.spans, { text: '.', layers: 3 }] });
    expect(mixed).toContain('title="layer 13: ran for 2 of 4 tokens (50.0%)"');
    expect(mixed).toContain('4 (of 5) with a layer mask');
  });

  test('bad input throws InvalidOptionError naming the option', () => {
    const bad = (patch: Partial<DepthViewInput>, re: RegExp): void => {
      expect(() => renderDepthHtml({ ...input, ...patch })).toThrow(InvalidOptionError);
      expect(() => renderDepthHtml({ ...input, ...patch })).toThrow(re);
    };
    bad({ numLayers: 0 }, /'numLayers': must be a positive integer, got 0/);
    bad({ numLayers: 3.5 }, /'numLayers'/);
    bad({ spans: [{ text: 'a', layers: 17 }] }, /'spans\[0\]\.layers': must be an integer in 0\.\.16, got 17/);
    bad(
      {
        spans: [
          { text: 'a', layers: 1 },
          { text: 'b', layers: -1 },
        ],
      },
      /'spans\[1\]\.layers'/,
    );
    bad({ spans: [{ text: 'a', layers: 1.5 }] }, /'spans\[0\]\.layers'/);
    bad({ spans: [{ text: 'a', layers: 3, executed: mask(L, [0, 1]) }] }, /'spans\[0\]\.executed'/);
    bad({ spans: [{ text: 7 as unknown as string, layers: 3 }] }, /'spans\[0\]\.text': must be a string/);
    bad({ meanLayers: 17 }, /'meanLayers'/);
    bad({ meanLayers: NaN }, /'meanLayers'/);
    bad({ spans: 'x' as unknown as DepthSpan[] }, /'spans': must be an array/);
    bad({ prompt: undefined as unknown as string }, /'prompt'/);
  });

  test('is fast on long outputs', () => {
    const spans: DepthSpan[] = Array.from({ length: 20000 }, (_, i) => ({
      text: `t${i} `,
      layers: i % 33,
      executed: mask(
        32,
        Array.from({ length: i % 33 }, (_, l) => l),
      ),
    }));
    const t0 = Date.now();
    const out = renderDepthHtml({ prompt: 'p', numLayers: 32, spans });
    expect(count(out, /<span class="tok"/g)).toBe(20000);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});
