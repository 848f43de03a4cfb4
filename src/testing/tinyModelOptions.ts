/**
 * The options and the description of a tiny checkpoint written by writeTinyModel (tinyModel.ts).
 */
// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** Architecture of a tiny model. */
export type TinyArch = 'llama' | 'mistral' | 'qwen2';
/** Storage dtype of a tiny model. */
export type TinyDtype = 'f32' | 'f16' | 'bf16';
/** RoPE scaling of a tiny model. */
export type TinyRopeScaling = 'none' | 'llama3' | 'linear';

/** Options of {@link writeTinyModel}; every field has a default that gives a fast test model. */
export interface TinyModelOptions {
  /** Architecture (default 'llama'). */
  arch?: TinyArch;
  /** num_hidden_layers (default 2). */
  layers?: number;
  /** hidden_size (default 64). */
  hidden?: number;
  /** num_attention_heads (default 4). */
  heads?: number;
  /** num_key_value_heads (default 2, or `heads` when that is odd). */
  kvHeads?: number;
  /** head_dim (default hidden / heads); may differ from hidden / heads. Must be even. */
  headDim?: number;
  /** intermediate_size (default 128). */
  intermediate?: number;
  /** vocab_size, special tokens included (default 320, minimum 261). */
  vocabSize?: number;
  /** max_position_embeddings (default 256). */
  maxPositions?: number;
  /** Storage dtype of every tensor (default 'f32'). */
  dtype?: TinyDtype;
  /** tie_word_embeddings: no lm_head.weight is written (default false). */
  tied?: boolean;
  /** Llama attention_bias: biases on q/k/v/o projections (default false; Qwen2 always has q/k/v biases). */
  bias?: boolean;
  /** rope_theta (default 10000). */
  ropeTheta?: number;
  /** rope_scaling (default 'none'). */
  ropeScaling?: TinyRopeScaling;
  /** Scaling factor for 'llama3' (default 8) or 'linear' (default 4). */
  ropeFactor?: number;
  /** Mistral sliding_window (default null = none). Ignored for other architectures. */
  slidingWindow?: number | null;
  /** Number of safetensors shards (default 1: a single model.safetensors). */
  shards?: number;
  /** PRNG seed (default 0). */
  seed?: number;
  /** eos_token_id as a list [<|end_of_text|>, <|eot_id|>] (default false: a single id). */
  eosList?: boolean;
  /** rms_norm_eps (default 1e-5). */
  rmsNormEps?: number;
  /** Whether the tokenizer prepends <|begin_of_text|> (default true). */
  addBos?: boolean;
  /** FlexiDepth routers and adapters on some layers (default none). */
  flexidepth?: TinyFlexiDepthOptions;
  /** SkipLayer routers (default none). */
  skiplayer?: TinySkipLayerOptions;
}

/**
 * FlexiDepth (arXiv 2503.23798, HF xuan-luo/FlexiDepth-Llama-3-8B-Instruct) tensors, bias-free,
 * for each layer i in `layers`:
 *
 *   model.layers.{i}.router.router_enc.weight      [r, d]   (r = max(2, floor(d / routerReduction)))
 *   model.layers.{i}.router.router_norm.weight     [r]
 *   model.layers.{i}.router.router_dec.weight      [d, r]
 *   model.layers.{i}.router.router_head.weight     [1, d]
 *   model.layers.{i}.router_proj.gate_proj.weight  [m, d]   (m = max(2, floor(intermediate / adapterReduction)))
 *   model.layers.{i}.router_proj.down_proj.weight  [m, d]   (maps d -> m despite its name)
 *   model.layers.{i}.router_proj.up_proj.weight    [d, m]
 *
 * Without `addonFile` they go into the model's own checkpoint and config.json gets
 * `routing_layers`; with it they go into that separate safetensors file in the output
 * directory only, and config.json stays that of the plain base model. With `official` (Llama only,
 * no `addonFile`) config.json is that of the official FlexiDepth checkpoint: `architectures`
 * ["DDLlamaForCausalLM"], `model_type` "ddllama", an `auto_map` to configuration_ddllama.py /
 * modeling_ddllama.py, and `routing_layers`; the tensors are those of the plain variant.
 *
 * Scaling: router_head is scaled so that the fused vector v = router_dec^T router_head has norm
 * routerGain / sqrt(E[tanh(N(0,1))^2]); the router logit v . tanh(rmsnorm(router_enc x)) then
 * has a standard deviation of about `routerGain` over tokens, so decisions split both ways and
 * few weights sit near 0.5. The adapter is initialised like the MLP (output gain 2).
 */
