/**
 * The policy a model runs when a call names none (generate, stream, evaluate, measurePerplexity,
 * the CLI without --policy), and why. One rule for every model:
 *
 *   FlexiDepth routers that come with the model as its publisher ships it run by default, the way
 *   the publisher's own code runs them; routers the caller adds run only when a call asks.
 *
 * Routers come with the model in two cases:
 * - in the checkpoint's own weights (its shards, not an add-on file): the official FlexiDepth
 *   checkpoint (DDLlamaForCausalLM, `routing_layers` in config.json), whose own code always routes
 *   those layers at 0.5, or any other checkpoint whose shards carry FlexiDepth routers;
 * - the embedded default model loaded with its default add-on (models/default, DEFAULT_ADDON):
 *   that add-on is how depthgate ships the model, and the CLI loads it when no --addon is given.
 *
 * Add-on files a caller passes (`addons`, `--addon`) are experiments on a base model that stays
 * what it was: they need `{type: 'flexidepth'}` (or `--policy flexidepth`) to run. SkipLayer routers
 * never change the default: no published checkpoint says how they should run. `{type: 'none'}`
 * (`--policy none`) always runs every layer.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_ADDON, defaultModelDir } from './defaultModel';
import type { Policy } from './policy';

/** The policy a model runs when a call names none, and the reason. */
export interface DefaultPolicy {
  policy: Policy;
  /** Why this policy is the default, in words. */
  reason: string;
}

function samePath(a: string, b: string): boolean {
  const real = (p: string): string => {
    try {
      return fs.realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  return real(a) === real(b);
}

/** Whether `dir` with `addons` is the embedded default model with (exactly) its default add-on. */
export function isDefaultModelSetup(dir: string, addons: string[]): boolean {
  const home = defaultModelDir();
  return addons.length === 1 && samePath(dir, home) && samePath(addons[0]!, path.join(home, DEFAULT_ADDON));
}

const layerList = (layers: number[]): string => `[${layers.join(', ')}]`;

/**
 * The default policy of a loaded model. `checkpointFlexiDepthLayers`: the layers whose FlexiDepth
 * routers are in the checkpoint's own weights; `addonFlexiDepthLayers`: those brought by add-ons.
 */
export function chooseDefaultPolicy(o: {
  checkpointFlexiDepthLayers: number[];
  addonFlexiDepthLayers: number[];
  defaultModelSetup: boolean;
}): DefaultPolicy {
  if (o.checkpointFlexiDepthLayers.length)
    return {
      policy: { type: 'flexidepth' },
      reason:
        `the checkpoint carries FlexiDepth routers in its own weights (layers ${layerList(o.checkpointFlexiDepthLayers)}), ` +
        'which the official FlexiDepth code always runs (threshold 0.5)',
    };
  if (o.defaultModelSetup && o.addonFlexiDepthLayers.length)
    return {
      policy: { type: 'flexidepth' },
      reason: `the embedded default model runs its default FlexiDepth add-on ${DEFAULT_ADDON} (layers ${layerList(o.addonFlexiDepthLayers)})`,
    };
  if (o.addonFlexiDepthLayers.length)
    return {
      policy: { type: 'none' },
      reason:
        "the FlexiDepth routers come from add-on files, which run only when a call asks for them (policy {type: 'flexidepth'})",
    };
  return { policy: { type: 'none' }, reason: 'the checkpoint carries no FlexiDepth routers' };
}
