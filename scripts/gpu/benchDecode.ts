/**
 * depthgate's decode benchmarks on the random bf16 checkpoints bench_torch.py wrote (its JSON
 * names them and holds the ceilings measured in the same call):
 * - batch 1, 8 and 32 decode tokens/s (concurrent generate() calls, which the scheduler batches
 *   into one pass per step), batch 1 against the floor: the bytes a step must read (every layer's
 *   weights, the LM head, one embedding row, the KV cache read so far) over the copy bandwidth;
 * - static and D3 with k of L layers skipped (k = L/4 and L/2: 8 and 16 of 32) against the ideal
 *   byte saving (a skipped layer still reads its K/V projections);
 * - FlexiDepth with the threshold set to skip 25% and 50% of the routed (token, layer) pairs
 *   (quantiles of the routers' weights on a calibration prompt), against dense (policy none),
 *   with the skip rate actually reached and the ideal from the plan as executed.
 * Time per step is (time of T tokens - time of 1 token) / (T - 1), so prefill drops out.
 *   node benchDecode.js --models bench-torch.json --out FILE [--b cuda|cpu] [--steps 48] [--budget 120]
 */
import * as fs from 'node:fs';

import {
  backendB,
  kvOption,
  KvDtype,
  loadDepthgate,
  log,
  ModelLike,
  parseArgs,
  PolicyLike,
  randomTokens,
  supportedKvDtypes,
  writeJson,
} from './common';

interface Shape {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kv: number;
  head_dim: number;
  tied: boolean;
}
interface ModelEntry {
  name: string;
  dir: string;
  shape: Shape;
  routers: boolean;
}

/** Bytes of one layer's parts (bf16 weights). */
export function layerBytes(s: Shape): { kv: number; rest: number; router: number; adapter: number } {
  const d = s.hidden,
    qd = s.heads * s.head_dim,
    kvd = s.kv * s.head_dim,
    r = Math.floor(d / 16),
    m = Math.floor(s.intermediate / 16);
  return {
    kv: 2 * (2 * kvd * d) + 2 * d, // K and V projections and the input norm: read for every token
    rest: 2 * (2 * qd * d + 3 * s.intermediate * d) + 2 * d, // Q, O, gate, up, down, post-attention norm
    router: 2 * (2 * r * d + d + r),
    adapter: 2 * (3 * m * d),
  };
}

