/**
 * A GGUF file's tokenizer (tokenizer.ggml.*) as the tokenizer.json and tokenizer_config.json that
 * the Hugging Face tokenizers library (src/tokenizer.ts) loads, built in memory. Byte-level BPE
 * (tokenizer.ggml.model `gpt2`): tokens, merges, token types (control tokens become special added
 * tokens, user-defined ones plain added tokens, unused ones are left out), the pre-tokenizer named
 * by tokenizer.ggml.pre, special ids, add_bos_token, and tokenizer.chat_template.
 */
import type { NativeGgufHeader } from './binding';
import { UnsupportedModelError } from './errors';
import { GgufFields } from './ggufConfig';
import { Tokenizer } from './tokenizer';

/** GGUF token types (llama.cpp's llama_token_type). */
const NORMAL = 1;
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;

/** Split patterns of the byte-level pre-tokenizers llama.cpp names (llama-vocab.cpp). */
const PRE_TOKENIZER_PATTERNS: Record<string, string> = {
  'llama-bpe': "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  qwen2: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
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
    pretokenizers: [{ type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false }, byteLevel(false)],
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
  if (model !== 'gpt2')
    throw new UnsupportedModelError(`GGUF metadata 'tokenizer.ggml.model' '${model}' is not supported (gpt2)`, file);
  const rawTokens = header.metadata['tokenizer.ggml.tokens'];
  if (!Array.isArray(rawTokens) || rawTokens.some((t) => typeof t !== 'string'))
    f.fail('tokenizer.ggml.tokens', 'must be an array of strings');
  const tokens = rawTokens as string[];
  const types = header.metadata['tokenizer.ggml.token_type'] as Int32Array | undefined;
  // Not instanceof: typed arrays from the addon may come from another realm (jest, vm).
  if (types !== undefined && !(ArrayBuffer.isView(types) && types.length === tokens.length))
    f.fail('tokenizer.ggml.token_type', `must be an int32 array with one entry per token (${tokens.length})`);
  const merges = header.metadata['tokenizer.ggml.merges'] as string[];
  if (!Array.isArray(merges) || merges.some((m) => typeof m !== 'string' || m.split(' ').length !== 2))
    f.fail('tokenizer.ggml.merges', "must be an array of strings 'left right'");

  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  tokens.forEach((tok, id) => {
    const type = types ? types[id]! : NORMAL;
    if (type === UNUSED) return;
    if (type === CONTROL || type === USER_DEFINED) {
      added.push({ id, content: tok, single_word: false, lstrip: false, rstrip: false, normalized: false, special: type === CONTROL });
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
  // llama.cpp's default for byte-level BPE vocabularies is no BOS unless the file says so.
  set('add_bos_token', f.bool('tokenizer.ggml.add_bos_token') ?? false);
  set('chat_template', f.str('tokenizer.chat_template'));
  return { tokenizerJson, tokenizerConfig };
}

/** The tokenizer of a GGUF file. */
export function ggufTokenizer(header: NativeGgufHeader, file: string, bosTokenId: number | null): Tokenizer {
  const { tokenizerJson, tokenizerConfig } = ggufTokenizerJson(header, file);
  return Tokenizer.fromObjects(tokenizerJson, tokenizerConfig, bosTokenId, file, file);
}
