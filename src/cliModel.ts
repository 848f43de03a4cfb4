/**
 * What the subcommands share about a model: loading MODEL_DIR (or the embedded default model with
 * the add-on of the chosen policy), the load and sampling options, and the depth range a policy
 * can produce (where the depth colour scale should put its steps).
 */
import * as path from 'node:path';
import { defaultModelSetup } from './defaultModel';
import { loadModel, type Model } from './model';
import { WEIGHT_FORMATS, type GenerateOptions, type LoadOptions, type WeightFormatOption } from './options';
import { formatPolicy, parsePolicy, type Policy } from './policy';
import { UsageError, intArg, numArg, unescape, type Args, type Options } from './cliArgs';

/** The options every command that loads a model takes. */
export const LOAD_OPTIONS: Options = {
  threads: { type: 'string' },
  backend: { type: 'string' },
  'kv-cache': { type: 'string' },
  weights: { type: 'string' },
  addon: { type: 'string', multiple: true },
  'no-generation-config': { type: 'boolean' },
};

/** The sampling options of generate and chat. */
export const SAMPLING_OPTIONS: Options = {
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  policy: { type: 'string' },
  'repetition-penalty': { type: 'string' },
  'frequency-penalty': { type: 'string' },
  'presence-penalty': { type: 'string' },
  'penalty-window': { type: 'string' },
};

function progressBar(label: string): ((f: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  let last = -1;
  return (f: number) => {
    const pct = Math.floor(f * 100);
    if (pct === last) return;
    last = pct;
    const width = 30;
    const fill = Math.round(f * width);
    process.stderr.write(`\r${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${pct}%`);
    if (f >= 1) process.stderr.write('\n');
  };
}

/**
 * Loads MODEL_DIR, or with none the embedded default model with the add-on of the policy asked
 * for (its SkipLayer routers for `--policy skiplayer`, else its default FlexiDepth add-on), unless
 * --addon names others. A relative --addon path is taken from the working directory, as the API's.
 */
export async function openModel(command: string, args: Args): Promise<Model> {
  if (args.positionals.length > 1)
    throw new UsageError(`${command} takes one MODEL_DIR, got ${args.positionals.length}`, command);
  const backend = args.str('backend');
  if (backend !== undefined && backend !== 'auto' && backend !== 'cpu' && backend !== 'cuda')
    throw new UsageError(`--backend must be auto, cpu or cuda, got '${backend}'`, command);
  const kv = args.str('kv-cache');
  if (kv !== undefined && kv !== 'f32' && kv !== 'f16' && kv !== 'bf16')
    throw new UsageError(`--kv-cache must be f32, f16 or bf16, got '${kv}'`, command);
  const weights = args.str('weights');
  if (weights !== undefined && !(WEIGHT_FORMATS as readonly string[]).includes(weights))
    throw new UsageError(`--weights must be stored, q8_0, q4_0, q4_k or q6_k, got '${weights}'`, command);
  const threads = intArg(args.str('threads'), 'threads', 1, command, 1024);
  let addons = (args.list('addon') ?? []).map((a) => path.resolve(a));
  let modelDir = args.positionals[0];
  if (modelDir === undefined) {
    const skiplayer = /^skiplayer(:|$)/.test(args.str('policy') ?? '');
    const d = defaultModelSetup({ policy: skiplayer ? 'skiplayer' : 'flexidepth' });
    modelDir = d.dir;
    const ownAddon = !addons.length;
    if (ownAddon) addons = d.addons;
    process.stderr.write(
      `using the default model (12-layer Llama trained on the King James Bible${ownAddon ? (skiplayer ? ', SkipLayer routers' : ', FlexiDepth routers') : ''}): ${modelDir}\n`,
    );
  }
  const options: LoadOptions = {
    ...(progressBar('loading') ? { onProgress: progressBar('loading') } : {}),
    ...(threads ? { threads } : {}),
    ...(addons.length ? { addons } : {}),
    ...(backend ? { backend } : {}),
    ...(kv ? { kvCacheType: kv } : {}),
    ...(weights ? { weights: weights as WeightFormatOption } : {}),
    ...(args.flag('no-generation-config') ? { generationConfig: false } : {}),
  };
  return loadModel(modelDir, options);
}

/** The policy of --policy, or the model's default. */
export function policyArg(args: Args, model: Model): Policy {
  const spec = args.str('policy');
  return spec !== undefined ? parsePolicy(spec, model.config.numLayers) : model.defaultPolicy.policy;
}

/**
 * Generation options from the sampling flags (the policy is set by the caller, once the model is
 * loaded). Options not given are left out, so the model's generation_config.json supplies them;
 * see lengthDefault for the length.
 */
export function samplingArgs(args: Args, command: string): GenerateOptions {
  const opts: GenerateOptions = {};
  const maxTokens = intArg(args.str('max-tokens'), 'max-tokens', 1, command);
  if (maxTokens !== undefined) opts.maxTokens = maxTokens;
  const rp = numArg(args.str('repetition-penalty'), 'repetition-penalty', command);
  if (rp !== undefined) opts.repetitionPenalty = rp;
  const fp = numArg(args.str('frequency-penalty'), 'frequency-penalty', command);
  if (fp !== undefined) opts.frequencyPenalty = fp;
  const pp = numArg(args.str('presence-penalty'), 'presence-penalty', command);
  if (pp !== undefined) opts.presencePenalty = pp;
  const pw = intArg(args.str('penalty-window'), 'penalty-window', 1, command);
  if (pw !== undefined) opts.penaltyWindow = pw;
  const t = numArg(args.str('temperature'), 'temperature', command, 0);
  if (t !== undefined) opts.temperature = t;
  const k = intArg(args.str('top-k'), 'top-k', 0, command);
  if (k !== undefined) opts.topK = k;
  const p = numArg(args.str('top-p'), 'top-p', command, 0);
  if (p !== undefined) opts.topP = p;
  const seed = intArg(args.str('seed'), 'seed', 0, command, Number.MAX_SAFE_INTEGER);
  if (seed !== undefined) opts.seed = seed;
  const stop = args.list('stop');
  if (stop) opts.stop = stop.map(unescape);
  return opts;
}

/** The command's own length when neither --max-tokens nor the model's max_new_tokens sets one. */
export function lengthDefault(opts: GenerateOptions, model: Model, n: number): void {
  if (opts.maxTokens === undefined && model.generationDefaults.options.maxTokens === undefined) opts.maxTokens = n;
}

/**
 * The fewest layers a token can run under `policy` on `model`: the layers without a router always
 * run (FlexiDepth, SkipLayer), D3 keeps at least its `minLayers`. Other policies: 0.
 */
export function depthFloor(policy: Policy, model: Model): number {
  const L = model.config.numLayers;
  const info = model.info;
  switch (policy.type) {
    case 'none':
      return L;
    case 'flexidepth':
      return L - info.flexiDepthLayers.length;
    case 'skiplayer':
      return L - info.skipRouterLayers.length;
    case 'd3':
      return Math.min(L, policy.minLayers ?? 0);
    default:
      return 0;
  }
}

/** A policy as the CLI syntax writes it, for labels. */
export function policyLabel(p: Policy | undefined): string {
  if (!p || p.type === 'none') return 'none';
  if (p.type === 'speculative') return formatPolicy(p);
  const o = Object.entries(p).filter(([k]) => k !== 'type');
  return o.length
    ? `${p.type}:${o.map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`).join(',')}`
    : p.type;
}