/** Bytes a batch-1 decode step reads when `run[l]` says which layers run in full. */
export function stepBytes(
  s: Shape,
  vocab: number,
  run: boolean[],
  ctx: number,
  kvBytes: number,
  routed: boolean,
): number {
  const b = layerBytes(s);
  let total = 2 * vocab * s.hidden + 2 * s.hidden + 2 * s.hidden; // LM head, one embedding row, the final norm
  for (const r of run) total += b.kv + (r ? b.rest : 0) + (routed ? b.router + (r ? 0 : b.adapter) : 0);
  return total + ctx * s.layers * 2 * s.kv * s.head_dim * kvBytes; // K and V read so far
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const input = JSON.parse(fs.readFileSync(args.models, 'utf8')) as {
    ceilings?: { copyGBs: number };
    models: ModelEntry[];
  };
  const steps = Number(args.steps ?? 48);
  const budgetMs = Number(args.budget ?? 120) * 1000;
  const t0 = Date.now();
  const dg = loadDepthgate();
  const copy = input.ceilings?.copyGBs ?? null;
  const out: Record<string, unknown> = {
    b: args.b ?? 'cuda',
    steps,
    prompt: 16,
    copyGBs: copy,
    models: [] as unknown[],
    skipped: [] as string[],
  };
  const skipped = out.skipped as string[];
  const timeLeft = () => budgetMs - (Date.now() - t0);

  for (const m of input.models) {
    const entry: Record<string, unknown> = { name: m.name, shape: m.shape };
    (out.models as unknown[]).push(entry);
    let model: ModelLike | undefined;
    try {
      const kv = await supportedKvDtypes(dg, m.dir).catch(() => ({ dtypes: [] as KvDtype[], note: '' }));
      const kvChoice = kv.dtypes.includes('bf16') ? 'bf16' : 'default';
      const lt = Date.now();
      model = await dg.loadModel(m.dir, { ...backendB(args.b ?? 'cuda'), ...kvOption(kvChoice) });
      entry.loadSeconds = (Date.now() - lt) / 1000;
      entry.kvCache = kvChoice === 'default' ? 'the build default' : kvChoice;
      entry.backend = model.info.backend;
      const vocab = model.config.vocabSize;
      const L = m.shape.layers;
      const kvBytes = kvChoice === 'default' ? 4 : 2; // the default cache is f32 in builds without the option
      const ctx = 16 + steps / 2; // mean context over the timed steps
      const denseBytes = stepBytes(m.shape, vocab, Array(L).fill(true), ctx, kvBytes, false);
      entry.denseBytesPerStep = denseBytes;
      if (copy) entry.floorMs = (denseBytes / (copy * 1e9)) * 1e3;

      // ms per decode step for `batch` concurrent sequences under `policy`; executed flags per token.
      // Measured twice: msPerStep is the mean, spread the difference (a smaller gap between two
      // configurations is noise).
      const measure = async (
        batch: number,
        policy: PolicyLike,
      ): Promise<{ msPerStep: number; spreadMs: number; tokensPerSecond: number; executed: number[][] }> => {
        const prompts = Array.from({ length: batch }, (_, i) =>
          randomTokens(16, 4, Math.min(vocab, 100000) - 8, 1000 + i),
        );
        const executed: number[][] = [];
        const run = async (n: number, collect: boolean): Promise<number> => {
          const s = performance.now();
          await Promise.all(
            prompts.map((tokens, i) =>
              model!.generate(
                { tokens },
                {
                  maxTokens: n,
                  stopOnEos: false,
                  policy,
                  onToken: collect && i === 0 ? (t) => executed.push(Array.from(t.executed)) : undefined,
                },
              ),
            ),
          );
          return performance.now() - s;
        };
        await run(2, false);
        const ms: number[] = [];
        for (let rep = 0; rep < 2; rep++) {
          const one = await run(1, false);
          const many = await run(steps, rep === 0);
          ms.push((many - one) / (steps - 1));
        }
        const mean = (ms[0] + ms[1]) / 2;
        // The first token comes from the prompt pass; the rest are the decode steps timed.
        return {
          msPerStep: mean,
          spreadMs: Math.abs(ms[0] - ms[1]),
          tokensPerSecond: (batch * 1000) / mean,
          executed: executed.slice(1),
        };
      };

      const dense: Record<string, number> = {};
      entry.dense = [];
      for (const batch of [1, 8, 32]) {
        if (timeLeft() < 5000) {
          skipped.push(`${m.name} dense batch ${batch}: the time budget ran out`);
          continue;
        }
        const r = await measure(batch, { type: 'none' });
        dense[batch] = r.msPerStep;
        (entry.dense as unknown[]).push({
          batch,
          msPerStep: r.msPerStep,
          spreadMs: r.spreadMs,
          tokensPerSecond: r.tokensPerSecond,
          ...(batch === 1 && entry.floorMs ? { ratioToFloor: r.msPerStep / (entry.floorMs as number) } : {}),
        });
        log(
          `${m.name} dense batch ${batch}: ${r.tokensPerSecond.toFixed(1)} tokens/s (${r.msPerStep.toFixed(2)} ms/step)`,
        );
      }

      if (L >= 4 && dense[1]) {
        entry.skipping = [];
        for (const k of [L / 4, L / 2].map(Math.floor)) {
          const mid = Math.floor(L / 2 - k / 2);
          const skip = Array.from({ length: k }, (_, i) => mid + i);
          const run = Array.from({ length: L }, (_, l) => !skip.includes(l));
          const ideal = dense[1] * (stepBytes(m.shape, vocab, run, ctx, kvBytes, false) / denseBytes);
          const policies: [string, PolicyLike][] = [
            ['static', { type: 'static', skipLayers: skip }],
            ['d3', { type: 'd3', alpha: 0.01, start: 0, minLayers: L - k }],
          ];
          for (const [name, policy] of policies) {
            if (timeLeft() < 5000) {
              skipped.push(`${m.name} ${name} k=${k}: the time budget ran out`);
              continue;
            }
            const r = await measure(1, policy);
            const realised = (dense[1] - r.msPerStep) / (dense[1] - ideal);
            (entry.skipping as unknown[]).push({
              policy: name,
              skipped: k,
              of: L,
              msPerStep: r.msPerStep,
              spreadMs: r.spreadMs,
              denseMs: dense[1],
              idealMs: ideal,
              shareOfIdealSaving: realised,
            });
            log(
              `${m.name} ${name} skipping ${k}/${L}: ${r.msPerStep.toFixed(2)} ms/step, ideal ${ideal.toFixed(2)}, ${(realised * 100).toFixed(0)}% of the ideal saving`,
            );
          }
        }
      }

      if (m.routers && dense[1] && timeLeft() > 10000) {
        // Calibration: the routers' weights on the decode steps themselves (greedy, threshold 0.5),
        // as the hidden states they see depend on what ran before.
        const w: number[] = [];
        await model.generate(
          { tokens: randomTokens(16, 4, Math.min(vocab, 100000) - 8, 77) },
          {
            maxTokens: 32,
            stopOnEos: false,
            policy: { type: 'flexidepth' },
            onToken: (t) => {
              for (const x of Array.from((t as unknown as { routerWeights?: ArrayLike<number> }).routerWeights ?? []))
                if (!Number.isNaN(x)) w.push(x);
            },
          },
        );
        w.sort((a, b) => a - b);
        if (!w.length) throw new Error('the FlexiDepth calibration saw no router weights');
        entry.flexidepth = [];
        for (const target of [0.25, 0.5]) {
          if (timeLeft() < 5000) {
            skipped.push(`${m.name} flexidepth ${target}: the time budget ran out`);
            continue;
          }
          // run = w > threshold, so the threshold at the target quantile skips about that share;
          // skipping changes the states later routers see, so one correction follows a miss.
          let q = target,
            threshold = 0,
            skippedPairs = 0,
            pairs = 0,
            idealBytes = 0,
            attempts = 0;
          let r = { msPerStep: 0, spreadMs: 0, tokensPerSecond: 0, executed: [] as number[][] };
          for (; attempts < 2; attempts++) {
            threshold = w[Math.min(w.length - 1, Math.max(0, Math.floor(q * w.length)))];
            r = await measure(1, { type: 'flexidepth', threshold });
            skippedPairs = 0;
            pairs = 0;
            idealBytes = 0;
            for (const ex of r.executed) {
              const run = ex.map((x) => x === 1);
              skippedPairs += run.filter((x) => !x).length;
              pairs += run.length;
              idealBytes += stepBytes(m.shape, vocab, run, ctx, kvBytes, true);
            }
            const got = pairs ? skippedPairs / pairs : target;
            if (Math.abs(got - target) <= 0.07 || timeLeft() < 10000) break;
            q = Math.min(0.99, Math.max(0.01, q + (target - got)));
          }
          const ideal = dense[1] * (idealBytes / Math.max(1, r.executed.length) / denseBytes);
          (entry.flexidepth as unknown[]).push({
            targetSkip: target,
            threshold,
            attempts: attempts + (attempts < 2 ? 1 : 0),
            skipped: pairs ? skippedPairs / pairs : null,
            msPerStep: r.msPerStep,
            spreadMs: r.spreadMs,
            denseMs: dense[1],
            speedupVsDense: dense[1] / r.msPerStep,
            idealMs: ideal,
            shareOfIdealSaving: (dense[1] - r.msPerStep) / (dense[1] - ideal),
          });
          log(
            `${m.name} flexidepth threshold ${threshold.toFixed(3)}: ${pairs ? ((100 * skippedPairs) / pairs).toFixed(0) : '?'}% skipped, ${r.msPerStep.toFixed(2)} ms/step, ${(dense[1] / r.msPerStep).toFixed(2)}x dense`,
          );
        }
      }
    } catch (e) {
      entry.error = (e as Error).message;
      log(`${m.name}: ${(e as Error).message}`);
    } finally {
      await model?.dispose();
    }
    writeJson(args.out, out);
  }
  out.seconds = (Date.now() - t0) / 1000;
  writeJson(args.out, out);
  process.exitCode = (out.models as { error?: string }[]).some((x) => x.error) ? 1 : 0;
}

if (require.main === module) void main();
