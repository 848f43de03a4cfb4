/**
 * Text <-> token ids with the model's own tokenizer.json (via @huggingface/tokenizers) and
 * chat templates (src/chatTemplate.ts), following tokenizer_config.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as HfTokenizers from '@huggingface/tokenizers' with { 'resolution-mode': 'import' };
import { ChatTemplate, type ChatMessage } from './chatTemplate';
import { readJson } from './config';
import { InvalidOptionError, ModelFormatError } from './errors';
import { tokenIdArray } from './input';
import { charsPerTokenBound } from './tokenBound';

// The package is an ES module that also ships a CommonJS build; this package is CommonJS.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Tokenizer: HfTokenizer } = require('@huggingface/tokenizers') as typeof HfTokenizers;
type HfTokenizer = InstanceType<typeof HfTokenizer>;

export type { ChatMessage } from './chatTemplate';
export { StreamDecoder } from './streamDecoder';

/** Largest generic array-like (not an Array or typed array) decode() copies: more than any context. */
const MAX_DECODE_ARRAY_LIKE = 2 ** 24;

/** False only when nothing is at the path (a dangling symlink is something; readJson reports it). */
function lexists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return null;
}

/** A model's tokenizer. */
export class Tokenizer {
  /** The text of the begin-of-sequence token (tokenizer_config.json's bos_token), or null. */
  readonly bosToken: string | null;
  /** The text of the end-of-sequence token (tokenizer_config.json's eos_token), or null. */
  readonly eosToken: string | null;
  /** The id of the begin-of-sequence token, or null when the model has none. */
  readonly bosTokenId: number | null;
  /** tokenizer_config.json's add_bos_token, when it says. */
  readonly addBosToken: boolean | undefined;
  /** tokenizer_config.json's chat_template (Jinja), or null. */
  readonly chatTemplate: string | null;
  /** Token ids are 0..size-1 (the vocabulary and the added tokens). */
  readonly size: number;
  private readonly hf: HfTokenizer;
  /** Ids that decode() drops (special tokens, additional_special_tokens), as the HF tokenizer decides. */
  private readonly specialIds: Set<number>;
  /** Most characters of input text one token can stand for, or 0 when no such bound holds (src/tokenBound.ts). */
  private readonly charsPerToken: number;
  /** Characters normalizing a whole text may add beyond what tokenization normalizes. */
  private readonly normalizerSlack: number;
  private template?: ChatTemplate;

  private constructor(
    hf: HfTokenizer,
    config: Record<string, unknown>,
    bosTokenId: number | null,
    private readonly configFile: string,
    tokenizerJson: Record<string, unknown>,
  ) {
    this.hf = hf;
    this.bosToken = tokenText(config.bos_token);
    this.eosToken = tokenText(config.eos_token);
    this.bosTokenId = this.bosToken !== null ? (hf.token_to_id(this.bosToken) ?? bosTokenId) : bosTokenId;
    this.addBosToken = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : undefined;
    const ct = config.chat_template;
    if (typeof ct === 'string') this.chatTemplate = ct;
    else if (Array.isArray(ct)) {
      const named = ct.find((t) => t && (t as { name?: unknown }).name === 'default') ?? ct[0];
      this.chatTemplate = named && typeof named.template === 'string' ? named.template : null;
    } else this.chatTemplate = null;
    this.specialIds = new Set();
    for (const [id, tok] of hf.get_added_tokens_decoder()) if (tok.special) this.specialIds.add(id);
    const extra = Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens : [];
    for (const t of extra) {
      const id = tokenText(t) === null ? undefined : hf.token_to_id(tokenText(t)!);
      if (id !== undefined) this.specialIds.add(id);
    }
    const vocab = hf.get_vocab(true);
    let size = 0;
    for (const id of vocab.values()) size = Math.max(size, id + 1);
    this.size = size;
    const bound = charsPerTokenBound(tokenizerJson, config, vocab);
    // Added tokens are matched before normalization; the bound normalizes the whole text, so it
    // holds only if the normalizer does not lengthen their contents (a Prepend adds its one
    // character at the start of the text only, which the slack covers).
    const stable = [...hf.get_added_tokens_decoder().values()].every(
      (t) => !hf.normalizer || hf.normalizer(t.content).length <= t.content.length + bound.slack,
    );
    this.charsPerToken = stable ? bound.charsPerToken : 0;
    this.normalizerSlack = bound.slack;
  }

