/**
 * A GGUF file's tokenizer (tokenizer.ggml.*) as the tokenizer.json and tokenizer_config.json that
 * the Hugging Face tokenizers library (src/tokenizer.ts) loads, built in memory, for the two
 * vocabularies llama.cpp's Llama and Qwen2 files carry:
 * - `gpt2` (byte-level BPE): tokens, merges, token types (control tokens become special added
 *   tokens, user-defined ones plain added tokens, unused ones are left out), the pre-tokenizer
 *   named by tokenizer.ggml.pre;
 * - `llama` (SentencePiece BPE with byte fallback): tokens and scores, from which the merges are
 *   derived the way transformers' LlamaConverter derives them from a sentencepiece model (every
 *   split of a piece into two pieces, ranked by the piece's score), so the result is the
 *   tokenizer.json Hugging Face ships for such a model.
 * Both: special ids, add_bos_token, tokenizer.chat_template.
 */
import type { NativeGgufHeader } from './binding';
import { UnsupportedModelError } from './errors';
import { GgufFields } from './ggufConfig';
import { Tokenizer } from './tokenizer';

/** GGUF token types (llama.cpp's llama_token_type). */
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;

/** Split patterns of the byte-level pre-tokenizers llama.cpp names (llama-vocab.cpp). */
const PRE_TOKENIZER_PATTERNS: Record<string, string> = {
  'llama-bpe':
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  qwen2:
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

function byteLevel(useRegex: boolean): Record<string, unknown> {
  return { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex };
}

function preTokenizer(pre: string | undefined, file: string): Record<string, unknown> {
  if (pre === undefined || pre === 'default' || pre === 'gpt-2') return byteLevel(true);
  const pattern = PRE_TOKENIZER_PATTERNS[pre];
  if (!pattern)
    throw new UnsupportedModelError(
      `GGUF metadata 'tokenizer.ggml.pre' '${pre}' is not supported (gpt-2, ${Object.keys(PRE_TOKENIZER_PATTERNS).join(', ')})`,
      file,
    );
  return {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
      byteLevel(false),
    ],
  };
}

/** tokenizer.json and tokenizer_config.json equivalent to a GGUF file's tokenizer metadata. */
export function ggufTokenizerJson(
  header: NativeGgufHeader,
  file: string,
): { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  const f: GgufFields = new GgufFields(header, file);
  const model = f.str('tokenizer.ggml.model');
  if (model === undefined) f.fail('tokenizer.ggml.model', 'is missing (the file has no tokenizer)');
  if (model !== 'gpt2' && model !== 'llama')
    throw new UnsupportedModelError(
      `GGUF metadata 'tokenizer.ggml.model' '${model}' is not supported (gpt2, llama)`,
      file,
    );
  const rawTokens = f.get('tokenizer.ggml.tokens');
  if (!Array.isArray(rawTokens) || rawTokens.some((t) => typeof t !== 'string'))
    f.fail('tokenizer.ggml.tokens', 'must be an array of strings');
  const tokens = rawTokens as string[];
  const types = f.get('tokenizer.ggml.token_type') as Int32Array | undefined;
  // Not instanceof: typed arrays from the addon may come from another realm (jest, vm).
  if (types !== undefined && !(ArrayBuffer.isView(types) && types.length === tokens.length))
    f.fail('tokenizer.ggml.token_type', `must be an int32 array with one entry per token (${tokens.length})`);
  const tokenOf = (key: string): string | undefined => {
    if (!f.has(key)) return undefined;
    const id = f.int(key, { min: 0 });
    if (id >= tokens.length) f.fail(key, `(${id}) is outside the token list (${tokens.length})`);
    return tokens[id];
  };
  const tokenizerConfig: Record<string, unknown> = {};
  const set = (field: string, v: unknown) => v !== undefined && (tokenizerConfig[field] = v);
  set('bos_token', tokenOf('tokenizer.ggml.bos_token_id'));
  set('eos_token', tokenOf('tokenizer.ggml.eos_token_id'));
  set('unk_token', tokenOf('tokenizer.ggml.unknown_token_id'));
  set('pad_token', tokenOf('tokenizer.ggml.padding_token_id'));
  // llama.cpp's defaults: BOS for SentencePiece vocabularies, none for byte-level BPE ones.
  set('add_bos_token', f.bool('tokenizer.ggml.add_bos_token') ?? model === 'llama');
  set('add_eos_token', f.bool('tokenizer.ggml.add_eos_token') ?? false);
  set('chat_template', f.str('tokenizer.chat_template'));
  if (model === 'llama') {
    // As the tokenizer_config.json of SentencePiece models (and llama.cpp) do: decode keeps every space.
    tokenizerConfig.clean_up_tokenization_spaces = false;
    return { tokenizerJson: spmTokenizerJson(f, tokens, types, tokenizerConfig), tokenizerConfig };
  }

  const merges = f.get('tokenizer.ggml.merges') as string[];
  if (!Array.isArray(merges) || merges.some((m) => typeof m !== 'string' || m.split(' ').length !== 2))
    f.fail('tokenizer.ggml.merges', "must be an array of strings 'left right'");

  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  tokens.forEach((tok, id) => {
    const type = types ? types[id]! : NORMAL;
    if (type === UNUSED) return;
    if (type === CONTROL || type === USER_DEFINED) {
      added.push({
        id,
        content: tok,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: type === CONTROL,
      });
      return;
    }
    vocab[tok] = id;
  });
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer(f.str('tokenizer.ggml.pre'), file),
    // BOS is added by Tokenizer.encode from add_bos_token (src/tokenizer.ts), not by a template.
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  return { tokenizerJson, tokenizerConfig };
}

