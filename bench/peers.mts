// Side by side with llama.cpp, on the same files: the bench model (bench/machine.mts: a random
// Llama, hidden 1024, 16 layers) as GGUF in BF16, Q8_0 (convertToGguf, as convert_hf_to_gguf.py
// --outtype q8_0 writes it) and Q4_K_M (made by llama.cpp's own quantizer), each run by depthgate
// (loadModel('x.gguf')) and by node-llama-cpp (prebuilt llama.cpp, CPU) in the same process:
//   - batch-1 greedy decode, alternating runs (A B B A ...), ms/token median [min, max], per thread count;
//   - the floor: bytes read per token / a streaming read over 1 GiB on all threads, measured in the
//     same run (the single-thread copy figure beside it);
//   - agreement: next-token probabilities of both engines on fixed token ids (f32 KV cache in both,
//     llama.cpp's flash attention off), max |Δp| and top-1 agreement per position.
// node-llama-cpp is installed into a scratch folder (default bench/.peers, git-ignored; not a
// dependency of the package) with NODE_LLAMA_CPP_SKIP_DOWNLOAD=true, and reused when present.
//   npm run bench:peers    (writes bench/results/cpu-peers.json)
// Options: --threads 2,N (default: 2 and the usable processors) --tokens 64 --runs 6
//   --formats bf16,q8_0,q4_k_m --sequences 4 --positions 32 --scratch DIR --work DIR
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  BENCH_SHAPE,
  benchModelDir,
  binding,
  copyBandwidth,
  depthgate,
  gitCommit,
  machine,
  ReadProbe,
  saveResult,
  spread,
  testing,
} from './machine.mjs';

const require = createRequire(import.meta.url);
const agreementMath =
  require('../../dist/testing/distributionAgreement.js') as typeof import('../dist/testing/distributionAgreement.js');
type PositionAgreement = import('../dist/testing/distributionAgreement.js').PositionAgreement;
type Model = import('../dist/index.js').Model;

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const usable = depthgate.getBuildInfo().usableProcessors;
const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: [...new Set([2, usable])].join(',') },
    tokens: { type: 'string', default: '64' },
    runs: { type: 'string', default: '6' },
    formats: { type: 'string', default: 'bf16,q8_0,q4_k_m' },
    sequences: { type: 'string', default: '4' },
    positions: { type: 'string', default: '32' },
    scratch: { type: 'string', default: path.join(root, 'bench', '.peers') },
    work: {
      type: 'string',
      default: path.join(os.tmpdir(), `depthgate-bench-peers-${BENCH_SHAPE.hidden}x${BENCH_SHAPE.layers}`),
    },
  },
});
const threadCounts = [...new Set(values.threads!.split(',').map(Number))];
const maxThreads = Math.max(...threadCounts, usable);
const nTokens = Number(values.tokens);
const runs = Number(values.runs);
const FORMATS = ['bf16', 'q8_0', 'q4_k_m'] as const;
type Format = (typeof FORMATS)[number];
const formats = values.formats!.split(',') as Format[];
for (const f of formats)
  if (!FORMATS.includes(f)) throw new Error(`--formats: ${f} is not one of ${FORMATS.join(', ')}`);
const scratch = path.resolve(values.scratch!);
const work = path.resolve(values.work!);
const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);

// ---- node-llama-cpp, as much of its API as this file uses ----
type Token = number;
interface NlcSequence {
  evaluate(tokens: Token[], options?: { temperature?: number; yieldEogToken?: boolean }): AsyncGenerator<Token>;
  controlledEvaluate(
    input: [Token, { generateNext?: { logits?: boolean } }][],
  ): Promise<({ next: { logits?: Map<Token, number> } } | undefined)[]>;
  clearHistory(): Promise<void>;
}
interface NlcContext {
  getSequence(): NlcSequence;
  dispose(): Promise<void>;
  readonly flashAttention: 'auto' | boolean;
  readonly kvCacheKeyType: number;
  readonly kvCacheValueType: number;
}
interface NlcModel {
  createContext(options: {
    contextSize?: number;
    sequences?: number;
    batchSize?: number;
    threads?: { ideal: number; min: number };
    flashAttention?: boolean;
    experimentalKvCacheKeyType?: string;
    experimentalKvCacheValueType?: string;
  }): Promise<NlcContext>;
  dispose(): Promise<void>;
}
interface NlcLlama {
  loadModel(options: { modelPath: string; gpuLayers?: number }): Promise<NlcModel>;
  dispose(): Promise<void>;
  readonly cpuMathCores: number;
  readonly maxThreads: number;
  readonly systemInfo: string;
  readonly buildType: string;
  readonly llamaCppRelease: { repo: string; release: string };
}
interface NlcModule {
  getLlama(options: {
    gpu: false;
    build: 'never';
    maxThreads?: number;
    logLevel?: string;
    progressLogs?: boolean;
    skipDownload?: boolean;
  }): Promise<NlcLlama>;
  GgmlType: Record<number, string>;
}

