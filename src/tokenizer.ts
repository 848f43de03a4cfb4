/**
 * Text <-> token ids with the model's own tokenizer.json (via @huggingface/tokenizers) and
 * chat templates rendered with @huggingface/jinja, following tokenizer_config.json.
 */
import * as path from 'node:path';
import type * as HfTokenizers from '@huggingface/tokenizers' with { 'resolution-mode': 'import' };
import type * as HfJinja from '@huggingface/jinja' with { 'resolution-mode': 'import' };
import { readJson } from './config';
import { InvalidOptionError, ModelFormatError } from './errors';

// Both packages are ES modules that also ship CommonJS builds; this package is CommonJS.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Tokenizer: HfTokenizer } = require('@huggingface/tokenizers') as typeof HfTokenizers;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Template } = require('@huggingface/jinja') as typeof HfJinja;
type HfTokenizer = InstanceType<typeof HfTokenizer>;
type Template = InstanceType<typeof Template>;

/** One chat message. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return null;
}

/** A model's tokenizer. */
export class Tokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly bosTokenId: number | null;
  /** tokenizer_config.json's add_bos_token, when it says. */
  readonly addBosToken: boolean | undefined;
  readonly chatTemplate: string | null;
  private readonly hf: HfTokenizer;
  private readonly specialIds: Set<number>;
  private template?: Template;

  private constructor(hf: HfTokenizer, config: Record<string, unknown>, bosTokenId: number | null) {
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
  }

  /** Loads tokenizer.json and tokenizer_config.json from a model directory. */
  static fromDirectory(dir: string, bosTokenId: number | null = null): Tokenizer {
    const tjFile = path.join(dir, 'tokenizer.json');
    const tcFile = path.join(dir, 'tokenizer_config.json');
    const tj = readJson(tjFile, 'tokenizer.json');
    let tc: unknown = {};
    try {
      tc = readJson(tcFile, 'tokenizer_config.json');
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_DEPTHGATE_MODEL_IO') throw e;
    }
    if (typeof tj !== 'object' || tj === null || Array.isArray(tj))
      throw new ModelFormatError('tokenizer.json must hold a JSON object', tjFile);
    if (typeof tc !== 'object' || tc === null || Array.isArray(tc))
      throw new ModelFormatError('tokenizer_config.json must hold a JSON object', tcFile);
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(tj, tc);
    } catch (e) {
      throw new ModelFormatError(`tokenizer.json could not be loaded: ${(e as Error).message}`, tjFile, e);
    }
    return new Tokenizer(hf, tc as Record<string, unknown>, bosTokenId);
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

  /** Decodes ids to text; special tokens are dropped unless `skipSpecialTokens` is false. */
  decode(ids: ArrayLike<number>, skipSpecialTokens = true): string {
    if (ids.length === 0) return ''; // the HF tokenizer refuses an empty list
    return this.hf.decode(Array.from(ids), { skip_special_tokens: skipSpecialTokens });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Renders messages through the model's chat template. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    if (!Array.isArray(messages) || messages.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string'))
      throw new InvalidOptionError('messages', 'must be an array of {role: string, content: string}');
    if (!this.chatTemplate)
      throw new InvalidOptionError('messages', "this model's tokenizer_config.json has no chat_template");
    this.template ??= new Template(this.chatTemplate);
    return this.template.render({
      messages,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      add_generation_prompt: addGenerationPrompt,
    });
  }
}

/**
 * Turns a growing list of generated ids into text deltas in constant work per token: it decodes
 * a short window (the ids since the last emitted text, plus the few before them as context) and
 * emits what the window adds to its own prefix. Decoding the context with the window keeps word
 * joins and leading spaces right; text ending in an incomplete UTF-8 sequence (U+FFFD) is held
 * back until the character is complete.
 */
export class StreamDecoder {
  private ids: number[] = [];
  private prefixOffset = 0; // start of the context window
  private readOffset = 0; // ids before this are already emitted
  private emitted = '';
  /** True while the last token ended inside a multi-byte character. */
  holding = false;
  constructor(private readonly tokenizer: Tokenizer) {}

  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const text = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    this.holding = text.endsWith('\uFFFD');
    if (this.holding || text.length <= prefix.length) return '';
    const delta = text.slice(prefix.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.emitted += delta;
    return delta;
  }

  /** The text still held back (an incomplete character at the very end), once generation is over. */
  finish(): string {
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const text = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    const delta = text.length > prefix.length ? text.slice(prefix.length) : '';
    this.prefixOffset = this.readOffset = this.ids.length;
    this.emitted += delta;
    this.holding = false;
    return delta;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.emitted;
  }
}
