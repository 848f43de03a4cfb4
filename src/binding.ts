/**
 * Loads the native addon and describes its interface. Order tried: the file named by
 * DEPTHGATE_NATIVE_PATH, then node-gyp-build's search (build/Release, build/Debug,
 * prebuilds/<platform>-<arch>/). A failure names every candidate and why it failed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NativeLoadError } from './errors';

export interface NativeConfig {
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeType: 'default' | 'linear' | 'llama3';
  ropeFactor: number;
  ropeLowFreqFactor: number;
  ropeHighFreqFactor: number;
  ropeOriginalMaxPositions: number;
  tieWordEmbeddings: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  slidingWindow: number;
  /** FlexiDepth's config.routing_layers, when config.json has it. */
  routingLayers?: number[];
}

export interface NativeSequence {
  readonly length: number;
  readonly contextSize: number;
  truncate(length: number): void;
  setSeed(seed: number): void;
  dispose(): void;
}

export interface NativeRequest {
  sequence: NativeSequence;
  tokens: Int32Array;
  logits: 'none' | 'last' | 'all';
  sample?: { temperature: number; topK: number; topP: number };
  /** Index of the generated token this pass produces (D3); absent for prompt passes. */
  genIndex?: number;
}

export interface NativeResponse {
  logits?: Float32Array;
  token?: number;
  /** [rows, layers]: 1 where the layer ran in full; rows = all positions for 'all', else the last. */
  executed: Uint8Array;
  /** [rows, layers]: router weights, NaN where none. */
  weights: Float32Array;
  /** Weight bytes the batch pass read. */
  weightBytes: number;
}

export interface NativeModelInfo {
  parameters: number;
  weightBytes: number;
  dtype: string;
  backend: string;
  files: string[];
  tensorNames: string[];
  tensorFiles: number[];
  flexiDepthLayers: number[];
  skipRouterLayers: number[];
}

export interface NativeModel {
  info(): NativeModelInfo;
  createSequence(contextSize: number, seed: number): NativeSequence;
  forward(requests: NativeRequest[], policy?: import('./policy').Policy): Promise<NativeResponse[]>;
  dispose(): void;
}

export interface NativeWeightArg {
  data: ArrayBufferView;
  dtype: 'f32' | 'f16' | 'bf16';
  rows: number;
  cols: number;
}

export interface NativeAddon {
  loadModel(
    spec: { files: string[]; config: NativeConfig; threads: number; prefault: boolean },
    onProgress?: (fraction: number) => void,
    abortFlag?: Int32Array,
  ): Promise<NativeModel>;
  buildInfo(): { cpuFeatures: string[]; cpuKernels: string; backends: string[]; napiVersion: number };
  kernels: {
    matmul(out: Float32Array, x: Float32Array, rows: number, w: NativeWeightArg, threads?: number, bias?: Float32Array): void;
    rmsnorm(out: Float32Array, x: Float32Array, rows: number, dim: number, weight: Float32Array, eps: number, threads?: number): void;
    copy(dst: ArrayBufferView, src: ArrayBufferView): void;
  };
}

/** The package root (where package.json, build/ and prebuilds/ are). */
export const packageRoot = path.resolve(__dirname, '..');

let cached: { addon: NativeAddon; path: string } | undefined;

/** Returns the loaded addon, loading it on first use. Throws {@link NativeLoadError}. */
export function native(): NativeAddon {
  return loadNative().addon;
}

/** Path of the loaded addon binary. */
export function nativePath(): string {
  return loadNative().path;
}

function loadNative(): { addon: NativeAddon; path: string } {
  if (cached) return cached;
  const attempts: { path: string; error: string }[] = [];
  const explicit = process.env.DEPTHGATE_NATIVE_PATH;
  if (explicit) {
    try {
      cached = { addon: require(path.resolve(explicit)) as NativeAddon, path: path.resolve(explicit) };
      return cached;
    } catch (e) {
      attempts.push({ path: explicit, error: (e as Error).message });
      throw failure(attempts, 'DEPTHGATE_NATIVE_PATH is set but that binary could not be loaded');
    }
  }
  let resolved: string | undefined;
  try {
    // node-gyp-build's resolver returns the best match without loading it.
    const gypBuild = require('node-gyp-build') as { resolve(dir: string): string };
    resolved = gypBuild.resolve(packageRoot);
  } catch (e) {
    attempts.push({ path: path.join(packageRoot, 'build/Release/*.node'), error: 'not found' });
    attempts.push({
      path: path.join(packageRoot, `prebuilds/${process.platform}-${process.arch}/*.node`),
      error: (e as Error).message.split('\n')[0],
    });
  }
  if (resolved) {
    try {
      cached = { addon: require(resolved) as NativeAddon, path: resolved };
      return cached;
    } catch (e) {
      attempts.push({ path: resolved, error: (e as Error).message });
    }
  }
  throw failure(attempts, 'no usable native addon was found');
}

function failure(attempts: { path: string; error: string }[], why: string): NativeLoadError {
  const lines = attempts.map((a) => `  - ${a.path}: ${a.error}`).join('\n');
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    ?.glibcVersionRuntime;
  const platform = `${process.platform}-${process.arch}, node ${process.versions.node} (napi ${process.versions.napi})` +
    (glibc ? `, glibc ${glibc}` : '');
  const hasSources = fs.existsSync(path.join(packageRoot, 'binding.gyp'));
  return new NativeLoadError(
    `depthgate: ${why} for ${platform}.\nTried:\n${lines}\n` +
      (hasSources
        ? 'Rebuild from source with `npm rebuild depthgate` (needs python3, make and a C++17 compiler), ' +
          'or point DEPTHGATE_NATIVE_PATH at a depthgate.node.'
        : 'Point DEPTHGATE_NATIVE_PATH at a depthgate.node.'),
    attempts,
  );
}