  /** Loads tokenizer.json and tokenizer_config.json from a model directory. */
  static fromDirectory(dir: string, bosTokenId: number | null = null): Tokenizer {
    const tjFile = path.join(dir, 'tokenizer.json');
    const tcFile = path.join(dir, 'tokenizer_config.json');
    const tj = readJson(tjFile, 'tokenizer.json');
    // tokenizer_config.json is optional: absent means no special-token settings. Present but
    // unreadable (a directory, a FIFO, a dangling link, no permission) is an error.
    const tc: unknown = lexists(tcFile) ? readJson(tcFile, 'tokenizer_config.json') : {};
    if (typeof tj !== 'object' || tj === null || Array.isArray(tj))
      throw new ModelFormatError('tokenizer.json must hold a JSON object', tjFile);
    if (typeof tc !== 'object' || tc === null || Array.isArray(tc))
      throw new ModelFormatError('tokenizer_config.json must hold a JSON object', tcFile);
    return Tokenizer.fromObjects(
      tj as Record<string, unknown>,
      tc as Record<string, unknown>,
      bosTokenId,
      tjFile,
      tcFile,
    );
  }

  /**
   * @internal A tokenizer from a tokenizer.json and a tokenizer_config.json already in memory (a
   * GGUF file's tokenizer, src/ggufTokenizer.ts). `file` and `configFile` are named by errors.
   */
  static fromObjects(
    tj: Record<string, unknown>,
    tc: Record<string, unknown>,
    bosTokenId: number | null,
    file: string,
    configFile: string,
  ): Tokenizer {
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(tj, tc);
    } catch (e) {
      throw new ModelFormatError(`tokenizer.json could not be loaded: ${(e as Error).message}`, file, e);
    }
    return new Tokenizer(hf, tc, bosTokenId, configFile, tj);
  }

  /**
   * Encodes text. With `addSpecialTokens` (default true) the tokenizer's post-processor runs and
   * BOS follows tokenizer_config.json's add_bos_token.
   */
  encode(text: string, addSpecialTokens = true): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    if (addSpecialTokens && this.bosTokenId !== null) {
      if (this.addBosToken === true && ids[0] !== this.bosTokenId) ids.unshift(this.bosTokenId);
      else if (this.addBosToken === false && ids[0] === this.bosTokenId && !text.startsWith(this.bosToken ?? '\u0000'))
        ids.shift();
    }
    return ids;
  }

  /**
   * Fewest tokens `text` can encode to, found without encoding it: a bound that lets an input
   * that cannot fit a context be refused before the (slow, synchronous) tokenization. 0 when the
   * tokenizer is of a kind for which no such bound is known.
   */
  minTokens(text: string): number {
    if (this.charsPerToken === 0) return 0;
    // Tokenization normalizes first; the bound is on the normalized text's length. For the
    // tokenizers whose normalizer can shorten text (NFC, NFKC) this costs one pass over it.
    const n = this.hf.normalizer ? this.hf.normalizer(text).length : text.length;
    return Math.ceil(Math.max(0, n - this.normalizerSlack) / this.charsPerToken);
  }

  /**
   * Decodes ids to text; special tokens are dropped unless `skipSpecialTokens` is false. The ids
   * (an array, a typed array or an array-like) must be integers in 0..size-1: anything else is an
   * InvalidOptionError on `tokens`.
   */
  decode(ids: ArrayLike<number>, skipSpecialTokens = true): string {
    if (typeof skipSpecialTokens !== 'boolean')
      throw new InvalidOptionError('skipSpecialTokens', 'must be true or false');
    const list = tokenIdArray(ids, 'tokens', this.size, MAX_DECODE_ARRAY_LIKE);
    return this.decodeIds(list, skipSpecialTokens);
  }

  /** @internal decode() of ids known to be valid (the stream decoder's hot path). */
  decodeIds(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return ''; // the HF tokenizer refuses an empty list
    return this.hf.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  /** True for the ids decode() drops by default (special tokens). */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Renders messages through the model's chat template, within its bound (src/chatTemplate.ts). */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (!Array.isArray(messages) || messages.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string'))
      throw new InvalidOptionError('messages', 'must be an array of {role: string, content: string}');
    if (typeof addGenerationPrompt !== 'boolean')
      throw new InvalidOptionError('addGenerationPrompt', 'must be true or false');
    if (!this.chatTemplate)
      throw new InvalidOptionError('messages', "this model's tokenizer_config.json has no chat_template");
    this.template ??= new ChatTemplate(this.chatTemplate, this.configFile);
    return this.template.render(messages, {
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      add_generation_prompt: addGenerationPrompt,
    });
  }
}
