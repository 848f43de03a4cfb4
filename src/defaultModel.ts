/**
 * The embedded default model, shipped in the package under models/default: a 12-layer
 * Llama-architecture model trained from scratch on the King James Bible by the scripts in
 * train/ (see models/default/README.md for the data, licence and training record), with
 * FlexiDepth routers and adapters as add-on files next to it. `generate` with no model
 * directory uses it with its default FlexiDepth add-on; loaded with exactly that add-on, the model's
 * default policy is flexidepth (the rule is in src/defaultPolicy.ts, shared with checkpoints that
 * carry routers in their own weights).
 */
import * as path from 'node:path';
import type { Policy } from './policy';

/** The add-on that the default model runs with by default (FlexiDepth routers at the lowest skip penalty, 3e-4: the best perplexity of the four). */
export const DEFAULT_ADDON = 'flexidepth-p3e-4.safetensors';

/** Returns the default model's directory (inside the installed package). */
export function defaultModelDir(): string {
  return path.resolve(__dirname, '..', 'models', 'default');
}

/** The add-on of the default model's SkipLayer routers. */
const SKIPLAYER_ADDON = 'skiplayer.safetensors';

/**
 * The default model's directory, the add-on files it runs with and the policy they serve (its
 * `defaultPolicy` when loaded with them): FlexiDepth ({@link DEFAULT_ADDON}), or with
 * `{policy: 'skiplayer'}` its SkipLayer routers.
 */
export function defaultModelSetup(options?: { policy?: 'flexidepth' | 'skiplayer' | undefined }): {
  dir: string;
  addons: string[];
  policy: Policy;
} {
  const dir = defaultModelDir();
  if (options?.policy === 'skiplayer')
    return { dir, addons: [path.join(dir, SKIPLAYER_ADDON)], policy: { type: 'skiplayer' } };
  return { dir, addons: [path.join(dir, DEFAULT_ADDON)], policy: { type: 'flexidepth' } };
}
