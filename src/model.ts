/**
 * Model and Sequence: the user-facing objects. A Model owns the native weights and a scheduler
 * that batches the forward passes of every sequence that is waiting (so concurrent generations
 * share one pass per step); a Sequence owns one KV cache and remembers its tokens, so a chat can
 * continue where it left off.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { native, type NativeModel, type NativeRequest, type NativeResponse, type NativeSequence } from './binding';
import { listWeightFiles, readModelConfig, type ModelConfig } from './config';
import {
  AbortError,
  ContextOverflowError,
  DisposedError,
  InvalidOptionError,
  ModelFileError,
  ModelFormatError,
  OutOfMemoryError,
  fromNative,
} from './errors';
import {
  checkInt,
  checkObject,
  validateGenerateOptions,
  validateLoadOptions,
  type GenerateOptions,
  type GenerateResult,
  type LoadOptions,
  type TokenChunk,
} from './options';
import { StreamDecoder, Tokenizer, type ChatMessage } from './tokenizer';
import { validatePolicy, type Policy } from './policy';
import { resolveBackend } from './backend';
import { chooseDefaultPolicy, isDefaultModelSetup, type DefaultPolicy } from './defaultPolicy';

/** Default context of new sequences when loadModel gets no contextSize (capped by the model's own). */
const DEFAULT_CONTEXT = 4096;

/** Default token limit of a generation. */
const DEFAULT_MAX_TOKENS = 256;

/** Longest slice of input tokens fed to one forward pass. */
const PREFILL_SLICE = 512;

/** What to generate from: plain text, chat messages (rendered with the chat template), or token ids. */
export type GenerateInput = string | ChatMessage[] | { tokens: ArrayLike<number> };

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
  /** Of those, the layers whose routers are in the checkpoint's own weights (config.json's routing_layers when it has them). */
  checkpointFlexiDepthLayers: number[];
  /** The policy calls run when they name none, and why (src/defaultPolicy.ts). */
  defaultPolicy: DefaultPolicy;
  /** Layers with SkipLayer routers. */
  skipRouterLayers: number[];
}

/** Options of {@link Model.evaluate} and {@link Sequence.evaluate}. */
export interface EvaluateOptions {
  /** Which layers each token runs (default: the model's `defaultPolicy`; `{type: 'none'}` runs all). */
  policy?: Policy;
  /** Cancels between slices of 512 tokens; the promise rejects with AbortError. */
  signal?: AbortSignal;
  /**
   * Index in `tokens` where a known continuation starts, to score it as if it had been generated
   * (teacher forcing): the row at `generatedFrom + j` feeds generated token j and produces token
   * j + 1, which is what D3 counts; earlier rows are prompt rows. Default: every row is prompt.
   * Only D3 depends on it.
   */
  generatedFrom?: number;
}

/** Per-position logits from {@link Model.evaluate}. */
export interface EvaluateResult {
  /**
   * The token ids fed, one per row: the input, led by the last generated token of a previous
   * `generate()` on the same sequence when that token had not been fed yet.
   */
  tokens: number[];
  /** One row of `vocabSize` logits per fed token. */
  logits: Float32Array[];
  /** Length of each logits row. */
  vocabSize: number;
  /** Per position, per layer: 1 where the layer's full computation ran for that token. */
  executed: Uint8Array[];
  /** Per position, per layer: router weight (FlexiDepth), NaN where none. */
  routerWeights: Float32Array[];
  /**
   * Weight bytes read by the forward passes that served this call (a pass is shared with any
   * requests the scheduler batched with it): what skipping saves in memory traffic.
   */
  weightBytes: number;
}

interface Pending {
  request: NativeRequest;
  policy: Policy;
  policyKey: string;
  resolve(r: NativeResponse): void;
  reject(e: unknown): void;
}

/**
 * Token ids of an input: text (with BOS at the start of a sequence, as the tokenizer config says),
 * chat messages through the chat template (which writes its own special tokens), or ids as given.
 */
