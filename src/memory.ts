/**
 * The memory budget a model's KV caches (and evaluate's logits) are held to. By default it is
 * 90% of the memory this process may use, less the weights: in a container that is the cgroup's
 * memory limit (process.constrainedMemory()), not the machine's RAM, so a sequence that cannot
 * fit is refused with OutOfMemoryError instead of the kernel's OOM killer ending the process.
 */
import * as os from 'node:os';

/** @internal Where the limit comes from; tests replace these to stand in for a container. */
export const memorySources = {
  /** The cgroup (container) limit: Node returns 0, undefined or a huge number when there is none. */
  constrained: (): number | undefined =>
    (process as { constrainedMemory?: () => number | undefined }).constrainedMemory?.(),
  /** The machine's memory. */
  total: (): number => os.totalmem(),
};

/** Bytes this process may use: the container's limit when it has one below the machine's memory. */
export function processMemoryLimit(): number {
  const total = memorySources.total();
  const limit = memorySources.constrained();
  return typeof limit === 'number' && Number.isFinite(limit) && limit > 0 && limit < total ? limit : total;
}

/** The default budget for a model whose weights take `weightBytes`. */
export function defaultMemoryBudget(weightBytes: number): number {
  return Math.max(0, Math.floor(processMemoryLimit() * 0.9) - weightBytes);
}

/** Bytes for messages, in the unit that shows them (a small sequence's KV cache is megabytes). */
export function formatBytes(b: number): string {
  if (b < 2 ** 20) return `${(b / 2 ** 10).toFixed(1)} KiB`;
  if (b < 2 ** 30) return `${(b / 2 ** 20).toFixed(2)} MiB`;
  return `${(b / 2 ** 30).toFixed(2)} GiB`;
}
