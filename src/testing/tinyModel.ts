/**
 * Writes a tiny, randomly initialised Llama-family checkpoint in exact Hugging Face layout.
 *
 * The output directory gets the same files `save_pretrained` produces for a causal LM plus a
 * tokenizer:
 *
 *   config.json                  as transformers writes it (sorted keys, Python float style)
 *   generation_config.json
 *   model.safetensors            or model-0000k-of-0000n.safetensors + model.safetensors.index.json
 *   tokenizer.json               byte-level BPE (GPT-2 / Llama-3 style), merges learned here
 *   tokenizer_config.json        special tokens and a Llama-3-style chat template
 *
 * Everything is deterministic: the same options give byte-identical files on every platform.
 * Weights come from a small counter-free PRNG seeded per tensor (from `seed` and the tensor
 * name), and normal deviates are made from sums of uniforms, so no transcendental function
 * (whose last bit may differ between engines) is involved. Because each tensor has its own
 * stream, options that add or drop tensors (bias, tied, layers) leave the other tensors'
 * values unchanged, and the f16/bf16 files hold exactly the round-to-nearest-even images of
 * the f32 file's values.
 *
 * Initialisation (chosen so the network is numerically healthy and its logits are peaked):
 *   embed_tokens ~ N(0, 1); q/k/v/gate/up ~ N(0, 1/fan_in); o_proj and down_proj ~
 *   N(0, 4/fan_in) (gain 2, so the layers outweigh the embedding in the residual stream);
 *   lm_head rows ~ N(0, 9/d) times a per-row factor in [0.5, 2) (logit spread ~20-30);
 *   RMSNorm weights uniform in [0.8, 1.2]; biases ~ N(0, 0.1^2).
 *
 * Optional dynamic-depth tensors: FlexiDepth routers + adapters (`flexidepth`) and SkipLayer
 * routers (`skiplayer`), in the checkpoint itself or in a separate add-on safetensors file;
 * see TinyFlexiDepthOptions and TinySkipLayerOptions for names, shapes and scales.
 *
 * The tokenizer is byte-level BPE: the 256 GPT-2 byte symbols, then merges learned at call
 * time from a built-in English sample (most frequent pair first, ties by string order), then
 * five special tokens at the top ids: <|begin_of_text|>, <|end_of_text|>,
 * <|start_header_id|>, <|end_header_id|>, <|eot_id|>. The sample supports about 720 merges;
 * a larger vocab_size leaves unused ids between the BPE vocabulary and the special tokens
 * (rows that exist in the weights but that the tokenizer never produces).
 *
 * Only node builtins are used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildTokenizerJson, SPECIAL_TOKENS, TINY_CHAT_TEMPLATE, trainBpe } from './bpeTokenizer';
import { formatJson, pyFloat, toPlain, type JsonLike } from './hfJson';
import { Rng, hashString } from './rng';
import { DTYPE_INFO, writeSafetensorsFile, type TensorSpec } from './safetensorsWriter';
import type { TinyArch, TinyDtype, TinyRopeScaling, TinyModelOptions, TinyModelInfo } from './tinyModelOptions';

// ---------------------------------------------------------------------------------------------
// Checkpoint
// ---------------------------------------------------------------------------------------------

const TRANSFORMERS_VERSION = '4.46.3';

/**
 * Gain on the projections that write into the residual stream (o_proj, down_proj): with 2 the
 * layers outweigh the token embedding, so the output depends on attention and context rather
 * than mostly on the current token (which, with tied embeddings, would just be repeated).
 */
const RESIDUAL_GAIN = 2;
/** Gain on lm_head: logits have a standard deviation of a few units (a spread of ~20-30). */
const LM_GAIN = 3;
/** Default FlexiDepth routerGain: the router logit's standard deviation over tokens. */
export const FLEXIDEPTH_ROUTER_GAIN = 3;
/** Default SkipLayer router gain. */
export const SKIPLAYER_ROUTER_GAIN = 2;
/** E[tanh(Z)^2] for Z ~ N(0, 1) (numerical integral), the variance of a router_norm'ed, tanh'ed unit. */
const TANH_SQ_MEAN = 0.3942;

function checkInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min)
    throw new RangeError(`writeTinyModel: ${name} must be an integer >= ${min} (got ${v})`);
  return v;
}

/** Normal(0, std^2) fill. */
const normalInit =
  (std: number) =>
  (rng: Rng, out: Float32Array): void => {
    for (let i = 0; i < out.length; i++) out[i] = rng.normal() * std;
  };

/** RMSNorm weights: uniform in [0.8, 1.2]. */
const normWeightInit = (rng: Rng, out: Float32Array): void => {
  for (let i = 0; i < out.length; i++) out[i] = 1 + 0.2 * (2 * rng.uniform() - 1);
};

/**
 * lm_head rows: N(0, (gain / sqrt(d))^2) scaled by a per-row factor in [0.5, 2). The row scales
 * give the logits a heavier upper tail, which widens the typical gap between the two largest
 * logits; near-ties still occur at a few percent of positions, so tests comparing greedy
 * output against a lower-precision engine should check the margin where they compare.
 */
const lmHeadInit =
  (rows: number, cols: number, gain: number) =>
  (rng: Rng, out: Float32Array): void => {
    const std = gain / Math.sqrt(cols);
    for (let r = 0; r < rows; r++) {
      const u = rng.uniform();
      const scale = 0.5 + 1.5 * u * u;
      for (let c = 0; c < cols; c++) out[r * cols + c] = rng.normal() * std * scale;
    }
  };

/** Layer index list check: integers in [0, layers), no duplicates; returned sorted. */
function checkLayerList(what: string, list: unknown, layers: number): number[] {
  if (!Array.isArray(list)) throw new RangeError(`writeTinyModel: ${what} must be an array of layer indices`);
  const out = [...(list as unknown[])].map((v) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= layers) {
      throw new RangeError(`writeTinyModel: ${what}: layer ${String(v)} out of range [0, ${layers})`);
    }
    return v;
  });
  out.sort((a, b) => a - b);
  for (let i = 1; i < out.length; i++)
    if (out[i] === out[i - 1]) throw new RangeError(`writeTinyModel: ${what}: layer ${out[i]} repeated`);
  return out;
}

function checkAddonFile(what: string, name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  if (typeof name !== 'string' || !/^[A-Za-z0-9._-]+\.safetensors$/.test(name) || name.startsWith('model')) {
    throw new RangeError(
      `writeTinyModel: ${what}.addonFile must be a plain *.safetensors file name not starting with "model" (got ${String(name)})`,
    );
  }
  return name;
}

/**
 * Writes a tiny random checkpoint (config, weights, tokenizer, generation config) into `dir`,
 * creating it if needed. Existing files of the same names are overwritten.
 */
