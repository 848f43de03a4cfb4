/**
 * Loads the native addon and describes its interface. Order tried: the file named by
 * DEPTHGATE_NATIVE_PATH, then node-gyp-build's search (build/Release, build/Debug,
 * prebuilds/<platform>-<arch>/). A failure names every candidate and why it failed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NativeLoadError } from './errors';
import type { NativePenalties, NativeSampling } from './sampling';

/** What native/addon_gguf.cc reads of a GGUF file (the binding's, not part of the public API). */
export interface NativeGgufHeader {
  version: number;
  alignment: number;
  /** Values by key: numbers (BigInt beyond 2^53), booleans, strings; arrays of strings or bools as arrays, numeric arrays as typed arrays. */
  metadata: Record<string, unknown>;
  /** GGUF value type by key, e.g. 'uint32', 'string', 'array[float32]'. */
  metadataTypes: Record<string, string>;
  tensors: { name: string; type: string; dims: number[]; offset: number; bytes: number }[];
}

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
  /** config.json's router_reduction_factor / proj_reduction_factor, when given: checked against the router tensors' shapes. */
  routerReductionFactor?: number;
  projReductionFactor?: number;
  /** Path of config.json, named by errors about what it says. */
  configFile?: string;
}

export interface NativeSequence {
  readonly length: number;
  readonly contextSize: number;
  truncate(length: number): void;
  setSeed(seed: number): void;
  /** @internal K and V of one layer at positions [0, length), in f32 ([length, kvWidth] each): for tests. */
  readKv(layer: number): { k: Float32Array; v: Float32Array };
  dispose(): void;
}

export interface NativeRequest {
  sequence: NativeSequence;
  tokens: Int32Array;
  logits: 'none' | 'last' | 'all';
  /**
   * Sample a token from the last row. With penalties, the sample op applies them to that row's
   * logits in place first (src/sampling.ts, native/backend.h), so logits asked for with a sampled
   * row are the penalised ones the token was drawn from (before temperature, top-k and top-p).
   */
  sample?: NativeSampling;
  /** Index of the generated token this pass's first row produces (row i: genIndex + i; < 1 counts as prompt); absent for prompt passes. */
  genIndex?: number;
  /**
   * Penalties applied to every logits row returned, each over the penalty window that ends at
   * its own token (what a plain pass would sample from there), without a draw: exact mode builds
   * its distributions from these rows. Not with `sample` (which has its own).
   */
  penalties?: NativePenalties;
  /**
   * The rows run every layer whatever the pass's policy: a full-depth request sharing a pass
   * with requests under a skip policy (the scheduler sets it; routers and host plans skip these rows).
   */
  fullDepth?: boolean;
  /**
   * A generation's decode step with another to follow: once it is answered, the model's thread
   * runs that next step (the sampled token, genIndex + 1) while JavaScript handles this one, and
   * answers the next request from it when it is exactly that step (native/engine_ahead.cc). Not
   * when the sampled token is one of `aheadStop`. Only a call of one request runs ahead.
   */
  ahead?: boolean;
  aheadStop?: Int32Array;
}

export interface NativeResponse {
  logits?: Float32Array;
  token?: number;
  /** [rows, layers]: 1 where the layer ran in full; rows = all positions for 'all', else the last. */
  executed: Uint8Array;
  /** [rows, layers]: FlexiDepth router weights w, NaN where there is none. */
  routerWeights: Float32Array;
  /** Model weight bytes the batch pass read (what skipping saves in memory traffic). */
  weightBytes: number;
  /** Where the call's time went, shared by the call's responses (bench:overhead reports it). */
  timing: NativeTiming;
}

/** Milliseconds of one forward() call. */
export interface NativeTiming {
  /** From forward() to the model's thread starting the pass (the thread's wake-up, a pass before it). */
  queueMs: number;
  /** The pass on the model's thread. */
  passMs: number;
  /** From the pass's end to the promise's settling callback on the JavaScript thread. */
  deliverMs: number;
  /** The answer was a step run ahead (NativeRequest.ahead): passMs is only the lookup. */
  ahead: boolean;
}

/** The dtype K and V are stored in. */
export type KvCacheType = 'f32' | 'f16' | 'bf16';
/** 'stored': the checkpoint's dtype; else the block format the weights are quantized to on load. */
export type WeightFormat = 'stored' | 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

export interface NativeModelInfo {
  parameters: number;
  weightBytes: number;
  dtype: string;
  backend: string;
  kvCacheType: KvCacheType;
  weights: WeightFormat;
  /** Milliseconds spent quantizing on load (0 for 'stored'). */
  quantizeMs: number;
  /** The CPU backend's copies at load: Q8_0 matrices repacked, others copied as they are, whether
   * their memory was advised for huge pages, and the milliseconds it all took. */
  repackedMatrices: number;
  placedMatrices: number;
  hugePages: boolean;
  cpuLayoutMs: number;
  /** K and V bytes per position of one sequence, every layer, in the cache dtype. */
  kvBytesPerToken: number;
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
    spec: {
      files: string[];
      config: NativeConfig;
      threads: number;
      prefault: boolean;
      backend: 'cpu' | 'cuda';
      /** Default 'bf16'. */
      kvCacheType?: KvCacheType;
      /** Default 'stored'. */
      weights?: WeightFormat;
    },
    onProgress?: (fraction: number) => void,
    abortFlag?: Int32Array,
  ): Promise<NativeModel>;
  /** A GGUF file's header, parsed and validated natively (native/addon_gguf.cc). */
  readGgufHeader(file: string): NativeGgufHeader;
  buildInfo(): {
    cpuFeatures: string[];
    cpuKernels: string;
    cpuPrefetch: 'l1' | 'l2' | 'off';
    usableProcessors: number;
    backends: string[];
    napiVersion: number;
    /** The CUDA library's load result and its own JSON report ({available, reason, devices}). */
    cuda: { libraryFound: boolean; libraryPath: string; error: string; probe: string };
  };
  kernels: {
    matmul(
      out: Float32Array,
      x: Float32Array,
      rows: number,
      w: NativeWeightArg,
      threads?: number,
      bias?: Float32Array,
    ): void;
    rmsnorm(
      out: Float32Array,
      x: Float32Array,
      rows: number,
      dim: number,
      weight: Float32Array,
      eps: number,
      threads?: number,
    ): void;
    copy(dst: ArrayBufferView, src: ArrayBufferView): void;
    readSum(src: ArrayBufferView, threads: number, streams?: number): number;
    hugePageBuffer(bytes: number): { data: Uint8Array; hugePages: boolean };
  };
}

