// Colour decisions and the depth scale's steps, without a terminal.
import { unescape } from '../src/cliArgs';
import { colorMode } from '../src/terminal';
import { depthColor, depthLegendAnsi, renderDepthAnsi } from '../src';

test('colour only on a TTY that shows it: NO_COLOR, TERM=dumb and FORCE_COLOR=0 turn it off, FORCE_COLOR on', () => {
  const tty = { isTTY: true };
  const pipe = { isTTY: false };
  expect(colorMode(tty, { TERM: 'xterm-256color' })).toBe('256');
  expect(colorMode(tty, { TERM: 'xterm', COLORTERM: 'truecolor' })).toBe('24bit');
  expect(colorMode(tty, { TERM: 'dumb', COLORTERM: 'truecolor' })).toBe('none');
  expect(colorMode(tty, { NO_COLOR: '1', COLORTERM: 'truecolor' })).toBe('none');
  expect(colorMode(tty, { FORCE_COLOR: '0' })).toBe('none');
  expect(colorMode(pipe, { COLORTERM: 'truecolor' })).toBe('none');
  expect(colorMode(pipe, { FORCE_COLOR: '1' })).toBe('256');
  expect(colorMode(pipe, { FORCE_COLOR: '3' })).toBe('24bit');
  expect(colorMode(pipe, { FORCE_COLOR: '1', NO_COLOR: '1' })).toBe('none');
});

test('a scale over the depths a policy can produce gives each depth a visibly different colour', () => {
  // FlexiDepth on the default model routes layers 6-11: depths 6..12 of 12.
  const colours = [6, 7, 8, 9, 10, 11, 12].map((d) =>
    renderDepthAnsi({ text: 'x', layers: d }, 12, { minLayers: 6 })
      .match(/48;2;(\d+);(\d+);(\d+)/)!
      .slice(1)
      .map(Number),
  );
  for (let i = 1; i < colours.length; i++) {
    const [a, b] = [colours[i - 1]!, colours[i]!];
    expect(Math.hypot(a[0]! - b[0]!, a[1]! - b[1]!, a[2]! - b[2]!)).toBeGreaterThan(25);
  }
  // The full scale's 9..12 were near-identical purples; the default scale (0..L) is unchanged.
  expect(renderDepthAnsi({ text: 'x', layers: 12 }, 12, { minLayers: 6 })).toContain(depthColor(12, 12).join(';'));
  expect(depthLegendAnsi(12, { minLayers: 6 }).match(/ \d+ /g)).toEqual([
    ' 6 ',
    ' 7 ',
    ' 8 ',
    ' 9 ',
    ' 10 ',
    ' 11 ',
    ' 12 ',
  ]);
  expect(renderDepthAnsi({ text: 'x', layers: 3 }, 12, { colors: '256' })).toMatch(
    /^\x1b\[48;5;\d+m\x1b\[38;5;(16|231)mx\x1b\[0m$/,
  );
  expect(() => renderDepthAnsi({ text: 'x', layers: 3 }, 12, { minLayers: 13 })).toThrow(
    expect.objectContaining({ option: 'minLayers' }),
  );
});

test('command-line escapes', () => {
  expect(unescape('\\n')).toBe('\n');
  expect(unescape('a\\tb\\\\n\\x41\\u00e9\\q')).toBe('a\tb\\nAé\\q');
});
