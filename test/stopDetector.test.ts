/** StopDetector: where stop strings start, and how much text is safe to hand out. */
import { StopDetector } from '../src/stopDetector';

describe('StopDetector', () => {
  test('finds the earliest of several stop strings', () => {
    const d = new StopDetector(['END', 'ST', '\n\n']);
    expect(d.find('the STory ENDs', 0)).toBe(4);
    expect(d.find('a\n\nb END', 0)).toBe(1);
    expect(d.find('nothing here', 0)).toBe(-1);
  });

  test('searches from a stop length before what was handed out, so a stop completed by new text is found', () => {
    const d = new StopDetector(['</s>']);
    // "</" was held back and given out only up to index 5; "s>" arrives.
    expect(d.find('hello</s>', 5)).toBe(5);
    // A stop lying wholly inside text handed out long ago is not searched again.
    expect(d.find('</s> and more text', 12)).toBe(-1);
  });

  test('safeLength holds back the longest tail that may start a stop string', () => {
    const d = new StopDetector(['STOP', 'xyz']);
    expect(d.safeLength('abc')).toBe(3);
    expect(d.safeLength('abcS')).toBe(3);
    expect(d.safeLength('abcSTO')).toBe(3);
    expect(d.safeLength('abcx')).toBe(3);
    expect(d.safeLength('abcxy')).toBe(3);
    // A whole stop string is find()'s business; its prefixes are held back.
    expect(d.safeLength('STOPS')).toBe(4);
    expect(d.safeLength('')).toBe(0);
  });

  test('multi-byte characters and an empty list', () => {
    const d = new StopDetector(['é。']);
    expect(d.find('caféé。', 0)).toBe(4);
    expect(d.safeLength('café')).toBe(3);
    const none = new StopDetector([]);
    expect(none.empty).toBe(true);
    expect(none.find('anything', 0)).toBe(-1);
    expect(none.safeLength('anything')).toBe(8);
  });
});
