/**
 * The embedded default model. Until a trained model ships with the package, the default is a
 * small random-weight Llama written on first use into a cache folder: it exercises the whole
 * engine but produces meaningless text.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeTinyModel } from './tinyModel';

/** Options of the default model; bump DEFAULT_MODEL_VERSION when they change. */
const DEFAULT_MODEL_VERSION = 1;
const DEFAULT_MODEL_OPTIONS = { arch: 'llama', layers: 4, hidden: 128, heads: 4, kvHeads: 2, intermediate: 256, dtype: 'bf16', seed: 1 } as const;

/** Where the default model lives: $DEPTHGATE_CACHE_DIR, else $XDG_CACHE_HOME/depthgate, else ~/.cache/depthgate. */
export function cacheDir(): string {
  if (process.env.DEPTHGATE_CACHE_DIR) return process.env.DEPTHGATE_CACHE_DIR;
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'depthgate');
}

/** Returns the default model's directory, writing it first if needed. */
export function defaultModelDir(): string {
  const dir = path.join(cacheDir(), `default-model-v${DEFAULT_MODEL_VERSION}`);
  if (fs.existsSync(path.join(dir, 'config.json'))) return dir;
  // Write to a temporary folder and rename, so a crash never leaves a half-written model.
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const tmp = fs.mkdtempSync(dir + '.tmp-');
  writeTinyModel(tmp, { ...DEFAULT_MODEL_OPTIONS });
  try {
    fs.renameSync(tmp, dir);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(path.join(dir, 'config.json'))) throw e;
  }
  return dir;
}
