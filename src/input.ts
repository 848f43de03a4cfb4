/**
 * What to generate from (text, chat messages, token ids) turned into token ids, with the checks
 * that must come before any heavy or unbounded work: a container of ids is checked (type and
 * length) before it is copied, and an input that cannot fit the positions left is refused with
 * ContextOverflowError before it is tokenized (src/tokenBound.ts).
 */
import { ContextOverflowError, InvalidOptionError } from './errors';
import type { ChatMessage, Tokenizer } from './tokenizer';

/** What to generate from: plain text, chat messages (rendered with the chat template), or token ids. */
export type GenerateInput = string | ChatMessage[] | { tokens: ArrayLike<number> };

/**
 * @internal Copies token ids from an Array, a typed array or an array-like after checking the
 * container (an array-like's `length` must be an integer no larger than `maxLength`; a longer
 * input calls `tooLong`, by default an InvalidOptionError), then checks each id is an integer in
 * 0..vocab-1. Errors name `name`.
 */
export function tokenIdArray(
  v: unknown,
  name: string,
  vocab: number,
  maxLength: number,
  tooLong?: (n: number) => Error,
): number[] {
  const isArray = Array.isArray(v);
  const isTyped = ArrayBuffer.isView(v) && !(v instanceof DataView);
  if (!isArray && !isTyped && (typeof v !== 'object' || v === null || !('length' in v)))
    throw new InvalidOptionError(name, 'must be an array of token ids');
  const n = (v as { length: unknown }).length;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
    throw new InvalidOptionError(name, `must be an array of token ids (its length is ${String(n)})`);
  // An Array or typed array of any length already exists; a generic array-like is checked first.
  if (n > maxLength && (tooLong || (!isArray && !isTyped)))
    throw tooLong
      ? tooLong(n)
      : new InvalidOptionError(name, `has ${n} elements, more than the ${maxLength} this call takes`);
  const ids = Array.from(v as ArrayLike<unknown>) as unknown[];
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    if (typeof t === 'number' && Number.isInteger(t) && t >= 0 && t < vocab) continue;
    const shown = typeof t === 'bigint' ? `${t}n` : typeof t === 'string' ? JSON.stringify(t) : String(t);
    throw new InvalidOptionError(
      name,
      typeof t === 'number'
        ? `token id ${t} is outside the vocabulary (integers 0..${vocab - 1})`
        : `element ${i} (${shown}) is not a token id (an integer 0..${vocab - 1})`,
    );
  }
  return ids as number[];
}

/** @internal The error for an input longer than the positions left, with what is known of its length. */
export function promptTooLong(what: string, room: number, contextSize: number): ContextOverflowError {
  return new ContextOverflowError(
    `the prompt is ${what} but only ${room} of its ${contextSize} context positions are left (contextSize ${contextSize})`,
  );
}

/**
 * @internal Token ids of an input: text (with BOS at the start of a sequence, as the tokenizer
 * config says), chat messages through the chat template (which writes its own special tokens),
 * or ids as given. `room` is the number of positions left, `contextSize` the sequence's context:
 * an input that cannot fit is refused before it is tokenized or copied.
 */
export function tokenizeInput(
  tk: Tokenizer,
  input: GenerateInput,
  startOfSequence: boolean,
  vocab: number,
  room: number,
  contextSize: number,
): number[] {
  const text = (s: string, addSpecial: boolean) => {
    const least = tk.minTokens(s);
    if (least > room) throw promptTooLong(`${s.length} characters, at least ${least} tokens`, room, contextSize);
    return tk.encode(s, addSpecial);
  };
  let ids: number[];
  if (typeof input === 'string') ids = text(input, startOfSequence);
  else if (Array.isArray(input)) ids = text(tk.applyChatTemplate(input, true), false);
  else if (input && typeof input === 'object' && 'tokens' in input)
    return tokenIdArray(input.tokens, 'input', vocab, room, (n) => promptTooLong(`${n} tokens`, room, contextSize));
  else throw new InvalidOptionError('input', 'must be a string, an array of chat messages, or {tokens}');
  for (const t of ids)
    if (t >= vocab) throw new InvalidOptionError('input', `token id ${t} is outside the vocabulary (0..${vocab - 1})`);
  return ids;
}
