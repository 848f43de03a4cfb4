/**
 * Turns a growing list of generated ids into text deltas, in constant work per token.
 *
 * It decodes a short window of ids (the ids since an anchor, plus the chunk before it as context,
 * which keeps word joins and leading spaces right) and emits what the window's text adds to the
 * text of its prefix. The one subtlety is UTF-8: a token can end inside a character, and the
 * decoder then shows the incomplete bytes as one trailing U+FFFD. Everything before that last
 * U+FFFD is final (a UTF-8 decoder never revises what it has output), so it is emitted at once
 * and only the last character is held back. The window is re-anchored when the text is whole,
 * and also after {@link MAX_HELD} tokens in a row that all end inside a character (a run of
 * byte tokens that never forms valid UTF-8): a window that starts inside a character shows
 * garbage at its start, but the same garbage in its prefix, and after at most three bytes it is
 * in step with the true byte stream again, so the deltas stay exact. Special tokens, which
 * decode() drops, are left out of the window altogether.
 */
import type { Tokenizer } from './tokenizer';

const REPLACEMENT = '\uFFFD';

/**
 * Tokens held inside a character before the window is re-anchored anyway. Every token carries
 * at least one byte and a pending UTF-8 sequence needs at most three more, so any number above
 * three keeps the deltas exact; more only makes each decode longer.
 */
const MAX_HELD = 8;

/** Generated ids in, text deltas out, in constant work per token (see the top of this file). */
export class StreamDecoder {
  private ids: number[] = [];
  private prefixOffset = 0; // start of the window
  private readOffset = 0; // end of the window's prefix
  private prefixLength = 0; // length of the prefix's text already emitted
  private emittedInWindow = 0; // characters of the window's text past the prefix already emitted
  private emitted = '';
  /** True while the last token ended inside a multi-byte character (its U+FFFD is held back). */
  holding = false;
  constructor(private readonly tokenizer: Tokenizer) {}

  /** The text `id` adds (possibly '' while a character is incomplete). */
  push(id: number): string {
    if (this.tokenizer.isSpecial(id)) return ''; // decode() drops it: no text, nothing to hold
    this.ids.push(id);
    const text = this.tokenizer.decodeIds(this.ids.slice(this.prefixOffset));
    this.holding = text.endsWith(REPLACEMENT);
    const whole = this.holding ? text.length - 1 : text.length;
    const from = this.prefixLength + this.emittedInWindow;
    const delta = whole > from ? text.slice(from, whole) : '';
    this.emittedInWindow += delta.length;
    this.emitted += delta;
    if (!this.holding || this.ids.length - this.readOffset >= MAX_HELD) this.anchor();
    return delta;
  }

  /** The text still held back (an incomplete character at the very end), once generation is over. */
  finish(): string {
    const text = this.tokenizer.decodeIds(this.ids.slice(this.prefixOffset));
    const from = this.prefixLength + this.emittedInWindow;
    const delta = text.length > from ? text.slice(from) : '';
    this.prefixOffset = this.readOffset = this.ids.length;
    this.prefixLength = this.emittedInWindow = 0;
    this.emitted += delta;
    this.holding = false;
    return delta;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /**
   * The last chunk becomes the context of the next window. Its text is all emitted, but for the
   * U+FFFD held back at its end when the last token ended inside a character. (A U+FFFD at its
   * end otherwise is garbage from a window that starts inside a character: final, and emitted.)
   */
  private anchor(): void {
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    const prefix = this.tokenizer.decodeIds(this.ids.slice(this.prefixOffset, this.readOffset));
    this.prefixLength = this.holding && prefix.endsWith(REPLACEMENT) ? prefix.length - 1 : prefix.length;
    this.emittedInWindow = 0;
  }
}