function run(cmd: string, args: string[], opts: { input?: Buffer; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(cmd, args, { input: opts.input, env: opts.env, maxBuffer: 256 * 2 ** 20 });
  if (r.error) throw r.error;
  return r;
}

/** The scratch install of node-llama-cpp (installed when missing): its package folder. */
function ensurePeer(): string {
  const pkg = path.join(scratch, 'node_modules', 'node-llama-cpp');
  if (fs.existsSync(path.join(pkg, 'package.json'))) return pkg;
  fs.mkdirSync(scratch, { recursive: true });
  const own = path.join(scratch, 'package.json');
  if (!fs.existsSync(own))
    fs.writeFileSync(own, JSON.stringify({ name: 'depthgate-bench-peers', private: true }, null, 2) + '\n');
  console.error(`installing node-llama-cpp@3 into ${scratch} (prebuilt binaries, nothing downloaded at run time) ...`);
  const r = spawnSync('npm', ['install', '--prefix', scratch, '--no-audit', '--no-fund', 'node-llama-cpp@3'], {
    stdio: 'inherit',
    env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' },
  });
  if (r.status !== 0 || !fs.existsSync(path.join(pkg, 'package.json')))
    throw new Error(`npm install --prefix ${scratch} node-llama-cpp@3 failed (exit ${r.status})`);
  return pkg;
}

/** The folder of node-llama-cpp's prebuilt CPU binaries for this platform (libllama, libggml). */
function prebuiltBins(): string | null {
  const plat = `${process.platform}-${process.arch}`;
  const dir = path.join(scratch, 'node_modules', '@node-llama-cpp', plat, 'bins', plat);
  return fs.existsSync(dir) ? dir : null;
}

/**
 * llama.cpp's quantizer: bench/llama_quantize.c compiled against llama.h of the release the
 * package ships (include/ and ggml/include/ from llama/gitRelease.bundle) and linked to its
 * libllama. Returns the executable, or why there is none.
 */
function llamaQuantizer(pkg: string): { exe: string } | { missing: string } {
  const bins = prebuiltBins();
  if (!bins) return { missing: `no prebuilt binaries for ${process.platform}-${process.arch} in the scratch install` };
  const lib = fs.readdirSync(bins).find((f) => /^libllama(\.v[\d.]+)?\.so$/.test(f));
  if (!lib) return { missing: `no libllama*.so in ${bins}` };
  const exe = path.join(scratch, 'llama_quantize');
  if (fs.existsSync(exe)) return { exe };
  const cc = process.env.CC ?? 'cc';
  const probe = spawnSync(cc, ['--version']);
  if (probe.error || probe.status !== 0) return { missing: `no C compiler (${cc}) found` };
  const src = path.join(scratch, 'llama-src');
  if (!fs.existsSync(path.join(src, 'include', 'llama.h'))) {
    const bundle = path.join(pkg, 'llama', 'gitRelease.bundle');
    if (!fs.existsSync(bundle)) return { missing: `${bundle} is missing` };
    const git = path.join(scratch, 'llama-src.git');
    fs.rmSync(git, { recursive: true, force: true });
    if (run('git', ['init', '-q', '--bare', git]).status !== 0) return { missing: 'git init failed' };
    const fetch = run('git', ['--git-dir', git, 'fetch', '-q', bundle, 'HEAD']);
    if (fetch.status !== 0) return { missing: `git fetch from ${bundle} failed: ${fetch.stderr}` };
    const tar = run('git', ['--git-dir', git, 'archive', '--format=tar', 'FETCH_HEAD', 'include', 'ggml/include']);
    if (tar.status !== 0) return { missing: `git archive failed: ${tar.stderr}` };
    fs.mkdirSync(src, { recursive: true });
    if (run('tar', ['-x', '-C', src], { input: tar.stdout }).status !== 0) return { missing: 'tar -x failed' };
    fs.rmSync(git, { recursive: true, force: true });
  }
  const c = run(cc, [
    '-O1',
    '-o',
    exe,
    path.join(root, 'bench', 'llama_quantize.c'),
    '-I',
    path.join(src, 'include'),
    '-I',
    path.join(src, 'ggml', 'include'),
    path.join(bins, lib),
    `-Wl,-rpath,${bins}`,
  ]);
  if (c.status !== 0) return { missing: `compiling bench/llama_quantize.c failed: ${c.stderr}` };
  return { exe };
}

interface FileInfo {
  path: string;
  bytes: number;
  made: string;
  seconds: number | null;
  tensorTypes: Record<string, number>;
  /** Bytes of every tensor but the embedding table (of which a token reads one row). */
  bytesPerToken: number;
}

function describeFile(file: string, made: string, seconds: number | null): FileInfo {
  const h = binding.native().readGgufHeader(file);
  const tensorTypes: Record<string, number> = {};
  let total = 0;
  let embed = 0;
  for (const t of h.tensors) {
    tensorTypes[t.type] = (tensorTypes[t.type] ?? 0) + 1;
    total += t.bytes;
    if (t.name === 'token_embd.weight') embed = t.bytes;
  }
  const tied = !h.tensors.some((t) => t.name === 'output.weight');
  return {
    path: file,
    bytes: fs.statSync(file).size,
    made,
    seconds,
    tensorTypes,
    bytesPerToken: tied ? total : total - embed,
  };
}

/** Writes (or reuses) the GGUF file of `format`; null with the reason when it cannot be made. */
function ggufFile(format: Format, pkg: string): FileInfo | { format: Format; missing: string } {
  fs.mkdirSync(work, { recursive: true });
  const file = path.join(work, `bench-${format}.gguf`);
  const bf16 = path.join(work, 'bench-bf16.gguf');
  const made =
    format === 'q4_k_m'
      ? 'llama.cpp llama_model_quantize (LLAMA_FTYPE_MOSTLY_Q4_K_M) from the BF16 file'
      : `depthgate/testing convertToGguf type ${format.toUpperCase()}`;
  if (fs.existsSync(file)) return describeFile(file, made + ' (reused)', null);
  const tmp = file + '.partial';
  const t0 = performance.now();
  if (format === 'q4_k_m') {
    if (!fs.existsSync(bf16)) ggufFile('bf16', pkg);
    const q = llamaQuantizer(pkg);
    if ('missing' in q) return { format, missing: q.missing };
    console.error(`quantizing ${bf16} to Q4_K_M with llama.cpp ...`);
    const r = run(q.exe, [bf16, tmp, 'q4_k_m', String(maxThreads)]);
    if (r.status !== 0) return { format, missing: `llama_model_quantize failed: ${String(r.stderr).slice(-2000)}` };
  } else {
    console.error(`writing ${file} ...`);
    testing.convertToGguf(benchModelDir(), tmp, { type: format === 'bf16' ? 'BF16' : 'Q8_0' });
  }
  fs.renameSync(tmp, file);
  return describeFile(file, made, (performance.now() - t0) / 1000);
}

/** ms per decoded token of one greedy run: time from the first generated token to the last, over the tokens between. */
async function timeDepthgate(model: Model, tokens: number): Promise<number> {
  const s = model.stream({ tokens: prompt }, { maxTokens: tokens, stopOnEos: false, temperature: 0 });
  let first = 0;
  let last = 0;
  let firstIndex = -1;
  let lastIndex = -1;
  for await (const chunk of s) {
    const now = performance.now();
    if (firstIndex < 0) [first, firstIndex] = [now, chunk.index];
    [last, lastIndex] = [now, chunk.index];
  }
  await s.result;
  return (last - first) / (lastIndex - firstIndex);
}

async function timePeer(seq: NlcSequence, tokens: number): Promise<number> {
  await seq.clearHistory();
  let first = 0;
  let last = 0;
  let n = 0;
  for await (const _token of seq.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
    const now = performance.now();
    if (n === 0) first = now;
    last = now;
    if (++n >= tokens) break;
  }
  return (last - first) / (n - 1);
}

/** Fixed token ids (a linear congruential sequence per seed): the same for both engines and every run. */
function fixedIds(seed: number, n: number, vocab: number): number[] {
  let s = (seed * 2654435761) >>> 0 || 1;
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    ids.push(s % vocab);
  }
  return ids;
}

