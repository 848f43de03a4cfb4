/**
 * loadModel and Model: a Model owns the native weights, its tokenizer and a scheduler that
 * batches the forward passes of every sequence that is waiting (so concurrent generations share
 * one pass per step). Sequences (src/sequence.ts) own the KV caches; generation streams
 * (src/generation.ts) run the decode loop.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, type NativeModel, type NativeRequest, type NativeResponse } from './binding';
import { listWeightFiles, readModelConfig, type ModelConfig } from './config';
import { isGgufPath, openGgufModel } from './ggufModel';
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
import { readGenerationDefaults, type GenerationDefaults } from './sampling';
import {
  checkInt,
  checkObject,
  validateGenerateOptions,
  validateLoadOptions,
  type GenerateOptions,
  type GenerateResult,
  type LoadOptions,
  type WeightFormatOption,
} from './options';
import { Tokenizer, type ChatMessage } from './tokenizer';
import { fullDepthOf, validatePolicy, type Policy } from './policy';
import { resolveBackend } from './backend';
import { Scheduler } from './scheduler';
import { Sequence, type EvaluateOptions, type EvaluateResult } from './sequence';
import { DEFAULT_MAX_TOKENS, GenerationStream } from './generation';
import { promptTooLong, tokenIdArray, tokenizeInput, type GenerateInput } from './input';
import { defaultMemoryBudget, formatBytes } from './memory';
import { statRegularFile } from './modelFiles';
import { chooseDefaultPolicy, isDefaultModelSetup, type DefaultPolicy } from './defaultPolicy';

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
  /** Bytes of the weights the model computes with: as stored (memory-mapped), with quantized copies in place of the matrices they replace. */
  weightBytes: number;
  /** Dtype(s) of the weights, e.g. "BF16", or "Q8_0 (from BF16)" when quantized on load. */
  dtype: string;
  /** LoadOptions.weights: 'stored', or the block format the weights were quantized to on load. */
  weights: WeightFormatOption;
  /** Milliseconds the quantization on load took (0 for 'stored'). */
  quantizeMs: number;
  /**
   * Q8_0 matrices the CPU backend repacked at load into its own layout (16 blocks interleaved, so
   * its integer kernel reads them with aligned loads). Only the AVX-512 VNNI kernels use that
   * layout, so this is 0 elsewhere, on CUDA, and with DEPTHGATE_CPU_REPACK=0. The bytes each copy
   * replaces are given back; `weightBytes` counts the copies.
   */
  repackedMatrices: number;
  /**
   * Matrices (projections and the LM head) the CPU backend copied as they are at load into memory
   * advised for transparent huge pages, so that decode streams them with 2 MB pages instead of
   * 4 KB ones. Only when the kernel offers huge pages (`/sys/kernel/mm/transparent_hugepage/enabled`
   * is `always` or `madvise`) and DEPTHGATE_CPU_HUGEPAGES is not `0`; 0 on CUDA. The copies (and the
   * repacked Q8_0) are made only when they fit in the memory still available less 1 GiB, or in
   * DEPTHGATE_CPU_COPY_LIMIT bytes: a model that fits only as mapped pages stays mapped. The bytes each
   * copy replaces are given back (mapped file pages are dropped from the process; the page cache keeps
   * them), and `weightBytes` counts the copies.
   */
  placedMatrices: number;
  /** Whether the CPU backend's copies (repacked or placed) live in memory advised for huge pages. */
  hugePages: boolean;
  /** Milliseconds the CPU backend's copies took at load (0 when none was made). */
  cpuLayoutMs: number;
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
  /** The KV cache's dtype (LoadOptions.kvCacheType). */
  kvCacheType: 'f32' | 'f16' | 'bf16';
  /** KV-cache bytes per token of context: K and V for every layer, in the cache dtype. */
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
  /** The generation defaults taken from generation_config.json (LoadOptions.generationConfig). */
  generationDefaults: GenerationDefaults;
}

