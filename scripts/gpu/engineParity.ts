/**
 * Engine parity, backend B against the CPU backend, on tiny models (bf16, f16, f32 weights; GQA;
 * biases; tied embeddings; head_dim 128; Qwen2 q/k/v biases; a Mistral sliding window;
 * FlexiDepth and SkipLayer routers; D3), for every policy and every KV cache dtype the build
 * accepts: prefill (40 rows: the tiled matmul paths, partial row sets), decode one token at a
 * time through the cache (the matrix-vector paths), a context longer than one 256-row chunk, and
 * greedy generation. The plan as executed must be identical and the logits within TOL.
 *
 * Shared by test/cuda-gpu.test.ts (jest, on a GPU machine) and the one-call GPU check
 * (scripts/gpu-check.sh runs the compiled copy with plain node: `node engineParity.js --out F
 * [--b cuda|cpu] [--quick]`; --b cpu compares against the CPU with another thread count, which
 * is what the dry run does where there is no GPU).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  backendB,
  Depthgate,
  kvOption,
  KvDtype,
  loadDepthgate,
  log,
  ModelLike,
  parseArgs,
  PolicyLike,
  randomTokens,
  relError,
  supportedKvDtypes,
  writeJson,
} from './common';

/**
 * max |b - a| / max |a| per logits row. f32 accumulation in another order (and the GPU's
 * tensor-core paths for prompts of more than 8 rows) stays far under 2e-3, while an indexing bug
 * gives O(1) errors. With a 16-bit cache both backends round K and V once, but a value that lands
 * on a rounding boundary can round the other way on one of them: one cache element then moves by
 * an ulp (2^-11 relative for f16, 2^-8 for bf16), hence the looser bounds.
 */
export const TOL: Record<KvDtype | 'default', number> = { default: 2e-3, f32: 2e-3, f16: 4e-3, bf16: 1e-2 };

export interface ParityCase {
  name: string;
  model: Record<string, unknown>;
  policies: PolicyLike[];
}

const basic: PolicyLike[] = [
  { type: 'none' },
  { type: 'static', skipLayers: [1] },
  { type: 'static', skipAttention: [0, 2], skipMlp: [1] },
];

export const PARITY_CASES: ParityCase[] = [
  { name: 'llama bf16 GQA', model: { layers: 3, dtype: 'bf16', heads: 4, kvHeads: 2, seed: 1 }, policies: basic },
  { name: 'llama f16', model: { layers: 3, dtype: 'f16', seed: 2 }, policies: basic },
  {
    name: 'llama f32 tied, biases',
    model: { layers: 3, dtype: 'f32', tied: true, bias: true, seed: 3 },
    policies: basic,
  },
  {
    name: 'llama bf16 headDim 128',
    model: { layers: 3, dtype: 'bf16', hidden: 256, heads: 2, kvHeads: 1, headDim: 128, intermediate: 512, seed: 4 },
    policies: basic,
  },
  { name: 'qwen2 bf16 (q/k/v biases)', model: { arch: 'qwen2', layers: 3, dtype: 'bf16', seed: 5 }, policies: basic },
  {
    name: 'mistral bf16 sliding window',
    model: { arch: 'mistral', layers: 3, dtype: 'bf16', slidingWindow: 7, seed: 6 },
    policies: basic,
  },
  {
    name: 'flexidepth bf16',
    model: { layers: 6, dtype: 'bf16', seed: 11, flexidepth: { layers: [2, 3, 4, 5] } },
    policies: [{ type: 'none' }, { type: 'flexidepth' }, { type: 'flexidepth', threshold: 0.3 }],
  },
  {
    name: 'skiplayer (layer) bf16',
    model: { layers: 5, dtype: 'bf16', seed: 4, skiplayer: { mode: 'layer' } },
    policies: [{ type: 'none' }, { type: 'skiplayer' }],
  },
  {
    name: 'skiplayer (module) f16',
    model: { layers: 5, dtype: 'f16', seed: 4, skiplayer: { mode: 'module' } },
    policies: [{ type: 'none' }, { type: 'skiplayer' }],
  },
  { name: 'd3 bf16', model: { layers: 6, dtype: 'bf16', seed: 8 }, policies: [{ type: 'd3', alpha: 0.5 }] },
];

function sameExecuted(b: Uint8Array[], a: Uint8Array[], what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: ${b.length} rows of executed flags, the CPU has ${a.length}`);
  for (let i = 0; i < a.length; i++)
    if (Array.from(a[i]).join() !== Array.from(b[i]).join())
      throw new Error(`${what}: row ${i} ran layers [${Array.from(b[i])}], the CPU ran [${Array.from(a[i])}]`);
}

/** The largest row error; throws when a row is over `tol` (NaN included). */
export function expectClose(b: Float32Array[], a: Float32Array[], tol: number, what: string): number {
  if (a.length !== b.length) throw new Error(`${what}: ${b.length} logits rows, the CPU has ${a.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const e = relError(b[i], a[i]);
    if (!(e <= tol)) throw new Error(`${what}: row ${i} differs from the CPU by ${e} (tolerance ${tol})`);
    worst = Math.max(worst, e);
  }
  return worst;
}