/** The package root (where package.json, build/ and prebuilds/ are). */
export const packageRoot = path.resolve(__dirname, '..');

/** One binary the loader tried, and why it failed. */
export interface LoadAttempt {
  path: string;
  error: string;
}

let cached: { addon: NativeAddon; path: string } | undefined;

/** Returns the loaded addon, loading it on first use. Throws {@link NativeLoadError}. */
export function native(): NativeAddon {
  cached ??= loadNativeFrom(packageRoot, process.env.DEPTHGATE_NATIVE_PATH);
  return cached.addon;
}

/** Path of the loaded addon binary. */
export function nativePath(): string {
  native();
  return cached!.path;
}

function runtimeLibc(): 'glibc' | 'musl' {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report?.header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

/** glibc version of this process, when it runs on glibc. */
export function glibcVersion(): string | undefined {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report?.header?.glibcVersionRuntime;
}

/**
 * Loads the addon from `root`: `explicit` (DEPTHGATE_NATIVE_PATH) alone when given; otherwise a
 * local build (build/Release, build/Debug), then the prebuilt binaries for this platform
 * (prebuilds/<platform>-<arch>/, tagged glibc or musl). A failure lists every candidate and why.
 */
export function loadNativeFrom(root: string, explicit?: string): { addon: NativeAddon; path: string } {
  const attempts: LoadAttempt[] = [];
  const tryLoad = (file: string): { addon: NativeAddon; path: string } | undefined => {
    if (!fs.existsSync(file)) {
      attempts.push({ path: file, error: 'not found' });
      return undefined;
    }
    // A FIFO or a device (DEPTHGATE_NATIVE_PATH=/dev/zero) would block or never end: refuse it.
    if (!fs.statSync(file).isFile()) {
      attempts.push({ path: file, error: 'not a regular file' });
      return undefined;
    }
    try {
      let addon: NativeAddon;
      if (file.endsWith('.node')) {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        addon = require(file) as NativeAddon;
      } else {
        // require() would read any other name as JavaScript: load it as a native module.
        const m = { exports: {} as NativeAddon };
        process.dlopen(m, file);
        addon = m.exports;
      }
      if (typeof addon?.loadModel !== 'function') throw new Error('not a depthgate addon (no loadModel export)');
      return { addon, path: file };
    } catch (e) {
      attempts.push({ path: file, error: (e as Error).message.split('\n', 1)[0] ?? '' });
      return undefined;
    }
  };
  if (explicit) {
    const got = tryLoad(path.resolve(explicit));
    if (got) return got;
    throw failure(attempts, 'DEPTHGATE_NATIVE_PATH is set but that binary could not be loaded', root);
  }
  for (const local of ['build/Release/depthgate.node', 'build/Debug/depthgate.node']) {
    const got = tryLoad(path.join(root, local));
    if (got) return got;
  }
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const libc = runtimeLibc();
  const prebuilt = fs.existsSync(dir)
    ? fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.node'))
        .sort()
    : [];
  if (prebuilt.length === 0)
    attempts.push({ path: path.join(dir, '*.node'), error: 'no prebuilt binary for this platform' });
  for (const f of prebuilt) {
    const tags = f.split('.');
    const wantsOther = (libc === 'glibc' && tags.includes('musl')) || (libc === 'musl' && tags.includes('glibc'));
    if (wantsOther) {
      attempts.push({
        path: path.join(dir, f),
        error: `built for ${libc === 'glibc' ? 'musl' : 'glibc'}, this system uses ${libc}`,
      });
      continue;
    }
    const got = tryLoad(path.join(dir, f));
    if (got) return got;
  }
  throw failure(attempts, 'no usable native addon was found', root);
}

function failure(attempts: LoadAttempt[], why: string, root: string): NativeLoadError {
  const lines = attempts.map((a) => `  - ${a.path}: ${a.error}`).join('\n');
  const glibc = glibcVersion();
  const platform =
    `${process.platform}-${process.arch}, node ${process.versions.node} (napi ${process.versions.napi})` +
    (glibc ? `, glibc ${glibc}` : ', musl');
  const hasSources = fs.existsSync(path.join(root, 'binding.gyp'));
  return new NativeLoadError(
    `depthgate: ${why} for ${platform}.\nTried:\n${lines}\n` +
      'Prebuilt binaries need x86-64 Linux with glibc >= 2.32 and libstdc++ from GCC 11 or newer. ' +
      (hasSources
        ? 'Rebuild from source with `npm rebuild depthgate --build-from-source` (needs python3, make and a C++17 compiler), ' +
          'or point DEPTHGATE_NATIVE_PATH at a depthgate.node.'
        : 'Point DEPTHGATE_NATIVE_PATH at a depthgate.node.'),
    attempts,
  );
}