export interface TinyFlexiDepthOptions {
  /** Routed layer indices (each in [0, layers)). */
  layers: number[];
  /** File name (in the output directory) for an add-on safetensors file, e.g. "flexidepth.safetensors". */
  addonFile?: string;
  /** Approximate standard deviation of the router logit over tokens (default 3). */
  routerGain?: number;
  /** Router bottleneck reduction (default 16; the width is at least 2). */
  routerReduction?: number;
  /** Adapter reduction (default 16; the width is at least 2). */
  adapterReduction?: number;
  /** Write config.json in the official FlexiDepth checkpoint's layout (DDLlamaForCausalLM; default false). */
  official?: boolean;
}

/**
 * SkipLayer (arXiv 2311.15436) routers: bias-free Linear(hidden -> 2), logits ordered
 * [skip, run]; greedy decision run = logit[1] > logit[0].
 *
 *   mode 'layer':  model.layers.{i}.skip_router.weight            [2, d]  (input: input_layernorm(h))
 *   mode 'module': model.layers.{i}.self_attn.skip_router.weight  [2, d]  (input: input_layernorm(h))
 *                  model.layers.{i}.mlp.skip_router.weight        [2, d]  (input: post_attention_layernorm(h'))
 *
 * Rows ~ N(0, gain^2 / d). Without `addonFile` they go into the model's own checkpoint; config.json
 * is never changed.
 */
export interface TinySkipLayerOptions {
  mode: 'layer' | 'module';
  /** Layers with routers (default all). */
  layers?: number[];
  /** File name (in the output directory) for an add-on safetensors file, e.g. "skiplayer.safetensors". */
  addonFile?: string;
  /** Row scale (default 2): the run-minus-skip logit has a std of about gain * sqrt(2). */
  gain?: number;
}

/** Ids of the special tokens of a tiny model. */
export interface TinyModelSpecialTokens {
  /** `<|begin_of_text|>` */
  bos: number;
  /** `<|end_of_text|>` */
  endOfText: number;
  /** `<|start_header_id|>` */
  startHeader: number;
  /** `<|end_header_id|>` */
  endHeader: number;
  /** `<|eot_id|>` */
  eot: number;
}

/** What {@link writeTinyModel} wrote. */
export interface TinyModelInfo {
  /** Absolute path of the output directory. */
  dir: string;
  /** Absolute paths of every file written, in the order written. */
  files: string[];
  /** Absolute paths of the safetensors files. */
  weightFiles: string[];
  /** Tensor names of the model checkpoint in module (state_dict) order (add-on tensors excluded). */
  tensorNames: string[];
  /** Shapes by tensor name (checkpoint and add-on tensors). */
  tensorShapes: Record<string, number[]>;
  /** Absolute paths of the add-on safetensors files (flexidepth / skiplayer `addonFile`), in the order written. */
  addonFiles: string[];
  /** Names of the tensors written to add-on files, in module order. */
  addonTensorNames: string[];
  /** The object written to config.json. */
  config: Record<string, unknown>;
  /** Ids of the special tokens. */
  specialTokens: TinyModelSpecialTokens;
  /** Number of entries learned by BPE (bytes + merges), i.e. the ids below the special tokens in use. */
  bpeVocabSize: number;
}