/** Loads a Hugging Face model directory (config.json, safetensors weights, tokenizer files) or a GGUF file (`.gguf`). */
export async function loadModel(dir: string, options?: LoadOptions): Promise<Model> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidOptionError('modelDir', 'must be a non-empty path');
  const opts = validateLoadOptions(options);
  const { backend } = resolveBackend(opts.backend);
  const root = path.resolve(dir);
  const gguf = isGgufPath(root);
  if (!fs.existsSync(root))
    throw new ModelFileError(gguf ? 'the GGUF file does not exist' : 'the model directory does not exist', root);
  if (!gguf && !fs.statSync(root).isDirectory())
    throw new ModelFileError('is not a directory (expected a Hugging Face model directory or a .gguf file)', root);
  const source = gguf ? openGgufModel(root) : undefined;
  const config = source?.config ?? readModelConfig(root);
  if (opts.contextSize !== undefined) checkContextSize(opts.contextSize, config);
  // A GGUF file carries no generation_config.json: its sampling defaults are none.
  const generationDefaults: GenerationDefaults =
    opts.generationConfig === false || gguf ? { file: null, options: {} } : readGenerationDefaults(root);
  const tokenizer = source?.tokenizer ?? Tokenizer.fromDirectory(root, config.bosTokenId);
  const { files, weightMap, indexFile }: ReturnType<typeof listWeightFiles> = source ?? listWeightFiles(root);
  // A relative add-on path is taken from the working directory, as every path in Node (and the CLI's --addon).
  const addons = (opts.addons ?? []).map((a) => path.resolve(a));
  // Only regular files are opened (natively too, without blocking): a FIFO or a device is refused here.
  for (const f of files) statRegularFile(f, 'weight file');
  for (const a of addons) statRegularFile(a, 'add-on file');
  const abortFlag = new Int32Array(1);
  const signal = opts.signal;
  if (signal?.aborted) throw new AbortError('model load was aborted', signal.reason);
  const onAbort = () => {
    abortFlag[0] = 1;
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  // A throwing onProgress stops the load, which then rejects with that error (as onToken does).
  let progressError: { error: unknown } | undefined;
  const userProgress = opts.onProgress;
  const onProgress =
    userProgress &&
    ((fraction: number) => {
      if (progressError) return;
      try {
        userProgress(fraction);
      } catch (error) {
        progressError = { error };
        abortFlag[0] = 1;
      }
    });
  let nm: NativeModel;
  try {
    nm = await native().loadModel(
      {
        files: [...files, ...addons],
        config,
        threads: opts.threads ?? native().buildInfo().usableProcessors,
        prefault: opts.prefault ?? true,
        backend,
        kvCacheType: opts.kvCacheType ?? 'bf16',
        weights: opts.weights ?? 'stored',
      },
      onProgress,
      abortFlag,
    );
  } catch (e) {
    if (progressError) throw progressError.error;
    throw fromNative(e);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  if (progressError) {
    nm.dispose();
    throw progressError.error;
  }
  try {
    const info = nm.info();
    // The file holding tensor i (the addon reports one file index per tensor name).
    const fileOfTensor = (i: number): string => info.files[info.tensorFiles[i] ?? -1] ?? '';
    if (weightMap && indexFile) {
      // Every tensor must be where the index says it is, and the index must list every tensor.
      const listed = new Set(Object.keys(weightMap));
      info.tensorNames.forEach((name, i) => {
        const where = fileOfTensor(i);
        if (addons.includes(where)) return;
        if (!listed.has(name))
          throw new ModelFormatError(`tensor '${name}' in ${where} is not listed in the index`, indexFile);
        if (weightMap[name] !== where)
          throw new ModelFormatError(
            `the index puts tensor '${name}' in ${weightMap[name]} but it is in ${where}`,
            indexFile,
          );
        listed.delete(name);
      });
      for (const name of listed)
        throw new ModelFormatError(
          `tensor '${name}' is listed in the index but missing from ${weightMap[name]}`,
          indexFile,
        );
    }
    const contextSize = opts.contextSize ?? Math.min(config.maxPositionEmbeddings, DEFAULT_CONTEXT);
    const budget = opts.memoryLimit ?? defaultMemoryBudget(info.weightBytes);
    // A layer's routers are the checkpoint's own when its router_enc tensor is in a shard, not an add-on.
    const fileOf = new Map(info.tensorNames.map((name, i) => [name, fileOfTensor(i)]));
    const inCheckpoint = (l: number) =>
      !addons.includes(fileOf.get(`model.layers.${l}.router.router_enc.weight`) ?? '');
    const checkpointFlexiDepthLayers = info.flexiDepthLayers.filter(inCheckpoint);
    const defaultPolicy = chooseDefaultPolicy({
      checkpointFlexiDepthLayers,
      addonFlexiDepthLayers: info.flexiDepthLayers.filter((l) => !inCheckpoint(l)),
      defaultModelSetup: isDefaultModelSetup(root, addons),
    });
    return new Model(
      root,
      config,
      tokenizer,
      nm,
      contextSize,
      budget,
      { defaultPolicy, checkpointFlexiDepthLayers },
      generationDefaults,
    );
  } catch (e) {
    nm.dispose();
    throw e;
  }
}

/**
 * A context longer than the positions the model was trained for (config.json's
 * max_position_embeddings) is refused: its rotary positions past them mean nothing to the model.
 */
function checkContextSize(contextSize: number, config: ModelConfig): void {
  if (contextSize > config.maxPositionEmbeddings)
    throw new InvalidOptionError(
      'contextSize',
      `is ${contextSize}, more than the model's max_position_embeddings (${config.maxPositionEmbeddings}, config.json): ` +
        `use at most ${config.maxPositionEmbeddings}`,
    );
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
  /** @internal The sampling defaults from generation_config.json (see {@link ModelInfo.generationDefaults}). */
  readonly generationDefaults: GenerationDefaults;
  private nm: NativeModel | null;
  private readonly scheduler = new Scheduler(() => this.nm);
  private sequences = new Set<Sequence>();
  /** Bytes that the KV caches of live sequences and the logits of running evaluate() calls may reach, all together. */
  private readonly kvBudget: number;
  /** Bytes of logits reserved by evaluate() calls in progress. */
  private logitsReserved = 0;
  /** The layers with router weights, from the native model's info (read once). */
  private routerLayers?: { flexiDepthLayers: number[]; skipRouterLayers: number[] };

  /** @internal use {@link loadModel} */
  constructor(
    dir: string,
    config: ModelConfig,
    tokenizer: Tokenizer,
    nm: NativeModel,
    contextSize: number,
    kvBudget: number,
    routers: { defaultPolicy: DefaultPolicy; checkpointFlexiDepthLayers: number[] },
    generationDefaults: GenerationDefaults = { file: null, options: {} },
  ) {
    this.generationDefaults = Object.freeze({
      file: generationDefaults.file,
      options: Object.freeze({ ...generationDefaults.options }),
    });
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

  /** KV bytes per token of context: K and V for every layer, in the cache dtype. */
  private get kvBytesPerToken(): number {
    this.kvBytes ??= this.live().info().kvBytesPerToken;
    return this.kvBytes;
  }
  private kvBytes: number | undefined;

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
      weights: ni.weights,
      quantizeMs: ni.quantizeMs,
      repackedMatrices: ni.repackedMatrices,
      placedMatrices: ni.placedMatrices,
      hugePages: ni.hugePages,
      cpuLayoutMs: ni.cpuLayoutMs,
      backend: ni.backend,
      numLayers: c.numLayers,
      hiddenSize: c.hiddenSize,
      vocabSize: c.vocabSize,
      contextSize: this.contextSize,
      kvCacheType: ni.kvCacheType,
      kvBytesPerToken: this.kvBytesPerToken,
      files: ni.files,
      flexiDepthLayers: ni.flexiDepthLayers,
      checkpointFlexiDepthLayers: [...this.checkpointFlexiDepthLayers],
      skipRouterLayers: ni.skipRouterLayers,
      defaultPolicy: { policy: { ...this.defaultPolicy.policy }, reason: this.defaultPolicy.reason },
      generationDefaults: { file: this.generationDefaults.file, options: { ...this.generationDefaults.options } },
    };
  }

  /** Text to token ids (with BOS as the tokenizer config says, unless addSpecialTokens is false). */
  tokenize(text: string, options?: { addSpecialTokens?: boolean | undefined }): number[] {
    if (typeof text !== 'string') throw new InvalidOptionError('text', 'must be a string');
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o))
      if (k !== 'addSpecialTokens') throw new InvalidOptionError(k, 'is not a known option (known: addSpecialTokens)');
    if (o.addSpecialTokens !== undefined && typeof o.addSpecialTokens !== 'boolean')
      throw new InvalidOptionError('addSpecialTokens', 'must be true or false');
    return this.tokenizer.encode(text, (o.addSpecialTokens as boolean | undefined) ?? true);
  }

  /** Token ids to text. Ids must be integers in the vocabulary (InvalidOptionError 'tokens' otherwise). */
  detokenize(tokens: ArrayLike<number>, options?: { skipSpecialTokens?: boolean | undefined }): string {
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o))
      if (k !== 'skipSpecialTokens')
        throw new InvalidOptionError(k, 'is not a known option (known: skipSpecialTokens)');
    return this.tokenizer.decode(tokens, (o.skipSpecialTokens as boolean | undefined) ?? true);
  }

  /** Renders chat messages with the model's chat template. */
  applyChatTemplate(messages: ChatMessage[], options?: { addGenerationPrompt?: boolean | undefined }): string {
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o))
      if (k !== 'addGenerationPrompt')
        throw new InvalidOptionError(k, 'is not a known option (known: addGenerationPrompt)');
    return this.tokenizer.applyChatTemplate(messages, (o.addGenerationPrompt as boolean | undefined) ?? true);
  }

  /**
   * A new sequence with its own KV cache. The cache grows as tokens arrive, but its full size is
   * reserved up front against the memory budget (`memoryLimit`), so a context that could not fit
   * is refused here with OutOfMemoryError instead of failing, or being killed, later.
   */
  createSequence(options?: { contextSize?: number | undefined }): Sequence {
    const o = checkObject(options, 'options');
    for (const k of Object.keys(o))
      if (k !== 'contextSize') throw new InvalidOptionError(k, 'is not a known option (known: contextSize)');
    checkInt(o.contextSize, 'contextSize', 1, 2 ** 31 - 1);
    const ctx = (o.contextSize as number | undefined) ?? this.contextSize;
    checkContextSize(ctx, this.config);
    const nm = this.live();
    const need = ctx * this.kvBytesPerToken;
    const left = this.budgetLeft();
    if (need > left)
      throw new OutOfMemoryError(
        `a sequence with contextSize ${ctx} needs ${formatBytes(need)} of KV cache (${need} bytes), but only ${formatBytes(left)} (${left} bytes) ` +
          `of the ${formatBytes(this.kvBudget)} budget is left (${this.sequences.size} live sequence(s)); ` +
          'use a smaller contextSize, dispose sequences, or raise loadModel({memoryLimit})',
      );
    const ns = nm.createSequence(ctx, 0);
    const s = new Sequence(this, ns, ctx);
    this.sequences.add(s);
    return s;
  }

  /** Generates a completion in a fresh sequence. */
  async generate(input: GenerateInput, options?: GenerateOptions): Promise<GenerateResult> {
    const stream = this.stream(input, options);
    for await (const _ of stream) {
      // drain; onToken (if any) is called by the stream
    }
    return stream.result;
  }

  /**
   * Streams a completion token by token; `result` resolves when it ends. Breaking out of the loop
   * (or `cancel()`) stops it. Bad options and inputs throw here; a policy the model cannot run and
   * a prompt longer than the context come from iterating the stream (and its `result`), and take
   * nothing: no sequence is made for them.
   */
  stream(input: GenerateInput, options?: GenerateOptions): GenerationStream {
    const opts = validateGenerateOptions(options);
    this.live();
    let policy: Policy;
    let ids: number[];
    try {
      policy = this.checkPolicy(opts.policy);
      ids = tokenizeInput(this.tokenizer, input, true, this.config.vocabSize, this.contextSize, this.contextSize);
    } catch (e) {
      if (e instanceof ContextOverflowError || (e instanceof InvalidOptionError && e.option.startsWith('policy')))
        return GenerationStream.failed(e);
      throw e;
    }
    // A fresh sequence sized for the prompt plus maxTokens (not the whole default context).
    const ctx = Math.max(1, Math.min(this.contextSize, ids.length + (opts.maxTokens ?? DEFAULT_MAX_TOKENS)));
    const seq = this.createSequence({ contextSize: ctx });
    return GenerationStream.start(seq, { tokens: ids }, opts, policy, true);
  }

  /**
   * Logits (and the layers each token ran) at every position of `tokens`, in a fresh sequence of
   * at most the model's contextSize. The logits count against the memory budget while it runs.
   */
  async evaluate(tokens: ArrayLike<number>, options?: EvaluateOptions): Promise<EvaluateResult> {
    const c = this.contextSize;
    const ids = tokenIdArray(tokens, 'input', this.config.vocabSize, c, (n) => promptTooLong(`${n} tokens`, c, c));
    const seq = this.createSequence({ contextSize: Math.max(1, ids.length) });
    try {
      return await seq.evaluate(ids, options);
    } finally {
      seq.dispose();
    }
  }

  /**
   * Frees the model. Queued passes reject with DisposedError; a pass already running finishes
   * first; every sequence of this model is disposed. Asynchronous (it waits for that pass), so a
   * Model has `await using` but not `using`: its weights cannot be freed while its own thread
   * still reads them.
   */
  async dispose(): Promise<void> {
    if (!this.nm) return;
    const nm = this.nm;
    this.nm = null;
    await this.scheduler.close();
    for (const s of this.sequences) s.dispose();
    nm.dispose();
  }

  /** dispose(), for `await using`. */
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

  /** Budget bytes not reserved by live sequences' KV caches or running evaluate() calls. */
  private budgetLeft(): number {
    let reserved = this.logitsReserved;
    for (const s of this.sequences) reserved += s.contextSize * this.kvBytesPerToken;
    return Math.max(0, this.kvBudget - reserved);
  }

  /**
   * @internal Reserves the logits of `rows` positions (f32, a vocabulary each) for an evaluate()
   * call, or throws OutOfMemoryError; returns the release (idempotent).
   */
  reserveLogits(rows: number): () => void {
    const bytes = rows * this.config.vocabSize * 4;
    const left = this.budgetLeft();
    if (bytes > left)
      throw new OutOfMemoryError(
        `evaluating ${rows} positions returns ${formatBytes(bytes)} of logits (${bytes} bytes), but only ${formatBytes(left)} (${left} bytes) ` +
          `of the ${formatBytes(this.kvBudget)} budget is left; evaluate fewer tokens at a time, dispose sequences, ` +
          'or raise loadModel({memoryLimit})',
      );
    this.logitsReserved += bytes;
    let held = true;
    return () => {
      if (held) this.logitsReserved -= bytes;
      held = false;
    };
  }

  /** @internal The policy a call runs: the one it names (validated), or the model's default. */
  resolvePolicy(policy: unknown): Policy {
    return policy === undefined ? { ...this.defaultPolicy.policy } : validatePolicy(policy, this.config.numLayers);
  }

  /**
   * @internal The policy a call runs (resolvePolicy), checked against the router weights it
   * needs (InvalidOptionError 'policy' when they are missing).
   */
  checkPolicy(policy: unknown): Policy {
    const resolved = this.resolvePolicy(policy);
    // Exact mode needs what its draft needs.
    const p = resolved.type === 'speculative' ? resolved.draft : resolved;
    const field = resolved.type === 'speculative' ? 'policy.draft' : 'policy';
    if (p.type === 'flexidepth' || p.type === 'skiplayer') {
      this.routerLayers ??= (({ flexiDepthLayers, skipRouterLayers }) => ({ flexiDepthLayers, skipRouterLayers }))(
        this.live().info(),
      );
      const have = p.type === 'flexidepth' ? this.routerLayers.flexiDepthLayers : this.routerLayers.skipRouterLayers;
      if (have.length === 0)
        throw new InvalidOptionError(
          field,
          p.type === 'flexidepth'
            ? 'this model has no FlexiDepth router weights, which the flexidepth policy needs (load them with loadModel({addons}))'
            : 'this model has no SkipLayer router weights, which the skiplayer policy needs (load them with loadModel({addons}))',
        );
    }
    return resolved;
  }

  /**
   * @internal Queues one request; requests waiting together under the same policy run as one
   * batch. A pass under the speculative policy runs at full depth (its drafts run their own policy).
   */
  run(request: NativeRequest, policy: Policy = { type: 'none' }): Promise<NativeResponse> {
    this.live();
    return this.scheduler.run(request, fullDepthOf(policy));
  }
}
