/**
 * ChatSession: a conversation on one Sequence, as node-llama-cpp's LlamaChatSession keeps one.
 * It holds the history (system, user and assistant messages) and, each turn, renders the whole
 * conversation with the model's chat template and feeds only the tokens that differ from what the
 * sequence's cache holds: the common prefix is kept, the rest is forgotten and re-fed. So the
 * cache always holds exactly the tokens of the conversation rendered at once: one begin-of-text,
 * a template's default system prompt once, and a reply that was cut off (maxTokens, a stop string,
 * an abort) closed the way the template closes an assistant message.
 */
import { BusyError, InvalidOptionError } from './errors';
import type { ChatMessage } from './chatTemplate';
import type { GenerateOptions, GenerateResult } from './options';
import { validateGenerateOptions } from './options';
import type { Sequence } from './sequence';
import { GenerationStream } from './generation';
import { tokenizeInput } from './input';

/** Options of {@link ChatSession}. */
export interface ChatSessionOptions {
  /** The sequence whose KV cache holds the conversation (the session does not dispose it). */
  sequence: Sequence;
  /** A system message that leads the history (default: none; a template may add its own). */
  systemPrompt?: string | undefined;
}

function checkMessages(messages: unknown, name: string): ChatMessage[] {
  if (!Array.isArray(messages)) throw new InvalidOptionError(name, 'must be an array of {role, content} messages');
  return messages.map((m: unknown, i) => {
    const o = m as { role?: unknown; content?: unknown } | null;
    if (
      typeof o !== 'object' ||
      o === null ||
      typeof o.role !== 'string' ||
      o.role === '' ||
      typeof o.content !== 'string'
    )
      throw new InvalidOptionError(`${name}[${i}]`, 'must be {role: string, content: string}');
    return { role: o.role, content: o.content };
  });
}

/** A conversation that keeps its history and re-uses the cache of the turns before. */
export class ChatSession {
  /** The sequence holding the conversation's KV cache. */
  readonly sequence: Sequence;
  private history: ChatMessage[];
  private busy = false;

  constructor(options: ChatSessionOptions) {
    if (typeof options !== 'object' || options === null)
      throw new InvalidOptionError('options', 'must be {sequence, systemPrompt?}');
    for (const k of Object.keys(options))
      if (k !== 'sequence' && k !== 'systemPrompt')
        throw new InvalidOptionError(k, 'is not a known option (known: sequence, systemPrompt)');
    const seq = options.sequence as unknown;
    if (typeof seq !== 'object' || seq === null || typeof (seq as Sequence).heldTokens !== 'function')
      throw new InvalidOptionError('sequence', 'must be a Sequence (model.createSequence())');
    if (options.systemPrompt !== undefined && typeof options.systemPrompt !== 'string')
      throw new InvalidOptionError('systemPrompt', 'must be a string');
    this.sequence = seq as Sequence;
    this.history = options.systemPrompt !== undefined ? [{ role: 'system', content: options.systemPrompt }] : [];
  }

  /** A copy of the conversation so far: the system prompt, then user and assistant messages. */
  getHistory(): ChatMessage[] {
    return this.history.map((m) => ({ ...m }));
  }

  /**
   * Replaces the conversation (to trim it, edit it, or restore a saved one). The cache is not
   * touched here: the next turn keeps what still matches and re-feeds the rest.
   */
  setHistory(messages: ChatMessage[]): void {
    if (this.busy) throw new BusyError('the session is answering: set its history once that turn has ended');
    this.history = checkMessages(messages, 'messages');
  }

  /** Sends a user message and resolves with the reply (also added to the history). */
  async prompt(text: string, options?: GenerateOptions): Promise<GenerateResult> {
    const stream = this.stream(text, options);
    for await (const _ of stream) {
      // drain; onToken (if any) is called by the stream
    }
    return stream.result;
  }

  /**
   * Sends a user message and streams the reply. When the stream ends with a result (read to the
   * end, or stopped: finishReason 'abort' keeps what was generated), the user message and the
   * reply join the history; when it fails, the history stays as it was. One turn at a time
   * (BusyError). Bad options throw here; errors about the conversation (a template that refuses
   * it, a conversation longer than the context) come from iterating the stream.
   */
  stream(text: string, options?: GenerateOptions): GenerationStream {
    if (typeof text !== 'string') throw new InvalidOptionError('text', 'must be a string');
    const opts = validateGenerateOptions(options);
    if (this.busy) throw new BusyError('the session is already answering: one turn at a time');
    const seq = this.sequence;
    const messages: ChatMessage[] = [...this.history, { role: 'user', content: text }];
    let stream: GenerationStream;
    try {
      const input = this.feedFor(messages);
      stream = seq.stream({ tokens: input }, opts);
    } catch (e) {
      return GenerationStream.failed(e);
    }
    this.busy = true;
    stream.result.then(
      (r) => {
        this.busy = false;
        this.history = [...messages, { role: 'assistant', content: r.text }];
      },
      () => {
        this.busy = false;
      },
    );
    return stream;
  }

  /**
   * The conversation rendered with the generation prompt, as token ids; the cache is rewound to
   * the longest prefix it shares with them, and the ids past it are returned (at least one: the
   * last position's logits pick the first token of the reply).
   */
  private feedFor(messages: ChatMessage[]): number[] {
    const seq = this.sequence;
    const model = seq.model;
    const target = tokenizeInput(
      model.tokenizer,
      messages,
      true,
      model.config.vocabSize,
      seq.contextSize,
      seq.contextSize,
    );
    if (target.length === 0) throw new InvalidOptionError('messages', 'the chat template rendered them as no tokens');
    const held = seq.heldTokens();
    let common = 0;
    while (common < held.length && common < target.length && held[common] === target[common]) common++;
    // Everything is cached already: step back one so the last token is fed again.
    if (common === target.length) common--;
    seq.rewind(common);
    // A sampled token not fed yet stays when it matches (the sequence feeds it first).
    return target.slice(common);
  }
}
