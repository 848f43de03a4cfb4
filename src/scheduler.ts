/**
 * The batch scheduler of a model: every request waiting for a forward pass joins one queue, and
 * the requests waiting together run as one batched pass (one request per sequence per pass), so
 * concurrent generations share their passes. A pass runs one skip policy; full-depth requests
 * (policy `none`: prompts under `none`, plain generations, exact mode's verifications) join a pass
 * of any policy, their rows marked to run every layer, so one sequence's verify rows share the
 * pass of other sequences' draft rows.
 */
import type { NativeModel, NativeRequest, NativeResponse, NativeSequence } from './binding';
import { DisposedError, fromNative } from './errors';
import type { SkipPolicy } from './policy';

/** Longest slice of input tokens fed to one forward pass. */
export const PREFILL_SLICE = 512;

interface Pending {
  request: NativeRequest;
  policy: SkipPolicy;
  policyKey: string;
  /** Under `none`: its rows may share a pass of any policy. */
  fullDepth: boolean;
  resolve(r: NativeResponse): void;
  reject(e: unknown): void;
}

/** @internal Queues forward requests of one model and runs them in batches. */
export class Scheduler {
  private queue: Pending[] = [];
  private inFlight: Promise<void> | null = null;

  /** @param model the native model, or null once it is disposed */
  constructor(private readonly model: () => NativeModel | null) {}

  /**
   * Queues one request; requests waiting together under the same policy run as one batch, and
   * full-depth ones join it whatever its policy.
   */
  run(request: NativeRequest, policy: SkipPolicy = { type: 'none' }): Promise<NativeResponse> {
    return new Promise((resolve, reject) => {
      const fullDepth = policy.type === 'none';
      this.queue.push({ request, policy, policyKey: JSON.stringify(policy), fullDepth, resolve, reject });
      if (!this.inFlight) this.inFlight = this.pump();
    });
  }

  /** Rejects every queued request with DisposedError and waits for the pass already running. */
  async close(): Promise<void> {
    for (const p of this.queue.splice(0)) p.reject(new DisposedError('the model'));
    if (this.inFlight) await this.inFlight.catch(() => undefined);
  }

  private async pump(): Promise<void> {
    // A disposed model stops at once (dispose() awaits this loop).
    while (this.model()) {
      // Yield before every batch, so that requests made in the same tick join it, and so that the
      // generations the last batch served are back in the queue (their next steps are queued from
      // promise continuations that run after this loop's): without it, generations that once fell
      // out of step (one started while another's pass ran) alternate in separate batches forever.
      await new Promise<void>((r) => setImmediate(r));
      const nm = this.model();
      const first = this.queue[0];
      if (!first || !nm) break;
      // The first request's policy (when it is full-depth: that of the first request under a skip
      // policy, if any), its requests and the full-depth ones, one request per sequence, in queue order.
      const lead = first.fullDepth ? (this.queue.find((p) => !p.fullDepth) ?? first) : first;
      const batch: [Pending, ...Pending[]] = [first];
      const seen = new Set<NativeSequence>([first.request.sequence]);
      this.queue = this.queue.slice(1).filter((p) => {
        if (seen.has(p.request.sequence) || !(p.fullDepth || p.policyKey === lead.policyKey)) return true;
        seen.add(p.request.sequence);
        batch.push(p);
        return false;
      });
      await this.runBatch(nm, batch, lead.policy);
    }
    this.inFlight = null;
  }

  /**
   * One pass for a non-empty batch under `policy`: the requests under another policy are
   * full-depth ones (their rows run every layer).
   */
  private async runBatch(
    nm: NativeModel,
    batch: [Pending, ...Pending[]],
    policy: SkipPolicy = batch[0].policy,
  ): Promise<void> {
    const [first] = batch;
    const mixed = policy.type !== 'none';
    try {
      const out = await nm.forward(
        batch.map((p) => (mixed && p.fullDepth ? { ...p.request, fullDepth: true } : p.request)),
        policy,
      );
      batch.forEach((p, i) => {
        const r = out[i];
        if (r) p.resolve(r);
        else p.reject(new Error(`the addon returned ${out.length} responses for ${batch.length} requests`));
      });
    } catch (e) {
      if (batch.length === 1) first.reject(fromNative(e));
      else for (const p of batch) await this.runBatch(nm, [p]); // find which request failed
    }
  }
}
