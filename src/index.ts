/**
 * depthgate: run Hugging Face Llama-family models from TypeScript.
 *
 * ```ts
 * import { loadModel } from 'depthgate';
 * await using model = await loadModel('/path/to/model');
 * const r = await model.generate('Once upon a time', { maxTokens: 32 });
 * ```
 */
import { glibcVersion, native, nativePath } from './binding';
import { cudaStatus, type CudaStatus } from './backend';

export { loadModel, Model, Sequence, GenerationStream } from './model';
export type { GenerateInput, ModelInfo, EvaluateResult, EvaluateOptions } from './model';
export type { GenerateOptions, GenerateResult, LoadOptions, TokenChunk, DepthStats } from './options';
export type { SamplingOptions, GenerationDefaults, ResolvedSampling } from './sampling';
export type {
  Policy,
  NonePolicy,
  StaticPolicy,
  FlexiDepthPolicy,
  SkipLayerPolicy,
  D3Policy,
  SkipPolicy,
  SpeculativePolicy,
} from './policy';
export type { SpeculativeStats } from './speculative';
export { validatePolicy, parsePolicy, formatPolicy, d3Depth, d3LayerSet } from './policy';
export type { ChatMessage, ChatRole } from './chatTemplate';
export { ChatSession } from './chatSession';
export type { ChatSessionOptions } from './chatSession';
export { Tokenizer } from './tokenizer';
export type { ModelConfig, Architecture } from './config';
export { SUPPORTED_ARCHITECTURES, readModelConfig } from './config';
export { defaultModelDir, defaultModelSetup, DEFAULT_ADDON } from './defaultModel';
export type { DefaultPolicy } from './defaultPolicy';
export { FLEXIDEPTH_ARCHITECTURE } from './flexiDepthConfig';
export { measurePerplexity } from './perplexity';
export type { PerplexityOptions, PerplexityResult } from './perplexity';
export { depthColor, renderDepthAnsi, depthLegendAnsi, renderDepthViewAnsi, renderDepthHtml } from './depthView';
export type { DepthSpan, DepthViewInput, DepthAnsiOptions } from './depthView';
export { cudaStatus, resolveBackend } from './backend';
export type { CudaStatus, GpuInfo } from './backend';
export { createServer, DepthgateServer } from './server/server';
export type { ServerState, ServerStats } from './server/server';
export type { ServerOptions, RequestRecord } from './server/options';
export type { ErrorBody } from './server/errors';
export {
  DepthgateError,
  ModelFormatError,
  ModelFileError,
  UnsupportedModelError,
  InvalidOptionError,
  ContextOverflowError,
  OutOfMemoryError,
  DisposedError,
  BusyError,
  AbortError,
  BackendUnavailableError,
  NativeLoadError,
} from './errors';
export type { DepthgateErrorCode } from './errors';

/** What this build of depthgate has and what this machine offers. */
export interface BuildInfo {
  /** Package version. */
  version: string;
  /** Backends compiled in. */
  backends: string[];
  /** Path of the native addon that was loaded. */
  addonPath: string;
  /** x86-64 features the processor reports (avx2, fma, f16c, avx512f, avx512bw). */
  cpuFeatures: string[];
  /** The CPU kernel variant in use: avx512, avx2 or scalar. */
  cpuKernels: string;
  /**
   * Where the decode kernels' software prefetch asks for the next weight rows: `l2` (the default on
   * AMD processors), `l1` (elsewhere) or `off`. `DEPTHGATE_CPU_PREFETCH=0|off|l1|l2` chooses it.
   */
  cpuPrefetch: 'l1' | 'l2' | 'off';
  /**
   * Processors this process may use: its CPU affinity mask, capped by a cgroup CPU quota (docker
   * `--cpus`, Kubernetes limits). The default thread count of {@link loadModel}.
   */
  usableProcessors: number;
  /** Node-API version the addon was built for. */
  napiVersion: number;
  /** True when the addon came from the package's prebuilt binaries (not a local build). */
  prebuilt: boolean;
  /** glibc version of this process. */
  glibc?: string;
  /** CUDA: whether the backend library is there and usable, why not, and the GPUs seen. */
  cuda: CudaStatus;
}

/** Reports the version, the compiled backends and the CPU features in use. */
export function getBuildInfo(): BuildInfo {
  const b = native().buildInfo();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require('../package.json') as { version: string }).version;
  const addonPath = nativePath();
  return {
    version,
    backends: b.backends,
    addonPath,
    cpuFeatures: b.cpuFeatures,
    cpuKernels: b.cpuKernels,
    cpuPrefetch: b.cpuPrefetch,
    usableProcessors: b.usableProcessors,
    napiVersion: b.napiVersion,
    prebuilt: addonPath.split(/[\\/]/).includes('prebuilds'),
    ...(glibcVersion() ? { glibc: glibcVersion() } : {}),
    cuda: cudaStatus(),
  };
}
