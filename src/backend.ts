/**
 * Which compute backend runs a model. The CUDA backend is a separate library
 * (libdepthgate_cuda.so next to the addon) that the addon loads at run time; this module asks the
 * addon what it found and picks the backend for a load.
 */
import { native } from './binding';
import { BackendUnavailableError, InvalidOptionError } from './errors';
import type { LoadOptions } from './options';

/** One GPU the CUDA backend can see. */
export interface GpuInfo {
  /** Device name, e.g. "NVIDIA H100 80GB HBM3". */
  name: string;
  /** Compute capability, e.g. "9.0". */
  computeCapability: string;
  /** Device memory in bytes. */
  memoryBytes: number;
}

/** What the CUDA backend can do here, and why not when it cannot. */
export interface CudaStatus {
  /** The CUDA library is present next to the addon (or at $DEPTHGATE_CUDA_LIB) and loads. */
  compiled: boolean;
  /** A usable GPU (compute capability 8.0 or newer) is there. */
  available: boolean;
  /** Why CUDA cannot be used, when it cannot. */
  reason?: string;
  /** GPUs seen. */
  devices: GpuInfo[];
}

/**
 * Whether 'auto' may pick CUDA. False until the GPU parity tests (test/cuda-gpu.test.ts) have
 * passed on a GPU: an unvalidated backend is used only when asked for by name.
 */
export const CUDA_VALIDATED = false;

let cached: CudaStatus | undefined;

/** Asks the addon about the CUDA library and the GPUs (once per process). */
export function cudaStatus(): CudaStatus {
  if (cached) return cached;
  const c = native().buildInfo().cuda;
  let report: { available?: boolean; reason?: string; devices?: GpuInfo[] } = {};
  try {
    report = JSON.parse(c.probe) as typeof report;
  } catch {
    report = { available: false, reason: `unreadable CUDA probe report: ${c.probe}` };
  }
  const available = c.libraryFound && report.available === true;
  const reason = !c.libraryFound
    ? `the CUDA backend library is not installed with this build (${c.error || c.libraryPath})`
    : available
      ? undefined
      : (report.reason ?? 'no usable GPU');
  cached = {
    compiled: c.libraryFound,
    available,
    ...(reason ? { reason } : {}),
    devices: (report.devices ?? []).map((d) => ({
      name: d.name,
      computeCapability: d.computeCapability,
      memoryBytes: d.memoryBytes,
    })),
  };
  return cached;
}

/**
 * The backend a load uses: the option, else $DEPTHGATE_BACKEND, else 'auto'. 'auto' picks CUDA
 * when it is usable (and validated, see CUDA_VALIDATED) and otherwise the CPU, with the reason;
 * 'cuda' without a usable GPU throws BackendUnavailableError.
 */
export function resolveBackend(option: LoadOptions['backend']): { backend: 'cpu' | 'cuda'; reason?: string } {
  let requested: string = option ?? 'auto';
  if (option === undefined && process.env.DEPTHGATE_BACKEND) {
    requested = process.env.DEPTHGATE_BACKEND;
    if (!['auto', 'cpu', 'cuda'].includes(requested))
      throw new InvalidOptionError('DEPTHGATE_BACKEND', `must be auto, cpu or cuda, got ${JSON.stringify(requested)}`);
  }
  if (requested === 'cpu') return { backend: 'cpu' };
  const cuda = cudaStatus();
  if (requested === 'cuda') {
    if (!cuda.available) throw new BackendUnavailableError('cuda', cuda.reason ?? 'no usable GPU');
    return { backend: 'cuda' };
  }
  if (cuda.available && !CUDA_VALIDATED)
    return {
      backend: 'cpu',
      reason: "CUDA not used: the CUDA backend has not been validated on a GPU yet; ask for backend 'cuda' to try it",
    };
  return cuda.available ? { backend: 'cuda' } : { backend: 'cpu', reason: `CUDA not used: ${cuda.reason}` };
}