export function writeTinyModel(dir: string, options: TinyModelOptions = {}): TinyModelInfo {
  const arch: TinyArch = options.arch ?? 'llama';
  if (arch !== 'llama' && arch !== 'mistral' && arch !== 'qwen2')
    throw new RangeError(`writeTinyModel: unknown arch ${String(arch)}`);
  const dtype: TinyDtype = options.dtype ?? 'f32';
  if (!(dtype in DTYPE_INFO)) throw new RangeError(`writeTinyModel: unknown dtype ${String(dtype)}`);
  const layers = checkInt('layers', options.layers ?? 2, 1);
  const hidden = checkInt('hidden', options.hidden ?? 64, 2);
  const heads = checkInt('heads', options.heads ?? 4, 1);
  const kvHeads = checkInt('kvHeads', options.kvHeads ?? (heads % 2 === 0 ? 2 : heads), 1);
  if (heads % kvHeads !== 0)
    throw new RangeError(`writeTinyModel: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  if (options.headDim === undefined && hidden % heads !== 0) {
    throw new RangeError(
      `writeTinyModel: hidden (${hidden}) must be a multiple of heads (${heads}) unless headDim is given`,
    );
  }
  const headDim = checkInt('headDim', options.headDim ?? hidden / heads, 2);
  if (headDim % 2 !== 0) throw new RangeError(`writeTinyModel: headDim must be even (got ${headDim})`);
  const intermediate = checkInt('intermediate', options.intermediate ?? 128, 1);
  const vocabSize = checkInt('vocabSize', options.vocabSize ?? 320, 256 + SPECIAL_TOKENS.length);
  const maxPositions = checkInt('maxPositions', options.maxPositions ?? 256, 1);
  const tied = options.tied ?? false;
  const llamaBias = arch === 'llama' && (options.bias ?? false);
  const qkvBias = arch === 'qwen2' || llamaBias;
  const oBias = llamaBias;
  const ropeTheta = options.ropeTheta ?? 10000;
  if (!(ropeTheta > 0)) throw new RangeError('writeTinyModel: ropeTheta must be positive');
  const ropeScaling: TinyRopeScaling = options.ropeScaling ?? 'none';
  const slidingWindow = arch === 'mistral' ? (options.slidingWindow ?? null) : null;
  if (slidingWindow !== null) checkInt('slidingWindow', slidingWindow, 1);
  const shards = checkInt('shards', options.shards ?? 1, 1);
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed)) throw new RangeError('writeTinyModel: seed must be an integer');
  const eosList = options.eosList ?? false;
  const rmsNormEps = options.rmsNormEps ?? 1e-5;
  const addBos = options.addBos ?? true;
  const fd = options.flexidepth;
  const fdLayers = fd ? checkLayerList('flexidepth.layers', fd.layers, layers) : [];
  const fdAddon = fd ? checkAddonFile('flexidepth', fd.addonFile) : undefined;
  const fdGain = fd?.routerGain ?? FLEXIDEPTH_ROUTER_GAIN;
  if (fd && !(fdGain > 0 && Number.isFinite(fdGain)))
    throw new RangeError('writeTinyModel: flexidepth.routerGain must be positive');
  const fdR = fd
    ? Math.max(2, Math.floor(hidden / checkInt('flexidepth.routerReduction', fd.routerReduction ?? 16, 1)))
    : 0;
  const fdM = fd
    ? Math.max(2, Math.floor(intermediate / checkInt('flexidepth.adapterReduction', fd.adapterReduction ?? 16, 1)))
    : 0;
  const sl = options.skiplayer;
  if (sl && sl.mode !== 'layer' && sl.mode !== 'module')
    throw new RangeError(`writeTinyModel: skiplayer.mode must be 'layer' or 'module'`);
  const slLayers = sl
    ? sl.layers === undefined
      ? Array.from({ length: layers }, (_, i) => i)
      : checkLayerList('skiplayer.layers', sl.layers, layers)
    : [];
  const slAddon = sl ? checkAddonFile('skiplayer', sl.addonFile) : undefined;
  const slGain = sl?.gain ?? SKIPLAYER_ROUTER_GAIN;
  if (sl && !(slGain > 0 && Number.isFinite(slGain)))
    throw new RangeError('writeTinyModel: skiplayer.gain must be positive');

  // ---- tokenizer ----
  const bpe = trainBpe(vocabSize - SPECIAL_TOKENS.length);
  const specialIds = SPECIAL_TOKENS.map((_, i) => vocabSize - SPECIAL_TOKENS.length + i);
  const [bosId, endOfTextId, startHeaderId, endHeaderId, eotId] = specialIds as [
    number,
    number,
    number,
    number,
    number,
  ];
  const eosIds = eosList ? [endOfTextId, eotId] : endOfTextId;
  const eosToken = eosList ? '<|eot_id|>' : '<|end_of_text|>';

  // ---- config.json ----
  let ropeScalingJson: JsonLike = null;
  if (ropeScaling === 'llama3') {
    ropeScalingJson = {
      factor: pyFloat(options.ropeFactor ?? 8),
      high_freq_factor: pyFloat(4),
      low_freq_factor: pyFloat(1),
      original_max_position_embeddings: Math.max(1, Math.floor(maxPositions / 4)),
      rope_type: 'llama3',
    };
  } else if (ropeScaling === 'linear') {
    ropeScalingJson = { factor: pyFloat(options.ropeFactor ?? 4), rope_type: 'linear' };
  } else if (ropeScaling !== 'none') {
    throw new RangeError(`writeTinyModel: unknown ropeScaling ${String(ropeScaling)}`);
  }
  const common: { [k: string]: JsonLike } = {
    attention_dropout: pyFloat(0),
    bos_token_id: bosId,
    eos_token_id: eosIds,
    head_dim: headDim,
    hidden_act: 'silu',
    hidden_size: hidden,
    initializer_range: pyFloat(0.02),
    intermediate_size: intermediate,
    max_position_embeddings: maxPositions,
    num_attention_heads: heads,
    num_hidden_layers: layers,
    num_key_value_heads: kvHeads,
    rms_norm_eps: pyFloat(rmsNormEps),
    rope_theta: pyFloat(ropeTheta),
    tie_word_embeddings: tied,
    torch_dtype: DTYPE_INFO[dtype].torch,
    transformers_version: TRANSFORMERS_VERSION,
    use_cache: true,
    vocab_size: vocabSize,
  };
  let configJson: { [k: string]: JsonLike };
  if (arch === 'llama') {
    configJson = {
      ...common,
      architectures: ['LlamaForCausalLM'],
      attention_bias: llamaBias,
      mlp_bias: false,
      model_type: 'llama',
      pretraining_tp: 1,
      rope_scaling: ropeScalingJson,
    };
  } else if (arch === 'mistral') {
    configJson = {
      ...common,
      architectures: ['MistralForCausalLM'],
      model_type: 'mistral',
      sliding_window: slidingWindow,
    };
    if (ropeScalingJson !== null) configJson['rope_scaling'] = ropeScalingJson;
  } else {
    configJson = {
      ...common,
      architectures: ['Qwen2ForCausalLM'],
      max_window_layers: layers,
      model_type: 'qwen2',
      rope_scaling: ropeScalingJson,
      sliding_window: null,
      use_sliding_window: false,
    };
  }
  if (fd && fdAddon === undefined) configJson['routing_layers'] = fdLayers;
  if (fd?.official) {
    if (arch !== 'llama' || fdAddon !== undefined)
      throw new RangeError(
        "writeTinyModel: flexidepth.official needs arch 'llama' and no addonFile (the official checkpoint is a Llama with routers in its own weights)",
      );
    configJson['architectures'] = ['DDLlamaForCausalLM'];
    configJson['model_type'] = 'ddllama';
    configJson['auto_map'] = {
      AutoConfig: 'configuration_ddllama.DDLlamaConfig',
      AutoModel: 'modeling_ddllama.DDLlamaModel',
      AutoModelForCausalLM: 'modeling_ddllama.DDLlamaForCausalLM',
    };
  }

  // ---- tensors, in module (state_dict) order ----
  const d = hidden;
  const qDim = heads * headDim;
  const kvDim = kvHeads * headDim;
  const linear = (name: string, out: number, inp: number, gain = 1): TensorSpec => ({
    name,
    shape: [out, inp],
    init: normalInit(gain / Math.sqrt(inp)),
  });
  const biasT = (name: string, n: number): TensorSpec => ({ name, shape: [n], init: normalInit(0.1) });
  const normT = (name: string, n: number): TensorSpec => ({ name, shape: [n], init: normWeightInit });
  // router_head: N(0, 1/d), then scaled so that |router_dec^T router_head| = target. The
  // router_dec values are regenerated from that tensor's own stream (same seed and name).
  const routerHead =
    (decName: string, r: number, target: number): TensorSpec['init'] =>
    (rng, out) => {
      normalInit(1 / Math.sqrt(d))(rng, out);
      const dec = new Float32Array(d * r);
      normalInit(1 / Math.sqrt(r))(new Rng(hashString(decName, seed)), dec);
      let n2 = 0;
      for (let j = 0; j < r; j++) {
        let v = 0;
        for (let i = 0; i < d; i++) v += dec[i * r + j]! * out[i]!;
        n2 += v * v;
      }
      const scale = target / Math.sqrt(n2);
      for (let i = 0; i < d; i++) out[i] = out[i]! * scale;
    };
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [vocabSize, d], init: normalInit(1) }];
  /** Tensors for the add-on files, by file name. */
  const addonSpecs = new Map<string, TensorSpec[]>();
  const place = (file: string | undefined, s: TensorSpec): void => {
    if (file === undefined) {
      specs.push(s);
      return;
    }
    let list = addonSpecs.get(file);
    if (!list) addonSpecs.set(file, (list = []));
    list.push(s);
  };
  const slRouter = (name: string): TensorSpec => ({ name, shape: [2, d], init: normalInit(slGain / Math.sqrt(d)) });
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    const slHere = sl !== undefined && slLayers.includes(i);
    specs.push(linear(`${p}.self_attn.q_proj.weight`, qDim, d));
    if (qkvBias) specs.push(biasT(`${p}.self_attn.q_proj.bias`, qDim));
    specs.push(linear(`${p}.self_attn.k_proj.weight`, kvDim, d));
    if (qkvBias) specs.push(biasT(`${p}.self_attn.k_proj.bias`, kvDim));
    specs.push(linear(`${p}.self_attn.v_proj.weight`, kvDim, d));
    if (qkvBias) specs.push(biasT(`${p}.self_attn.v_proj.bias`, kvDim));
    specs.push(linear(`${p}.self_attn.o_proj.weight`, d, qDim, RESIDUAL_GAIN));
    if (oBias) specs.push(biasT(`${p}.self_attn.o_proj.bias`, d));
    if (slHere && sl.mode === 'module') place(slAddon, slRouter(`${p}.self_attn.skip_router.weight`));
    specs.push(linear(`${p}.mlp.gate_proj.weight`, intermediate, d));
    specs.push(linear(`${p}.mlp.up_proj.weight`, intermediate, d));
    specs.push(linear(`${p}.mlp.down_proj.weight`, d, intermediate, RESIDUAL_GAIN));
    if (slHere && sl.mode === 'module') place(slAddon, slRouter(`${p}.mlp.skip_router.weight`));
    specs.push(normT(`${p}.input_layernorm.weight`, d));
    specs.push(normT(`${p}.post_attention_layernorm.weight`, d));
    if (fd !== undefined && fdLayers.includes(i)) {
      const decName = `${p}.router.router_dec.weight`;
      place(fdAddon, linear(`${p}.router.router_enc.weight`, fdR, d));
      place(fdAddon, normT(`${p}.router.router_norm.weight`, fdR));
      place(fdAddon, linear(decName, d, fdR));
      place(fdAddon, {
        name: `${p}.router.router_head.weight`,
        shape: [1, d],
        init: routerHead(decName, fdR, fdGain / Math.sqrt(TANH_SQ_MEAN)),
      });
      place(fdAddon, linear(`${p}.router_proj.gate_proj.weight`, fdM, d));
      place(fdAddon, linear(`${p}.router_proj.down_proj.weight`, fdM, d));
      place(fdAddon, linear(`${p}.router_proj.up_proj.weight`, d, fdM, RESIDUAL_GAIN));
    }
    if (slHere && sl.mode === 'layer') place(slAddon, slRouter(`${p}.skip_router.weight`));
  }
  specs.push(normT('model.norm.weight', d));
  if (!tied) specs.push({ name: 'lm_head.weight', shape: [vocabSize, d], init: lmHeadInit(vocabSize, d, LM_GAIN) });
  if (shards > specs.length)
    throw new RangeError(`writeTinyModel: shards (${shards}) exceeds the tensor count (${specs.length})`);

  // ---- write ----
  const outDir = path.resolve(dir);
  fs.mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  const write = (name: string, text: string): void => {
    const p = path.join(outDir, name);
    fs.writeFileSync(p, text);
    files.push(p);
  };

  write('config.json', formatJson(configJson, true) + '\n');
  write(
    'generation_config.json',
    formatJson(
      {
        _from_model_config: true,
        bos_token_id: bosId,
        eos_token_id: eosIds,
        transformers_version: TRANSFORMERS_VERSION,
      },
      true,
    ) + '\n',
  );

  const elementBytes = DTYPE_INFO[dtype].bytes;
  const tensorBytes = (s: TensorSpec): number => s.shape.reduce((p, x) => p * x, 1) * elementBytes;
  const weightFiles: string[] = [];
  if (shards === 1) {
    const p = path.join(outDir, 'model.safetensors');
    writeSafetensorsFile(p, specs, dtype, seed);
    files.push(p);
    weightFiles.push(p);
  } else {
    // Contiguous groups in module order, cut where the running byte total crosses k/n of the
    // total, with at least one tensor per shard.
    const total = specs.reduce((s, t) => s + tensorBytes(t), 0);
    const groups: TensorSpec[][] = [];
    let start = 0;
    let acc = 0;
    for (let k = 0; k < shards; k++) {
      const remainingShards = shards - k - 1;
      let end = start + 1;
      acc += tensorBytes(specs[start]!);
      const goal = (total * (k + 1)) / shards;
      while (end < specs.length - remainingShards && (k === shards - 1 || acc + tensorBytes(specs[end]!) <= goal)) {
        acc += tensorBytes(specs[end]!);
        end++;
      }
      groups.push(specs.slice(start, end));
      start = end;
    }
    const pad5 = (n: number): string => String(n).padStart(5, '0');
    const weightMap: { [k: string]: JsonLike } = {};
    groups.forEach((g, k) => {
      const fileName = `model-${pad5(k + 1)}-of-${pad5(shards)}.safetensors`;
      const p = path.join(outDir, fileName);
      writeSafetensorsFile(p, g, dtype, seed);
      files.push(p);
      weightFiles.push(p);
      for (const t of g) weightMap[t.name] = fileName;
    });
    write(
      'model.safetensors.index.json',
      formatJson({ metadata: { total_size: total }, weight_map: weightMap }, true) + '\n',
    );
  }
  const addonFiles: string[] = [];
  const addonTensorNames: string[] = [];
  for (const [fileName, list] of addonSpecs) {
    const p = path.join(outDir, fileName);
    writeSafetensorsFile(p, list, dtype, seed);
    files.push(p);
    addonFiles.push(p);
    for (const s of list) addonTensorNames.push(s.name);
  }

  write('tokenizer.json', formatJson(buildTokenizerJson(bpe, specialIds, addBos), false) + '\n');
  const addedTokensDecoder: { [k: string]: JsonLike } = {};
  SPECIAL_TOKENS.forEach((content, i) => {
    addedTokensDecoder[String(specialIds[i])] = {
      content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  });
  write(
    'tokenizer_config.json',
    formatJson(
      {
        add_bos_token: addBos,
        add_eos_token: false,
        added_tokens_decoder: addedTokensDecoder,
        bos_token: SPECIAL_TOKENS[0],
        chat_template: TINY_CHAT_TEMPLATE,
        clean_up_tokenization_spaces: false,
        eos_token: eosToken,
        model_input_names: ['input_ids', 'attention_mask'],
        model_max_length: maxPositions,
        tokenizer_class: 'PreTrainedTokenizerFast',
      },
      true,
    ) + '\n',
  );

  const tensorShapes: Record<string, number[]> = {};
  for (const s of specs) tensorShapes[s.name] = [...s.shape];
  for (const list of addonSpecs.values()) for (const s of list) tensorShapes[s.name] = [...s.shape];
  return {
    dir: outDir,
    files,
    weightFiles,
    addonFiles,
    addonTensorNames,
    tensorNames: specs.map((s) => s.name),
    tensorShapes,
    config: toPlain(configJson) as Record<string, unknown>,
    specialTokens: {
      bos: bosId,
      endOfText: endOfTextId,
      startHeader: startHeaderId,
      endHeader: endHeaderId,
      eot: eotId,
    },
    bpeVocabSize: bpe.vocab.length,
  };
}