/**
 * tokenizer.json of a SentencePiece BPE vocabulary, as transformers' LlamaConverter writes it:
 * spaces become '▁' (with one prepended unless tokenizer.ggml.add_space_prefix is false), BPE with
 * byte fallback (<0xXX> tokens) over merges derived from the scores, and the inverse decoder.
 */
function spmTokenizerJson(
  f: GgufFields,
  tokens: string[],
  types: ArrayLike<number> | undefined,
  tokenizerConfig: Record<string, unknown>,
): Record<string, unknown> {
  const scores = f.get('tokenizer.ggml.scores') as Float32Array | undefined;
  if (!(ArrayBuffer.isView(scores) && scores.length === tokens.length))
    f.fail('tokenizer.ggml.scores', `must be a float32 array with one entry per token (${tokens.length})`);
  const vocab: Record<string, number> = {};
  tokens.forEach((t, id) => {
    if (!(t in vocab)) vocab[t] = id;
  });
  const added: Record<string, unknown>[] = [];
  tokens.forEach((tok, id) => {
    const type = types ? types[id]! : NORMAL;
    if (type === CONTROL || type === USER_DEFINED || type === UNKNOWN)
      added.push({
        id,
        content: tok,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: type !== USER_DEFINED,
      });
  });
  const prefix = f.bool('tokenizer.ggml.add_space_prefix') ?? true;
  const replaceSpace = { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' };
  const decoders: Record<string, unknown>[] = [
    { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  if (prefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: prefix
      ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, replaceSpace] }
      : replaceSpace,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: (tokenizerConfig.unk_token as string | undefined) ?? null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: spmMerges(tokens, scores, vocab),
    },
  };
}

/**
 * transformers' SentencePieceExtractor.extract: for every piece, each split into two pieces of the
 * vocabulary (ordered by their ids), all ranked by the piece's score, highest first (a stable sort,
 * so ties keep the vocabulary's order).
 */
export function spmMerges(
  tokens: string[],
  scores: ArrayLike<number>,
  vocab: Record<string, number>,
): [string, string][] {
  const merges: { l: string; r: string; score: number }[] = [];
  tokens.forEach((piece, id) => {
    if (vocab[piece] !== id) return;
    const chars = Array.from(piece);
    const local: { l: string; r: string; score: number }[] = [];
    for (let i = 1; i < chars.length; i++) {
      const l = chars.slice(0, i).join('');
      const r = chars.slice(i).join('');
      if (l in vocab && r in vocab) local.push({ l, r, score: scores[id]! });
    }
    local.sort((a, b) => vocab[a.l]! - vocab[b.l]! || vocab[a.r]! - vocab[b.r]!);
    merges.push(...local);
  });
  merges.sort((a, b) => b.score - a.score);
  return merges.map((m) => [m.l, m.r]);
}

/** The tokenizer of a GGUF file. */
export function ggufTokenizer(header: NativeGgufHeader, file: string, bosTokenId: number | null): Tokenizer {
  const { tokenizerJson, tokenizerConfig } = ggufTokenizerJson(header, file);
  return Tokenizer.fromObjects(tokenizerJson, tokenizerConfig, bosTokenId, file, file);
}
