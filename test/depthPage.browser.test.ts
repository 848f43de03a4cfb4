/// <reference lib="dom" />
/**
 * The depth page (renderDepthHtml, `--trace FILE.html`) in a real browser: Debian's headless
 * Chromium driven by playwright-core. Each layer label must sit centred under its bar at several
 * widths and layer counts, each token's tooltip must list its layers, and the page must log no
 * console errors. A screenshot is kept in test-artifacts/ (ignored by git) for a person to look
 * at. Skipped, with the reason printed, only where /usr/bin/chromium is not installed (.ci/run
 * installs it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { renderDepthHtml, type DepthSpan } from '../src';

const CHROMIUM = process.env.DEPTHGATE_CHROMIUM ?? '/usr/bin/chromium';
const haveChromium = fs.existsSync(CHROMIUM);
if (!haveChromium)
  console.log(`depth page browser test skipped: no Chromium at ${CHROMIUM} (apt-get install chromium)`);
const browserTest = haveChromium ? test : test.skip;

const artifacts = path.join(__dirname, '..', 'test-artifacts');

/** Deterministic spans over L layers: token i runs the layers where (i * 7 + l * 3) % 5 != 0. */
function spansFor(L: number, n: number): DepthSpan[] {
  const out: DepthSpan[] = [];
  for (let i = 0; i < n; i++) {
    const executed = Array.from({ length: L }, (_, l): number => ((i * 7 + l * 3) % 5 !== 0 || l === 0 ? 1 : 0));
    out.push({ text: ` w${i}`, layers: executed.reduce((a, b) => a + b, 0), executed });
  }
  return out;
}

type Box = { x: number; width: number };

browserTest(
  'every layer label is centred under its bar, tooltips list layers, no console errors',
  async () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { chromium } = require('playwright-core') as typeof import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
    try {
      fs.mkdirSync(artifacts, { recursive: true });
      for (const L of [12, 32, 80]) {
        const spans = spansFor(L, 20);
        const html = renderDepthHtml({
          prompt: 'And God said',
          spans,
          numLayers: L,
          model: 'test',
          policy: 'flexidepth',
        });
        for (const width of [400, 800, 1200, 1920]) {
          const page = await browser.newPage({ viewport: { width, height: 900 } });
          const problems: string[] = [];
          page.on('console', (m) => {
            if (m.type() === 'error') problems.push(m.text());
          });
          page.on('pageerror', (e) => problems.push(String(e)));
          await page.setContent(html, { waitUntil: 'load' });
          const geometry = await page.evaluate(() => {
            const box = (e: Element) => {
              const r = e.getBoundingClientRect();
              return { x: r.x, width: r.width };
            };
            return {
              bars: Array.from(document.querySelectorAll('.layers .col')).map(box),
              labels: Array.from(document.querySelectorAll('.layers .lab')).map((e) => ({
                text: e.textContent ?? '',
                ...box(e),
              })),
              tips: Array.from(document.querySelectorAll('.text .tok')).map((e) => e.getAttribute('title') ?? ''),
            };
          });
          const where = `L=${L}, width ${width}`;
          expect([where, geometry.bars.length]).toEqual([where, L]);
          const every = Math.max(1, Math.ceil(L / 32));
          const want = Array.from({ length: L }, (_, l) => l).filter((l) => l % every === 0);
          expect([where, geometry.labels.map((l) => Number(l.text))]).toEqual([where, want]);
          const centre = (b: Box) => b.x + b.width / 2;
          for (const lab of geometry.labels) {
            const bar = geometry.bars[Number(lab.text)]!;
            const off = Math.abs(centre(lab) - centre(bar));
            if (off > 1.5) throw new Error(`${where}: label ${lab.text} is ${off.toFixed(2)} px off its bar's centre`);
            expect(bar.width).toBeGreaterThan(0);
          }
          // Tooltips: "N of L layers: i j k ..." with exactly the span's executed layers.
          expect(geometry.tips).toHaveLength(spans.length);
          geometry.tips.forEach((t, i) => {
            const s = spans[i]!;
            const ran = Array.from(s.executed!).flatMap((e, l) => (e ? [l] : []));
            expect(t).toBe(`${s.layers} of ${L} layers: ${ran.join(' ')}`);
          });
          expect([where, problems]).toEqual([where, []]);
          if (width === 1200)
            await page.screenshot({ path: path.join(artifacts, `depth-page-${L}-layers-1200px.png`), fullPage: true });
          await page.close();
        }
      }
      // The checked-in example page, as a user opens it.
      const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
      const problems: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(m.text());
      });
      await page.goto('file://' + path.join(__dirname, '..', 'docs', 'depth-example.html'));
      const offsets = await page.evaluate(() => {
        const bars = Array.from(document.querySelectorAll('.layers .col'));
        return Array.from(document.querySelectorAll('.layers .lab')).map((e) => {
          const r = e.getBoundingClientRect();
          const b = bars[Number(e.textContent)]!.getBoundingClientRect();
          return Math.abs(r.x + r.width / 2 - (b.x + b.width / 2));
        });
      });
      expect(offsets.length).toBeGreaterThan(0);
      expect(Math.max(...offsets)).toBeLessThanOrEqual(1.5);
      expect(problems).toEqual([]);
      await page.screenshot({ path: path.join(artifacts, 'depth-example-1200px.png'), fullPage: true });
      await page.close();
    } finally {
      await browser.close();
    }
  },
  120000,
);