function tokenizeInput(tk: Tokenizer, input: GenerateInput, startOfSequence: boolean): number[] {
  if (typeof input === 'string') return tk.encode(input, startOfSequence);
  if (Array.isArray(input)) return tk.encode(tk.applyChatTemplate(input, true), false);
  if (input && typeof input === 'object' && 'tokens' in input) return Array.from(input.tokens);
  throw new InvalidOptionError('input', 'must be a string, an array of chat messages, or {tokens}');
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
      { files: [...files, ...addons], config, threads: opts.threads ?? native().buildInfo().usableProcessors, prefault: opts.prefault ?? true, backend },
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
    // A layer's routers are the checkpoint's own when its router_enc tensor is in a shard, not an add-on.
    const fileOf = new Map(info.tensorNames.map((name, i) => [name, info.files[info.tensorFiles[i]]]));
    const inCheckpoint = (l: number) => !addons.includes(fileOf.get(`model.layers.${l}.router.router_enc.weight`) ?? '');
    const checkpointFlexiDepthLayers = info.flexiDepthLayers.filter(inCheckpoint);
    const defaultPolicy = chooseDefaultPolicy({
      checkpointFlexiDepthLayers,
      addonFlexiDepthLayers: info.flexiDepthLayers.filter((l) => !inCheckpoint(l)),
      defaultModelSetup: isDefaultModelSetup(root, addons),
    });
    return new Model(root, config, tokenizer, nm, contextSize, budget, { defaultPolicy, checkpointFlexiDepthLayers });
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
  /** The policy calls run when they name none, and why: FlexiDepth for routers that come with the model (src/defaultPolicy.ts). */
  readonly defaultPolicy: DefaultPolicy;
  private readonly checkpointFlexiDepthLayers: number[];
  private nm: NativeModel | null;
  private queue: Pending[] = [];
  private inFlight: Promise<void> | null = null;
  private sequences = new Set<Sequence>();
  /** Bytes that the KV caches of live sequences may reach, all together. */
  private readonly kvBudget: number;

  /** @internal use {@link loadModel} */
  constructor(
    dir: string, config: ModelConfig, tokenizer: Tokenizer, nm: NativeModel, contextSize: number, kvBudget: number,
    routers: { defaultPolicy: DefaultPolicy; checkpointFlexiDepthLayers: number[] },
  ) {
    const d = routers.defaultPolicy;
    this.defaultPolicy = Object.freeze({ policy: Object.freeze({ ...d.policy }), reason: d.reason });
    this.checkpointFlexiDepthLayers = routers.checkpointFlexiDepthLayers;
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
      checkpointFlexiDepthLayers: [...this.checkpointFlexiDepthLayers],
      skipRouterLayers: ni.skipRouterLayers,
      defaultPolicy: { policy: { ...this.defaultPolicy.policy }, reason: this.defaultPolicy.reason },
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
    for (const p of this.queue.splice(0)) p.reject(new DisposedError('the model'));
    if (this.inFlight) await this.inFlight.catch(() => undefined);
    for (const s of this.sequences) s.dispose();
    nm.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /** @internal The policy a call runs: the one it names (validated), or the model's default. */
  resolvePolicy(policy: unknown): Policy {
    return policy === undefined ? { ...this.defaultPolicy.policy } : validatePolicy(policy, this.config.numLayers);
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
    return new Promise((resolve, reject) => {
      this.queue.push({ request, policy, policyKey: JSON.stringify(policy), resolve, reject });
      if (!this.inFlight) this.inFlight = this.pump();
    });
  }

  private async pump(): Promise<void> {
    // A disposed model stops at once (dispose() awaits this loop).
    while (this.nm) {
      // Yield before every batch, so that requests made in the same tick join it, and so that the
      // generations the last batch served are back in the queue (their next steps are queued from
      // promise continuations that run after this loop's): without it, generations that once fell
      // out of step (one started while another's pass ran) alternate in separate batches forever.
      await new Promise<void>((r) => setImmediate(r));
      if (!this.queue.length || !this.nm) break;
      const batch: Pending[] = [];
      const seen = new Set<NativeSequence>();
      const key = this.queue[0].policyKey;
      for (let i = 0; i < this.queue.length; ) {
        const p = this.queue[i];
        if (seen.has(p.request.sequence) || p.policyKey !== key) {
          i++;
          continue;
        }
        seen.add(p.request.sequence);
        batch.push(p);
        this.queue.splice(i, 1);
      }
      await this.runBatch(batch);
    }
    this.inFlight = null;
  }

  private async runBatch(batch: Pending[]): Promise<void> {
    const nm = this.nm!;
    try {
      const out = await nm.forward(batch.map((p) => p.request), batch[0].policy);
      batch.forEach((p, i) => p.resolve(out[i]));
    } catch (e) {
      if (batch.length === 1) batch[0].reject(fromNative(e));
      else for (const p of batch) await this.runBatch([p]); // find which request failed
    }
  }
}

/** One sequence of tokens with its own KV cache (a conversation, a document). */
export class Sequence implements AsyncDisposable {
  /** Tokens whose K/V are in the cache. */
  readonly tokens: number[] = [];
  /** Context length in tokens. */
  readonly contextSize: number;
  private ns: NativeSequence | null;
  private busy = false;
  /** A sampled token not yet fed to the model; it leads the next call's input. */
  private pendingToken: number | null = null;

  /** @internal use {@link Model.createSequence} */
  constructor(readonly model: Model, ns: NativeSequence, contextSize: number) {
    this.ns = ns;
    this.contextSize = contextSize;
  }

  get disposed(): boolean {
    return this.ns === null;
  }

  /** Frees the KV cache. */
  dispose(): void {
    if (!this.ns) return;
    this.ns.dispose();
    this.ns = null;
    this.model.forget(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  /** Forgets everything: the next input starts at position 0. */
  reset(): void {
    this.live().truncate(0);
    this.tokens.length = 0;
    this.pendingToken = null;
  }

  private live(): NativeSequence {
    if (!this.ns) throw new DisposedError('the sequence');
    this.model.live();
    return this.ns;
  }

  /** @internal converts input to ids: BOS only at the start of a sequence; chat templates render their own. */
  inputTokens(input: GenerateInput): number[] {
    const fresh = this.tokens.length === 0 && this.pendingToken === null;
    const ids = tokenizeInput(this.model.tokenizer, input, fresh);
    const vocab = this.model.config.vocabSize;
    for (const t of ids)
      if (!Number.isInteger(t) || t < 0 || t >= vocab)
        throw new InvalidOptionError('input', `token id ${t} is outside the vocabulary (0..${vocab - 1})`);
    if (this.pendingToken !== null) ids.unshift(this.pendingToken);
    if (ids.length === 0) throw new InvalidOptionError('input', 'is empty');
    return ids;
  }

  /** @internal Throws ContextOverflowError when n more tokens do not fit. */
  checkFits(n: number): void {
    const used = this.tokens.length;
    if (used + n > this.contextSize)
      throw new ContextOverflowError(
        `the prompt is ${n} tokens but only ${this.contextSize - used} of its ${this.contextSize} context positions are left (contextSize ${this.contextSize})`,
      );
  }

  /** Logits (and the layers each token ran) at every position of `tokens`, appended to this sequence. */
  async evaluate(tokens: ArrayLike<number>, options?: EvaluateOptions): Promise<EvaluateResult> {
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o))
      if (k !== 'policy' && k !== 'signal' && k !== 'generatedFrom')
        throw new InvalidOptionError(k, 'is not a known option (known: policy, signal, generatedFrom)');
    const signal = o.signal as AbortSignal | undefined;
    if (signal !== undefined && (typeof signal !== 'object' || signal === null || typeof signal.aborted !== 'boolean'))
      throw new InvalidOptionError('signal', 'must be an AbortSignal');
    const L = this.model.config.numLayers;
    const policy = this.model.resolvePolicy(o.policy);
    const ids = this.inputTokens({ tokens });
    const gf = o.generatedFrom;
    if (gf !== undefined && (typeof gf !== 'number' || !Number.isInteger(gf) || gf < 0 || gf > tokens.length))
      throw new InvalidOptionError('generatedFrom', `must be an integer in [0, ${tokens.length}] (an index in tokens)`);
    // A pending token from an earlier generate() leads `ids`; generatedFrom indexes `tokens`.
    const genStart = gf === undefined ? undefined : gf + ids.length - tokens.length;
    this.checkFits(ids.length);
    const ns = this.acquire();
    try {
      const v = this.model.config.vocabSize;
      const logits: Float32Array[] = [];
      const executed: Uint8Array[] = [];
      const routerWeights: Float32Array[] = [];
      let weightBytes = 0;
      for (let start = 0; start < ids.length; start += PREFILL_SLICE) {
        if (signal?.aborted) throw new AbortError('evaluation was aborted', signal.reason);
        const slice = ids.slice(start, start + PREFILL_SLICE);
        const genIndex = genStart === undefined ? {} : { genIndex: start - genStart + 1 };
        const r = await this.model.run({ sequence: ns, tokens: Int32Array.from(slice), logits: 'all', ...genIndex }, policy);
        this.tokens.push(...slice);
        this.pendingToken = null;
        weightBytes += r.weightBytes;
        for (let i = 0; i < slice.length; i++) {
          logits.push(r.logits!.subarray(i * v, (i + 1) * v));
          executed.push(r.executed.subarray(i * L, (i + 1) * L));
          routerWeights.push(r.weights.subarray(i * L, (i + 1) * L));
        }
      }
      return { tokens: ids, logits, vocabSize: v, executed, routerWeights, weightBytes };
    } finally {
      this.busy = false;
    }
  }

  /** Generates a continuation of this sequence. */
  async generate(input: GenerateInput, options?: GenerateOptions): Promise<GenerateResult> {
    const stream = new GenerationStream(this, input, validateGenerateOptions(options), false);
    for await (const _ of stream) {
      // drain; onToken (if any) is called by the stream
    }
    return stream.result;
  }

  /** Streams a continuation of this sequence. */
  stream(input: GenerateInput, options?: GenerateOptions): GenerationStream {
    return new GenerationStream(this, input, validateGenerateOptions(options), false);
  }

  /** @internal */
  acquire(): NativeSequence {
    const ns = this.live();
    if (this.busy) throw new InvalidOptionError('sequence', 'is already generating; use another sequence for concurrent work');
    this.busy = true;
    return ns;
  }

  /** @internal */
  release(): void {
    this.busy = false;
  }

  /** @internal */
  commit(tokens: number[], pending: number | null): void {
    this.tokens.push(...tokens);
    this.pendingToken = pending;
  }
}

/**
 * A running generation: iterate it for tokens, await `result` for the outcome. Leaving the loop
 * early stops generation (finishReason 'abort').
 */
export class GenerationStream implements AsyncIterable<TokenChunk> {
  /** Resolves with the outcome when generation ends. */
  readonly result: Promise<GenerateResult>;
  private resolveResult!: (r: GenerateResult) => void;
  private rejectResult!: (e: unknown) => void;
  private started = false;

  /** @internal */
  constructor(
    private readonly seq: Sequence,
    private readonly input: GenerateInput,
    private readonly opts: GenerateOptions,
    private readonly ownsSequence: boolean,
  ) {
    this.result = new Promise((res, rej) => {
      this.resolveResult = res;
      this.rejectResult = rej;
    });
    // An unobserved rejection here is reported through the iterator instead.
    this.result.catch(() => undefined);
  }

  [Symbol.asyncIterator](): AsyncIterator<TokenChunk> {
    if (this.started) throw new InvalidOptionError('stream', 'can be iterated only once');
    this.started = true;
    return this.run();
  }

  private async *run(): AsyncGenerator<TokenChunk> {
    const { seq, opts } = this;
    const model = seq.model;
    const maxTokens = opts.maxTokens ?? DEFAULT_MAX_TOKENS;
    const stops = opts.stop ?? [];
    const eos = new Set(opts.stopOnEos === false ? [] : model.config.eosTokenIds);
    const sampling = { temperature: opts.temperature ?? 0, topK: opts.topK ?? 0, topP: opts.topP ?? 1 };
    const L = model.config.numLayers;
    const policy = model.resolvePolicy(opts.policy);
    const layerCounts = new Array<number>(L).fill(0);
    let depthTokens = 0;
    let finishReason: GenerateResult['finishReason'] = 'length';
    const generated: number[] = [];
    const fed: number[] = [];
    let pending: number | null = null;
    let ns: NativeSequence | null = null;
    let promptTokens = 0;
    let prefillMs = 0;
    let decodeStart = 0;
    let text = '';
    let emitted = 0;
    let completed = false;
    const waiting: TokenChunk[] = [];
    let decoder: StreamDecoder;
    // Hands out the held tokens; the text not yet given out goes with the last of them.
    const onToken = opts.onToken;
    function* flush(): Generator<TokenChunk> {
      if (waiting.length === 0) return;
      waiting[waiting.length - 1].text = text.slice(emitted);
      emitted = text.length;
      for (const c of waiting.splice(0)) {
        onToken?.(c);
        yield c;
      }
    }
    try {
      const ids = seq.inputTokens(this.input);
      promptTokens = ids.length;
      seq.checkFits(ids.length);
      ns = seq.acquire();
      ns.setSeed(opts.seed ?? randomInt(0, 2 ** 47));
      decoder = new StreamDecoder(model.tokenizer);
      const abortCheck = () => {
        if (opts.signal?.aborted) throw new AbortError('generation was aborted', opts.signal.reason);
      };
      abortCheck();
      const t0 = performance.now();
      // A long prompt goes in slices: an abort takes effect between them, and other sequences'
      // decode steps are not held up behind the whole prefill.
      let input = ids;
      while (input.length > PREFILL_SLICE) {
        const slice = input.slice(0, PREFILL_SLICE);
        await model.run({ sequence: ns, tokens: Int32Array.from(slice), logits: 'none' }, policy);
        fed.push(...slice);
        input = input.slice(PREFILL_SLICE);
        abortCheck();
      }
      for (let i = 0; i < maxTokens; i++) {
        // The pass producing generated token i; D3 decays its depth with i (the prompt pass is 0).
        const r = await model.run(
          { sequence: ns, tokens: Int32Array.from(input), logits: 'none', sample: sampling, ...(i > 0 ? { genIndex: i } : {}) },
          policy,
        );
        fed.push(...input);
        const token = r.token!;
        pending = token;
        if (i === 0) {
          prefillMs = performance.now() - t0;
          decodeStart = performance.now();
        }
        generated.push(token);
        let layers = 0;
        for (let l = 0; l < L; l++) {
          layerCounts[l] += r.executed[l];
          layers += r.executed[l];
        }
        depthTokens++;
        if (eos.has(token)) {
          finishReason = 'eos';
          break;
        }
        text += decoder.push(token);
        waiting.push({ token, text: '', index: i, layers, executed: r.executed, routerWeights: r.weights });
        // Text that may be the start of a stop string is held back, together with its tokens.
        let hit = -1;
        for (const s of stops) {
          const at = text.indexOf(s, Math.max(0, emitted - s.length));
          if (at >= 0 && (hit < 0 || at < hit)) hit = at;
        }
        if (hit >= 0) {
          text = text.slice(0, hit);
          finishReason = 'stop';
          break;
        }
        let safe = text.length;
        for (const s of stops)
          for (let k = Math.min(s.length - 1, text.length); k > 0; k--)
            if (text.endsWith(s.slice(0, k))) {
              safe = Math.min(safe, text.length - k);
              break;
            }
        if (safe === text.length && !decoder.holding) yield* flush();
        abortCheck();
        if (seq.tokens.length + fed.length + 1 > seq.contextSize) {
          finishReason = 'context';
          break;
        }
        input = [token];
      }
      if (finishReason !== 'stop') text += decoder.finish();
      yield* flush();
      completed = true;
    } catch (e) {
      if (e instanceof AbortError && opts.stopOnAbort) {
        finishReason = 'abort';
        completed = true;
      } else {
        this.rejectResult(e);
        throw e;
      }
    } finally {
      if (!completed && ns) finishReason = 'abort'; // the consumer left the loop
      if (ns) {
        seq.commit(fed, pending);
        seq.release();
      }
      if (this.ownsSequence) seq.dispose();
      const end = performance.now();
      const decodeMs = generated.length > 1 ? end - decodeStart : 0;
      this.resolveResult({
        text,
        tokens: generated,
        finishReason,
        usage: { promptTokens, completionTokens: generated.length },
        depth: {
          layerCounts,
          meanLayers: depthTokens ? layerCounts.reduce((a, b) => a + b, 0) / depthTokens : 0,
          tokens: depthTokens,
        },
        timings: {
          prefillMs,
          decodeMs,
          decodeTokensPerSecond: decodeMs > 0 ? ((generated.length - 1) * 1000) / decodeMs : 0,
          prefillTokensPerSecond: prefillMs > 0 ? (promptTokens * 1000) / prefillMs : 0,
        },
      });
    }
  }
}
