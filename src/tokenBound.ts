/**
 * A lower bound on the number of tokens a text encodes to, known without encoding it, so that a
 * prompt that cannot fit its context is refused at once rather than after seconds of synchronous
 * tokenization (a megabyte of text takes 1.5 to 5 s with @huggingface/tokenizers).
 *
 * The bound: every character of the normalized text ends up inside exactly one token, and no
 * token covers more characters than its own vocabulary string is long, so
 *   tokens >= ceil(normalized length / longest token string).
 * For byte-level BPE (Llama 3, Qwen2) a token's string has one character per byte, and a text of
 * n UTF-16 units has at least n bytes; for SentencePiece-style BPE with byte fallback (Llama 2,
 * Mistral) every character is a piece or its bytes. That holds only when nothing in the pipeline
 * can drop characters, so the bound is used only for tokenizers that are provably of that kind:
 * a BPE model that can represent every byte (ByteLevel, or byte_fallback with all 256 byte
 * tokens), pre-tokenizers that never remove text, added tokens that strip no whitespace, and
 * normalizers that act on each character (NFC and the other Unicode forms, Replace, Lowercase,
 * Prepend), so normalizing the whole text at once gives no more characters than tokenization
 * normalizes (it normalizes the text between added tokens), but for one Prepend per normalizer
 * when there is nothing between them: that is the `slack`. For any other tokenizer the bound is
 * unknown (0) and the text is tokenized before the context check, as before.
 */

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Pre-tokenizers that split or rewrite text without ever dropping any of it. */
function keepsAllText(p: unknown): boolean {
  if (p === null || p === undefined) return true;
  if (!isObject(p)) return false;
  switch (p.type) {
    case 'ByteLevel':
    case 'Metaspace':
    case 'Digits':
      return true;
    case 'Split':
    case 'Punctuation':
      return typeof p.behavior !== 'string' || p.behavior.toLowerCase() !== 'removed';
    case 'Sequence':
      return Array.isArray(p.pretokenizers) && p.pretokenizers.every(keepsAllText);
    default:
      return false; // Whitespace, WhitespaceSplit, BertPreTokenizer, ... drop whitespace
  }
}

function hasByteLevel(p: unknown): boolean {
  if (!isObject(p)) return false;
  if (p.type === 'ByteLevel') return true;
  return p.type === 'Sequence' && Array.isArray(p.pretokenizers) && p.pretokenizers.some(hasByteLevel);
}

/** Normalizers whose whole-text result is no longer than the sum over the parts; counts Prepends. */
function perCharacterNormalizer(n: unknown, prepends: { n: number }): boolean {
  if (n === null || n === undefined) return true;
  if (!isObject(n)) return false;
  switch (n.type) {
    case 'NFC':
    case 'NFD':
    case 'NFKC':
    case 'NFKD':
    case 'Lowercase':
    case 'Replace':
      return true;
    case 'Prepend':
      prepends.n++;
      return true;
    case 'Sequence':
      return Array.isArray(n.normalizers) && n.normalizers.every((x) => perCharacterNormalizer(x, prepends));
    default:
      return false; // Strip (per part it strips more), BertNormalizer, Precompiled, ...
  }
}

/** The 256 characters GPT-2's byte-level BPE uses for the bytes 0..255. */
function byteLevelAlphabet(): string[] {
  const direct: number[] = [];
  for (let b = 33; b <= 126; b++) direct.push(b);
  for (let b = 161; b <= 172; b++) direct.push(b);
  for (let b = 174; b <= 255; b++) direct.push(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(direct.includes(b) ? b : 256 + extra++);
  return out;
}

/**
 * The most characters of (normalized) input one token can cover, or 0 when no such bound holds
 * for this tokenizer, and the characters whole-text normalization may add (`slack`). `tokenizerJson` is tokenizer.json, `config` tokenizer_config.json, `vocab`
 * every token string (added tokens included) with its id.
 */
export function charsPerTokenBound(
  tokenizerJson: Record<string, unknown>,
  config: Record<string, unknown>,
  vocab: Map<string, number>,
): { charsPerToken: number; slack: number } {
  const none = { charsPerToken: 0, slack: 0 };
  const model = tokenizerJson.model;
  if (!isObject(model) || model.type !== 'BPE') return none;
  if (config.remove_space === true || config.do_lowercase_and_remove_accent === true) return none;
  const prepends = { n: 0 };
  if (!perCharacterNormalizer(tokenizerJson.normalizer, prepends)) return none;
  const pre = tokenizerJson.pre_tokenizer;
  if (!keepsAllText(pre)) return none;
  // Every byte must have a token, or unknown characters could be dropped or fused into one <unk>.
  const bytes = hasByteLevel(pre)
    ? byteLevelAlphabet()
    : model.byte_fallback === true
      ? Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)
      : null;
  if (!bytes || bytes.some((b) => !vocab.has(b))) return none;
  // An added token that strips the whitespace next to it removes text.
  const added = Array.isArray(tokenizerJson.added_tokens) ? tokenizerJson.added_tokens : [];
  if (added.some((t) => !isObject(t) || t.lstrip === true || t.rstrip === true)) return none;
  let longest = 0;
  for (const s of vocab.keys()) if (typeof s === 'string') longest = Math.max(longest, s.length); // (vocabularies may have holes)
  return { charsPerToken: longest, slack: prepends.n };
}