const stats = (xs: number[]) => {
  const s = spread(xs);
  return { ...s, tokensPerSecond: 1000 / s.median, runs: xs };
};

// ---------------------------------------------------------------------------------------------
const loadStart = os.loadavg().map((x) => +x.toFixed(2));
const pkg = ensurePeer();
const peerVersion = (JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8')) as { version: string })
  .version;
const nlc = (await import(pathToFileURL(path.join(pkg, 'dist', 'index.js')).href)) as NlcModule;
const llama = await nlc.getLlama({ gpu: false, build: 'never', maxThreads, logLevel: 'error', progressLogs: false });
const peer = {
  package: 'node-llama-cpp',
  version: peerVersion,
  llamaCpp: llama.llamaCppRelease,
  buildType: llama.buildType,
  cpuMathCores: llama.cpuMathCores,
  systemInfo: llama.systemInfo,
};
console.log(`node-llama-cpp ${peerVersion} (llama.cpp ${llama.llamaCppRelease.release}, ${llama.buildType})`);
console.log(`llama.cpp system info: ${llama.systemInfo}`);

const files: Record<string, FileInfo | { format: Format; missing: string }> = {};
for (const f of formats) files[f] = ggufFile(f, pkg);

// depthgate's logits on the BF16 file, per agreement sequence: the yardstick of how far a format's
// own rounding moves the distributions (depthgate on Q8_0 against depthgate on BF16).
const bf16Logits: Float32Array[][] = [];
const readBw: number[] = [];
const copyBw: number[] = [];
// The floor's bandwidth, on all threads: before each file, and again after every round of the two
// engines, each round's runs then set against that round's figure (paired, as the engines are).
const probe = new ReadProbe(usable);
const decode: unknown[] = [];
const agreement: unknown[] = [];
const summaryRows: Record<string, Record<string, string>> = {};
const fmt = (x: { median: number; min: number; max: number }, d = 1) =>
  `${x.median.toFixed(d)} [${x.min.toFixed(d)}, ${x.max.toFixed(d)}]`;

for (const format of formats) {
  const info = files[format]!;
  if ('missing' in info) {
    console.log(`${format}: no file (${info.missing}); skipped`);
    decode.push({ format, skipped: info.missing });
    continue;
  }
  // The floor's bandwidth, measured in this run just before this file's timings, on all threads.
  readBw.push(probe.measure());
  copyBw.push(copyBandwidth());
  const peerModel = await llama.loadModel({ modelPath: info.path, gpuLayers: 0 });
  for (const threads of threadCounts) {
    let dg: Model | null = null;
    let dgError: string | null = null;
    try {
      dg = await depthgate.loadModel(info.path, { threads });
    } catch (e) {
      dgError = `${(e as Error).name}: ${(e as Error).message}`;
      console.log(`${format}: depthgate: not supported by this build (${dgError})`);
    }
    const ctx = await peerModel.createContext({
      contextSize: 256,
      sequences: 1,
      threads: { ideal: threads, min: threads },
    });
    const seq = ctx.getSequence();
    const dgRuns: number[] = [];
    const peerRuns: number[] = [];
    const roundBw: number[] = [];
    if (dg) await timeDepthgate(dg, 8); // warm-up
    await timePeer(seq, 8);
    for (let r = 0; r < runs; r++) {
      // A B, then B A: neither engine always runs first (or right after the other)
      const order = r % 2 === 0 ? ['depthgate', 'peer'] : ['peer', 'depthgate'];
      for (const who of order) {
        if (who === 'depthgate' && dg) dgRuns.push(await timeDepthgate(dg, nTokens));
        if (who === 'peer') peerRuns.push(await timePeer(seq, nTokens));
      }
      roundBw.push(probe.measure(2));
    }
    const dgWeightBytes = dg?.info.weightBytes ?? null;
    const peerKv = `${nlc.GgmlType[ctx.kvCacheKeyType]}/${nlc.GgmlType[ctx.kvCacheValueType]}`;
    const peerFlash = ctx.flashAttention;
    await ctx.dispose();
    await dg?.dispose();
    const bytes = info.bytesPerToken;
    // Each round's floor, from the bandwidth measured right after it (the machine's load drifts),
    // and each run against its round's floor.
    const roundFloorMs = roundBw.map((bw) => (bytes / bw) * 1e3);
    const readFloor = spread(roundFloorMs);
    const readFloorMs = readFloor.median;
    const copyFloorMs = (bytes / copyBw[copyBw.length - 1]!) * 1e3;
    const peerStats = stats(peerRuns);
    const dgStats = dg ? stats(dgRuns) : null;
    const dgToFloor = spread(dgRuns.map((ms, r) => ms / roundFloorMs[r]!));
    const peerToFloor = spread(peerRuns.map((ms, r) => ms / roundFloorMs[r]!));
    decode.push({
      format,
      threads,
      bytesPerTokenMB: bytes / 1e6,
      readBandwidthGBs: readBw[readBw.length - 1]! / 1e9,
      roundReadBandwidthGBs: spread(roundBw.map((x) => x / 1e9)),
      readFloorMsPerTokenRounds: readFloor,
      copyBandwidthGBs: copyBw[copyBw.length - 1]! / 1e9,
      depthgateWeightBytes: dgWeightBytes,
      readFloorMsPerToken: readFloorMs,
      copyFloorMsPerToken: copyFloorMs,
      depthgate: dgStats
        ? {
            supported: true,
            kvCache: 'bf16 (default)',
            msPerToken: dgStats,
            ratioToReadFloor: dgToFloor.median,
            ratioToReadFloorRounds: dgToFloor,
          }
        : { supported: false, error: dgError },
      nodeLlamaCpp: {
        kvCache: `${peerKv} (default)`,
        flashAttention: peerFlash,
        msPerToken: peerStats,
        ratioToReadFloor: peerToFloor.median,
        ratioToReadFloorRounds: peerToFloor,
      },
      depthgateSpeedup: dgStats ? peerStats.median / dgStats.median : null,
      loadAverage: os.loadavg().map((x) => +x.toFixed(2)),
    });
    summaryRows[`${format} ${threads}t`] = {
      'MB/token': (bytes / 1e6).toFixed(0),
      'read floor ms': fmt(readFloor),
      'depthgate ms/token': dgStats ? fmt(dgStats) : 'not supported by this build',
      'depthgate tok/s': dgStats ? dgStats.tokensPerSecond.toFixed(1) : '-',
      'node-llama-cpp ms/token': fmt(peerStats),
      'node-llama-cpp tok/s': peerStats.tokensPerSecond.toFixed(1),
      'dg speed-up': dgStats ? (peerStats.median / dgStats.median).toFixed(2) + 'x' : '-',
      'dg / floor': dgStats ? fmt(dgToFloor, 2) : '-',
      'nlc / floor': fmt(peerToFloor, 2),
    };
    console.log(`${format}, ${threads} threads:`, summaryRows[`${format} ${threads}t`]);
  }

  // Agreement: the same fixed ids through both engines, f32 KV caches, llama.cpp's flash attention off.
  let dgA: Model | null = null;
  try {
    dgA = await depthgate.loadModel(info.path, { threads: usable, kvCacheType: 'f32' });
  } catch (e) {
    agreement.push({ format, skipped: `depthgate: not supported by this build (${(e as Error).message})` });
  }
  if (dgA) {
    const ctxA = await peerModel.createContext({
      contextSize: 128,
      sequences: 1,
      batchSize: 128,
      threads: { ideal: usable, min: usable },
      flashAttention: false,
      experimentalKvCacheKeyType: 'F32',
      experimentalKvCacheValueType: 'F32',
    });
    const seqA = ctxA.getSequence();
    const vocab = dgA.config.vocabSize;
    const perPosition: PositionAgreement[] = [];
    const againstBf16: PositionAgreement[] = [];
    for (let s = 0; s < Number(values.sequences); s++) {
      const ids = fixedIds(s + 1, Number(values.positions), vocab);
      await seqA.clearHistory();
      const theirs = await seqA.controlledEvaluate(ids.map((t) => [t, { generateNext: { logits: true } }]));
      const ours = await dgA.evaluate(ids);
      if (format === 'bf16') bf16Logits[s] = ours.logits;
      else if (bf16Logits[s])
        for (let p = 0; p < ids.length; p++)
          againstBf16.push(agreementMath.comparePosition(ours.logits[p]!, bf16Logits[s]![p]!));
      for (let p = 0; p < ids.length; p++) {
        const m = theirs[p]?.next.logits;
        if (!m || m.size !== vocab)
          throw new Error(`node-llama-cpp gave ${m?.size ?? 0} logits at position ${p}, not ${vocab}`);
        const row = new Float64Array(vocab);
        for (const [tok, v] of m) row[tok] = v;
        perPosition.push(agreementMath.comparePosition(ours.logits[p]!, row));
      }
    }
    const summary = agreementMath.summariseAgreement(perPosition);
    agreement.push({
      format,
      sequences: Number(values.sequences),
      positionsPerSequence: Number(values.positions),
      depthgate: { kvCache: 'f32' },
      nodeLlamaCpp: {
        kvCache: `${nlc.GgmlType[ctxA.kvCacheKeyType]}/${nlc.GgmlType[ctxA.kvCacheValueType]}`,
        flashAttention: ctxA.flashAttention,
      },
      ...summary,
      // depthgate on this file against depthgate on the BF16 file: what the format's rounding alone does
      depthgateAgainstBf16File: againstBf16.length ? agreementMath.summariseAgreement(againstBf16) : null,
      minTop1MarginAtDisagreement: Math.min(
        ...perPosition.filter((p) => !p.top1Agrees).map((p) => p.top1MarginA),
        Infinity,
      ),
      perPosition: perPosition.map((p) => ({
        maxAbsDeltaP: p.maxAbsDeltaP,
        top1: p.top1,
        top1MarginDepthgate: p.top1MarginA,
      })),
    });
    console.log(
      `${format} agreement: max |Δp| ${summary.maxAbsDeltaP.toExponential(2)} (median per position ${summary.medianMaxAbsDeltaP.toExponential(2)}), top-1 agreement ${(100 * summary.top1Agreement).toFixed(1)}% of ${summary.positions} positions`,
    );
    if (againstBf16.length) {
      const y = agreementMath.summariseAgreement(againstBf16);
      console.log(
        `${format} yardstick, depthgate on ${format} against depthgate on bf16: max |Δp| ${y.maxAbsDeltaP.toExponential(2)} (median ${y.medianMaxAbsDeltaP.toExponential(2)}), top-1 agreement ${(100 * y.top1Agreement).toFixed(1)}%`,
      );
    }
    await ctxA.dispose();
    await dgA.dispose();
  }
  await peerModel.dispose();
}
await llama.dispose();

console.table(summaryRows);
const result = {
  benchmark: 'cpu-peers',
  command: ['npm run bench:peers', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  commit: gitCommit(),
  date: new Date().toISOString(),
  machine: machine(),
  loadAverage: { start: loadStart, end: os.loadavg().map((x) => +x.toFixed(2)) },
  note: 'ms/token: median [min, max] over runs of batch-1 greedy decode (a 16-token prompt, then --tokens tokens; time from the first generated token to the last), the two engines alternating A B B A in one process on the same GGUF file. Floor = bytes read per token (every tensor but the embedding table, of which one row is read) / read bandwidth (a streaming read over 1 GiB on all usable processors, on 2 MB-aligned memory advised for huge pages like the CPU backend\'s weights, read as one stream and as eight streams per thread, the best of 2 passes of each, measured after every round of the two engines; bandwidth.readProbe gives the best of each stream count); each run is set against its own round\'s floor, and "dg / floor" is the median [min, max] of those ratios (readBandwidthGBs: measured once before the file, best of 5); the copy figure (one thread, STREAM convention) beside it. The machine is shared: see loadAverage.',
  peer,
  model: { ...BENCH_SHAPE },
  threads: threadCounts,
  usableProcessors: usable,
  tokens: nTokens,
  runs,
  promptTokens: prompt.length,
  bandwidth: {
    readThreads: usable,
    readGBs: spread(readBw.map((x) => x / 1e9)),
    readProbe: probe.describe(),
    copyGBs: spread(copyBw.map((x) => x / 1e9)),
  },
  files,
  decode,
  agreement,
};
console.log(`saved ${saveResult('cpu-peers.json', result)}`);
