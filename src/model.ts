/**
 * loadModel and Model: a Model owns the native weights, its tokenizer and a scheduler that
 * batches the forward passes of every sequence that is waiting (so concurrent generations share
 * one pass per step). Sequences (src/sequence.ts) own the KV caches; generation streams
 * (src/generation.ts) run the decode loop.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, type NativeModel, type NativeRequest, type NativeResponse } from './binding';
import { listWeightFiles, readModelConfig, type ModelConfig } from './config';
import { AbortError, DisposedError, InvalidOptionError, ModelFileError, ModelFormatError, OutOfMemoryError, fromNative } from './errors';
import { checkInt, checkObject, validateGenerateOptions, validateLoadOptions, type GenerateOptions, type GenerateResult, type LoadOptions } from './options';
import { Tokenizer, type ChatMessage } from './tokenizer';
import type { Policy } from './policy';
import { resolveBackend } from './backend';
import { Scheduler } from './scheduler';
import { Sequence, tokenizeInput, type EvaluateOptions, type EvaluateResult, type GenerateInput } from './sequence';
import { DEFAULT_MAX_TOKENS, GenerationStream } from './generation';

/** Default context of new sequences when loadModel gets no contextSize (capped by the model's own). */
const DEFAULT_CONTEXT = 4096;

export type { GenerateInput, EvaluateOptions, EvaluateResult } from './sequence';
export { Sequence } from './sequence';
export { GenerationStream } from './generation';

/** Facts about a loaded model. */
export interface ModelInfo {
  /** config.json's architecture, e.g. LlamaForCausalLM. */
  architecture: string;
  /** Parameters in the tensors the model uses (routers and adapters included). */
  parameters: number;
  /** Bytes of weights (as stored, memory-mapped). */
  weightBytes: number;
  /** Stored dtype(s) of the weights, e.g. "BF16". */
  dtype: string;
  /** The backend running the model: 'cpu' or 'cuda'. */
  backend: string;
  /** Decoder layers. */
  numLayers: number;
  /** Hidden size. */
  hiddenSize: number;
  /** Vocabulary size. */
  vocabSize: number;
  /** Default context size of new sequences. */
  contextSize: number;
  /** KV-cache bytes per token of context (f32 K and V for every layer). */
  kvBytesPerToken: number;
  /** The safetensors files mapped (shards, then add-ons). */
  files: string[];
  /** Layers with FlexiDepth router weights (from the checkpoint or add-ons). */
  flexiDepthLayers: number[];
  /** Layers with SkipLayer routers. */
  skipRouterLayers: number[];
}

