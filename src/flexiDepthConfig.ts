/**
 * The config.json fields of FlexiDepth checkpoints beyond Llama's, and the official checkpoint's
 * entrance. The checkpoint the FlexiDepth paper released (Hugging Face
 * `xuan-luo/FlexiDepth-Llama-3-8B-Instruct`) is saved by its own remote-code classes
 * (`configuration_ddllama.py`, `modeling_ddllama.py`): config.json says
 * `"architectures": ["DDLlamaForCausalLM"]`, has a `model_type` of its own and an `auto_map` naming
 * those files. It is a Llama model whose routed layers carry FlexiDepth routers and adapters in its
 * own weights, under the key names depthgate already reads; depthgate runs it as that. No remote
 * code runs, so `auto_map` is ignored.
 *
 * Known about the official config (from the released modeling_ddllama.py): `routing_layers` lists the
 * routed layers, and the official code routes exactly those with a threshold hard-coded to 0.5 (not
 * a config field). A port reads `router_reduction_factor` and `proj_reduction_factor` (default 16);
 * whether the official file has them is UNCONFIRMED. `model_type` is "ddllama" in the same authors'
 * DDLlamaConfig of their DiffSkip checkpoint; for FlexiDepth it is UNCONFIRMED, so any string is
 * accepted. Our choices for a DDLlamaForCausalLM config.json, where the official file is unconfirmed:
 *
 * - `routing_layers` is required (save_pretrained writes every attribute of the config, so a saved
 *   official config has it): distinct layer numbers below num_hidden_layers. Whether they agree
 *   with the router tensors is checked in one place, at load (native/model.cc).
 * - `router_reduction_factor`, `proj_reduction_factor`: positive integers. The router and adapter
 *   widths come from the tensors' shapes; a factor given must agree with them (checked at load).
 * - `router_head_bias_init`: initialisation only, ignored (a bias tensor would be refused at load
 *   as a tensor config.json does not account for).
 * - a key naming a penalty or a loss (the skip-loss weight): training only, ignored; so are
 *   `output_*` / `return_*` flags (what a forward call returns, not what it computes).
 * - a key naming a threshold: 0.5 (the official value) or null changes nothing and is accepted;
 *   another value is refused (a threshold is a per-call choice: `{type: 'flexidepth', threshold}`).
 * - any other key naming a router, routing, skipping, an adapter or a `proj_` setting is refused
 *   with its name (UnsupportedModelError): what it would change is unknown, so it is not ignored.
 * - every other key is read as for LlamaForCausalLM.
 */
import { ModelFormatError, UnsupportedModelError } from './errors';

/** config.json's architecture name for the official FlexiDepth checkpoint. */
export const FLEXIDEPTH_ARCHITECTURE = 'DDLlamaForCausalLM';

/** The threshold the official FlexiDepth code decides at (hard-coded there). */
export const OFFICIAL_THRESHOLD = 0.5;

/** FlexiDepth fields read from config.json. */
export interface FlexiDepthFields {
  /** The routed layers, sorted, when config.json lists them. */
  routingLayers?: number[];
  /** router_reduction_factor, when given: the router of a layer is hidden / factor wide. */
  routerReductionFactor?: number;
  /** proj_reduction_factor, when given: the adapter of a layer is intermediate / factor wide. */
  projReductionFactor?: number;
}

const KNOWN = new Set(['routing_layers', 'router_reduction_factor', 'proj_reduction_factor', 'router_head_bias_init']);
const TRAINING_ONLY = /penalty|loss/i;
/** What a forward call returns (output_router_logits and the like), not what it computes. */
const OUTPUT_FLAG = /^(output|return)_/;
const THRESHOLD = /threshold/i;
const ROUTER_SETTING = /router|routing|skip|flexi|adapter|^proj_/i;

function routingLayers(v: unknown, numLayers: number, file: string): number[] {
  const fail = (why: string): never => {
    throw new ModelFormatError(`'routing_layers' ${why}`, file);
  };
  if (!Array.isArray(v) || v.some((x) => !Number.isInteger(x) || x < 0)) fail('must be a list of layer numbers');
  const list = v as number[];
  for (const l of list)
    if (l >= numLayers) fail(`lists layer ${l}, but the model has ${numLayers} layers (0..${numLayers - 1})`);
  const sorted = [...list].sort((a, b) => a - b);
  for (let i = 1; i < sorted.length; i++) if (sorted[i] === sorted[i - 1]) fail(`lists layer ${sorted[i]} twice`);
  return sorted;
}

function factor(raw: Record<string, unknown>, key: string, file: string): number | undefined {
  const v = raw[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1)
    throw new ModelFormatError(`'${key}' must be a positive integer, got ${JSON.stringify(v)}`, file);
  return v;
}

/**
 * Reads the FlexiDepth fields of config.json and, for DDLlamaForCausalLM, holds its other router
 * settings to the rules in the module comment. Other architectures keep reading only
 * `routing_layers` (their other keys are none of FlexiDepth's business).
 */
export function readFlexiDepthFields(
  raw: Record<string, unknown>,
  arch: string,
  numLayers: number,
  file: string,
): FlexiDepthFields {
  const out: FlexiDepthFields = {};
  const official = arch === FLEXIDEPTH_ARCHITECTURE;
  if (raw.routing_layers !== undefined && raw.routing_layers !== null)
    out.routingLayers = routingLayers(raw.routing_layers, numLayers, file);
  else if (official)
    throw new ModelFormatError(
      `'routing_layers' is missing: ${FLEXIDEPTH_ARCHITECTURE} routes the layers it lists`,
      file,
    );
  if (!official) return out;
  const r = factor(raw, 'router_reduction_factor', file);
  const p = factor(raw, 'proj_reduction_factor', file);
  if (r !== undefined) out.routerReductionFactor = r;
  if (p !== undefined) out.projReductionFactor = p;
  for (const [key, v] of Object.entries(raw)) {
    if (KNOWN.has(key) || TRAINING_ONLY.test(key) || OUTPUT_FLAG.test(key)) continue;
    if (THRESHOLD.test(key)) {
      if (v === null || v === OFFICIAL_THRESHOLD) continue;
      throw new UnsupportedModelError(
        `'${key}' is ${JSON.stringify(v)}, but the official FlexiDepth code decides at ${OFFICIAL_THRESHOLD}; ` +
          "another threshold is a per-call choice (policy {type: 'flexidepth', threshold}, --policy flexidepth:threshold=T)",
        file,
      );
    }
    if (ROUTER_SETTING.test(key))
      throw new UnsupportedModelError(
        `'${key}' is a router setting depthgate does not know; it may change what the model computes, so it is refused ` +
          '(remove it from config.json if it changes nothing at inference)',
        file,
      );
  }
  return out;
}