/** Prefill of 40 tokens in one evaluate(): plans identical, logits within tol. */
export async function checkPrefill(cpu: ModelLike, other: ModelLike, policy: PolicyLike, tol: number): Promise<number> {
  const tokens = randomTokens(40, 4, 250, 7);
  const a = await cpu.evaluate(tokens, { policy });
  const b = await other.evaluate(tokens, { policy });
  sameExecuted(b.executed, a.executed, 'prefill executed');
  return expectClose(b.logits, a.logits, tol, 'prefill');
}

/** A 5-token prompt, then 7 tokens one at a time through each backend's cache. */
export async function checkDecode(cpu: ModelLike, other: ModelLike, policy: PolicyLike, tol: number): Promise<number> {
  const tokens = randomTokens(12, 4, 250, 9);
  const sc = cpu.createSequence({ contextSize: 64 });
  const sg = other.createSequence({ contextSize: 64 });
  try {
    const a0 = await sc.evaluate(tokens.slice(0, 5), { policy });
    const b0 = await sg.evaluate(tokens.slice(0, 5), { policy });
    let worst = expectClose(b0.logits, a0.logits, tol, 'short prefill');
    for (let p = 5; p < tokens.length; p++) {
      const a = await sc.evaluate([tokens[p]], { policy });
      const b = await sg.evaluate([tokens[p]], { policy });
      sameExecuted(b.executed, a.executed, `decode position ${p} executed`);
      worst = Math.max(worst, expectClose(b.logits, a.logits, tol, `decode position ${p}`));
    }
    return worst;
  } finally {
    sc.dispose();
    sg.dispose();
  }
}

/** 600 tokens: cache growth and chunked prefill (more than one 256-row chunk). */
export async function checkLongContext(
  dg: Depthgate,
  dir: string,
  optsB: Record<string, unknown>,
  tol: number,
): Promise<number> {
  const cpu = await dg.loadModel(dir, { ...optsB, backend: 'cpu', threads: 2 });
  const other = await dg.loadModel(dir, optsB);
  try {
    const tokens = randomTokens(600, 4, 250, 13);
    return expectClose((await other.evaluate(tokens)).logits, (await cpu.evaluate(tokens)).logits, tol, 'long prefill');
  } finally {
    await cpu.dispose();
    await other.dispose();
  }
}

/** Greedy generation of 16 tokens gives the CPU's tokens. */
export async function checkGreedy(dg: Depthgate, dir: string, optsB: Record<string, unknown>): Promise<number> {
  const cpu = await dg.loadModel(dir, { ...optsB, backend: 'cpu', threads: 2 });
  const other = await dg.loadModel(dir, optsB);
  try {
    const prompt = randomTokens(9, 4, 250, 15);
    const a = await cpu.generate({ tokens: prompt }, { maxTokens: 16, stopOnEos: false });
    const b = await other.generate({ tokens: prompt }, { maxTokens: 16, stopOnEos: false });
    if (a.tokens.join() !== b.tokens.join())
      throw new Error(`greedy tokens [${b.tokens}] differ from the CPU's [${a.tokens}]`);
    return 0;
  } finally {
    await cpu.dispose();
    await other.dispose();
  }
}

export interface ParityResult {
  case: string;
  kv: string;
  policy: string;
  phase: string;
  ok: boolean;
  maxErr?: number;
  tol: number;
  error?: string;
  ms: number;
}