/** Loads a Hugging Face model directory (config.json, safetensors weights, tokenizer files). */
export async function loadModel(dir: string, options?: LoadOptions): Promise<Model> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidOptionError('modelDir', 'must be a non-empty path');
  const opts = validateLoadOptions(options);
  const { backend } = resolveBackend(opts.backend);
  const root = path.resolve(dir);
  if (!fs.existsSync(root)) throw new ModelFileError('the model directory does not exist', root);
  if (!fs.statSync(root).isDirectory()) throw new ModelFileError('is not a directory (expected a Hugging Face model directory)', root);
  const config = readModelConfig(root);
  const tokenizer = Tokenizer.fromDirectory(root, config.bosTokenId);
  const { files, weightMap, indexFile } = listWeightFiles(root);
  const addons = (opts.addons ?? []).map((a) => path.resolve(root, a));
  for (const a of addons) if (!fs.existsSync(a)) throw new ModelFileError('add-on file does not exist', a);
  const abortFlag = new Int32Array(1);
  const signal = opts.signal;
  if (signal?.aborted) throw new AbortError('model load was aborted', signal.reason);
  const onAbort = () => {
    abortFlag[0] = 1;
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  let nm: NativeModel;
  try {
    nm = await native().loadModel(
      { files: [...files, ...addons], config, threads: opts.threads ?? os.availableParallelism(), prefault: opts.prefault ?? true, backend },
      opts.onProgress,
      abortFlag,
    );
  } catch (e) {
    throw fromNative(e);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  try {
    const info = nm.info();
    if (weightMap && indexFile) {
      // Every tensor must be where the index says it is, and the index must list every tensor.
      const listed = new Set(Object.keys(weightMap));
      info.tensorNames.forEach((name, i) => {
        const where = info.files[info.tensorFiles[i]];
        if (addons.includes(where)) return;
        if (!listed.has(name)) throw new ModelFormatError(`tensor '${name}' in ${where} is not listed in the index`, indexFile);
        if (weightMap[name] !== where)
          throw new ModelFormatError(`the index puts tensor '${name}' in ${weightMap[name]} but it is in ${where}`, indexFile);
        listed.delete(name);
      });
      for (const name of listed)
        throw new ModelFormatError(`tensor '${name}' is listed in the index but missing from ${weightMap[name]}`, indexFile);
    }
    const contextSize = opts.contextSize ?? Math.min(config.maxPositionEmbeddings, DEFAULT_CONTEXT);
    const budget = opts.memoryLimit ?? Math.floor(os.totalmem() * 0.9) - info.weightBytes;
    return new Model(root, config, tokenizer, nm, contextSize, budget);
  } catch (e) {
    nm.dispose();
    throw e;
  }
}

/** A loaded model. Dispose it (or use `await using`) to free its memory. */
export class Model implements AsyncDisposable {
  /** The model directory. */
  readonly dir: string;
  readonly config: ModelConfig;
  readonly tokenizer: Tokenizer;
  /** Default context size of new sequences. */
  readonly contextSize: number;
  private nm: NativeModel | null;
  private readonly scheduler = new Scheduler(() => this.nm);
  private sequences = new Set<Sequence>();
  /** Bytes that the KV caches of live sequences may reach, all together. */
  private readonly kvBudget: number;

  /** @internal use {@link loadModel} */
  constructor(dir: string, config: ModelConfig, tokenizer: Tokenizer, nm: NativeModel, contextSize: number, kvBudget: number) {
    this.dir = dir;
    this.config = config;
    this.tokenizer = tokenizer;
    this.nm = nm;
    this.contextSize = contextSize;
    this.kvBudget = kvBudget;
  }

  /** KV bytes per token of context: K and V in f32 for every layer. */
  private get kvBytesPerToken(): number {
    const c = this.config;
    return 2 * 4 * c.numLayers * c.numKvHeads * c.headDim;
  }

  /** True once dispose() was called. */
  get disposed(): boolean {
    return this.nm === null;
  }

  /** Architecture, parameter count, dtype and memory. */
  get info(): ModelInfo {
    const ni = this.live().info();
    const c = this.config;
    return {
      architecture: c.architecture,
      parameters: ni.parameters,
      weightBytes: ni.weightBytes,
      dtype: ni.dtype,
      backend: ni.backend,
      numLayers: c.numLayers,
      hiddenSize: c.hiddenSize,
      vocabSize: c.vocabSize,
      contextSize: this.contextSize,
      kvBytesPerToken: this.kvBytesPerToken,
      files: ni.files,
      flexiDepthLayers: ni.flexiDepthLayers,
      skipRouterLayers: ni.skipRouterLayers,
    };
  }

  /** Text to token ids (with BOS as the tokenizer config says, unless addSpecialTokens is false). */
  tokenize(text: string, options?: { addSpecialTokens?: boolean }): number[] {
    if (typeof text !== 'string') throw new InvalidOptionError('text', 'must be a string');
    return this.tokenizer.encode(text, options?.addSpecialTokens ?? true);
  }

  /** Token ids to text. */
  detokenize(tokens: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string {
    return this.tokenizer.decode(tokens, options?.skipSpecialTokens ?? true);
  }

  /** Renders chat messages with the model's chat template. */
  applyChatTemplate(messages: ChatMessage[], options?: { addGenerationPrompt?: boolean }): string {
    return this.tokenizer.applyChatTemplate(messages, options?.addGenerationPrompt ?? true);
  }

  /**
   * A new sequence with its own KV cache. The cache grows as tokens arrive, but its full size is
   * reserved up front against the memory budget (`memoryLimit`), so a context that could not fit
   * is refused here with OutOfMemoryError instead of failing, or being killed, later.
   */
  createSequence(options?: { contextSize?: number }): Sequence {
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o)) if (k !== 'contextSize') throw new InvalidOptionError(k, 'is not a known option (known: contextSize)');
    checkInt(o.contextSize, 'contextSize', 1, 2 ** 31 - 1);
    const ctx = (o.contextSize as number | undefined) ?? this.contextSize;
    const nm = this.live();
    let reserved = 0;
    for (const s of this.sequences) reserved += s.contextSize * this.kvBytesPerToken;
    const need = ctx * this.kvBytesPerToken;
    if (reserved + need > this.kvBudget) {
      const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
      throw new OutOfMemoryError(
        `a sequence with contextSize ${ctx} needs ${gib(need)} of KV cache, but only ${gib(Math.max(0, this.kvBudget - reserved))} ` +
          `of the ${gib(this.kvBudget)} budget is left (${this.sequences.size} live sequence(s)); ` +
          'use a smaller contextSize, dispose sequences, or raise loadModel({memoryLimit})',
      );
    }
    const ns = nm.createSequence(ctx, 0);
    const s = new Sequence(this, ns, ctx);
    this.sequences.add(s);
    return s;
  }

  /** Generates a completion in a fresh sequence. */
  async generate(input: GenerateInput, options?: GenerateOptions): Promise<GenerateResult> {
    const opts = validateGenerateOptions(options);
    const { seq, ids } = this.oneShot(input, opts);
    try {
      return await seq.generate({ tokens: ids }, opts);
    } finally {
      seq.dispose();
    }
  }

  /** A fresh sequence sized for the prompt plus maxTokens (not the whole default context). */
  private oneShot(input: GenerateInput, opts: GenerateOptions): { seq: Sequence; ids: number[] } {
    this.live();
    const ids = tokenizeInput(this.tokenizer, input, true);
    const ctx = Math.max(1, Math.min(this.contextSize, ids.length + (opts.maxTokens ?? DEFAULT_MAX_TOKENS)));
    return { seq: this.createSequence({ contextSize: ctx }), ids };
  }

  /** Streams a completion token by token; `result` resolves when it ends. Breaking out of the loop stops it. */
  stream(input: GenerateInput, options?: GenerateOptions): GenerationStream {
    const opts = validateGenerateOptions(options);
    const { seq, ids } = this.oneShot(input, opts);
    return new GenerationStream(seq, { tokens: ids }, opts, true);
  }

  /** Logits (and the layers each token ran) at every position of `tokens`, in a fresh sequence. */
  async evaluate(tokens: ArrayLike<number>, options?: EvaluateOptions): Promise<EvaluateResult> {
    const seq = this.createSequence({ contextSize: Math.max(1, tokens.length) });
    try {
      return await seq.evaluate(tokens, options);
    } finally {
      seq.dispose();
    }
  }

  /**
   * Frees the model. Queued passes reject with DisposedError; a pass already running finishes
   * first; every sequence of this model is disposed.
   */
  async dispose(): Promise<void> {
    if (!this.nm) return;
    const nm = this.nm;
    this.nm = null;
    await this.scheduler.close();
    for (const s of this.sequences) s.dispose();
    nm.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /** @internal */
  live(): NativeModel {
    if (!this.nm) throw new DisposedError('the model');
    return this.nm;
  }

  /** @internal */
  forget(s: Sequence): void {
    this.sequences.delete(s);
  }

  /** @internal Queues one request; requests waiting together under the same policy run as one batch. */
  run(request: NativeRequest, policy: Policy = { type: 'none' }): Promise<NativeResponse> {
    this.live();
    return this.scheduler.run(request, policy);
  }
}