/** Every case x policy x KV dtype, prefill and decode, plus the long context and greedy checks. */
export async function runEngineParity(
  dg: Depthgate,
  b: 'cuda' | 'cpu',
  tmp: string,
  quick: boolean,
): Promise<{ kvDtypes: string[]; kvNote: string; results: ParityResult[] }> {
  const results: ParityResult[] = [];
  const probeDir = path.join(tmp, 'kv-probe');
  dg.writeTinyModel(probeDir, { layers: 1, seed: 1 });
  const kv = await supportedKvDtypes(dg, probeDir);
  const kvList: (KvDtype | 'default')[] = kv.dtypes.length ? kv.dtypes : ['default'];
  const record = async (r: Omit<ParityResult, 'ok' | 'ms'>, f: () => Promise<number>): Promise<void> => {
    const t0 = Date.now();
    try {
      const maxErr = await f();
      results.push({ ...r, ok: true, maxErr, ms: Date.now() - t0 });
    } catch (e) {
      results.push({ ...r, ok: false, error: (e as Error).message, ms: Date.now() - t0 });
      log(`FAIL ${r.case} kv ${r.kv} ${r.policy} ${r.phase}: ${(e as Error).message}`);
    }
  };
  const cases = quick ? PARITY_CASES.filter((_, i) => i % 3 === 0) : PARITY_CASES;
  for (const c of cases) {
    const dir = path.join(tmp, c.name.replace(/[^a-z0-9]+/gi, '-'));
    dg.writeTinyModel(dir, c.model);
    for (const k of kvList) {
      const optsB = { ...backendB(b), ...kvOption(k) };
      let cpu: ModelLike | undefined;
      let other: ModelLike | undefined;
      try {
        cpu = await dg.loadModel(dir, { ...kvOption(k), backend: 'cpu', threads: 2 });
        other = await dg.loadModel(dir, optsB);
        if (b === 'cuda' && other.info.backend !== 'cuda') throw new Error(`asked for cuda, got ${other.info.backend}`);
      } catch (e) {
        results.push({
          case: c.name,
          kv: k,
          policy: '-',
          phase: 'load',
          ok: false,
          tol: TOL[k],
          error: (e as Error).message,
          ms: 0,
        });
        await cpu?.dispose();
        continue;
      }
      for (const policy of c.policies) {
        const p = JSON.stringify(policy);
        await record({ case: c.name, kv: k, policy: p, phase: 'prefill', tol: TOL[k] }, () =>
          checkPrefill(cpu!, other!, policy, TOL[k]),
        );
        await record({ case: c.name, kv: k, policy: p, phase: 'decode', tol: TOL[k] }, () =>
          checkDecode(cpu!, other!, policy, TOL[k]),
        );
      }
      await cpu.dispose();
      await other.dispose();
      log(`${c.name} kv ${k}: done`);
    }
  }
  const longDir = path.join(tmp, 'long-context');
  dg.writeTinyModel(longDir, { layers: 2, dtype: 'bf16', maxPositions: 1024, seed: 12 });
  const greedyDir = path.join(tmp, 'greedy');
  dg.writeTinyModel(greedyDir, { layers: 3, dtype: 'bf16', seed: 14 });
  for (const k of kvList) {
    const optsB = { ...backendB(b), ...kvOption(k) };
    await record(
      { case: 'long context (600 tokens)', kv: k, policy: '{"type":"none"}', phase: 'prefill', tol: TOL[k] },
      () => checkLongContext(dg, longDir, optsB, TOL[k]),
    );
    await record({ case: 'greedy generation', kv: k, policy: '{"type":"none"}', phase: 'generate', tol: 0 }, () =>
      checkGreedy(dg, greedyDir, optsB),
    );
  }
  return {
    kvDtypes: kvList,
    kvNote: kv.dtypes.length
      ? ''
      : `no kvCacheType option in this build (${kv.note}): only the default cache dtype ran`,
    results,
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const b = (args.b ?? 'cuda') as 'cuda' | 'cpu';
  const out = args.out ?? 'engine-parity.json';
  const tmp = fs.mkdtempSync(path.join(args.tmp ?? os.tmpdir(), 'dg-engine-parity-'));
  const dg = loadDepthgate();
  const info = dg.getBuildInfo();
  const t0 = Date.now();
  log(
    `engine parity: CPU (${info.cpuKernels}) against ${b}${b === 'cuda' ? ` (${JSON.stringify(info.cuda)})` : ' with 1 thread'}`,
  );
  let report: Record<string, unknown>;
  let failed = 1;
  try {
    if (b === 'cuda' && !info.cuda.available)
      throw new Error(`no usable CUDA backend: ${info.cuda.reason ?? 'no reason given'}`);
    const r = await runEngineParity(dg, b, tmp, args.quick === 'true');
    failed = r.results.filter((x) => !x.ok).length + (r.kvNote && b === 'cuda' ? 1 : 0);
    report = {
      b,
      cuda: info.cuda,
      ...r,
      passed: r.results.filter((x) => x.ok).length,
      failed,
      seconds: (Date.now() - t0) / 1000,
    };
  } catch (e) {
    report = { b, cuda: info.cuda, error: (e as Error).message, failed: 1 };
  }
  writeJson(out, report);
  fs.rmSync(tmp, { recursive: true, force: true });
  log(
    `engine parity: ${report.passed ?? 0} passed, ${failed} failed${report.kvNote ? ` (${report.kvNote})` : ''}${report.error ? `: ${report.error}` : ''}`,
  );
  process.exitCode = failed ? 1 : 0;
}

if (require.main === module) void main();
