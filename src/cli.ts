#!/usr/bin/env node
/**
 * depthgate command line:
 *   depthgate generate [MODEL_DIR] --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
 *   depthgate info [MODEL_DIR]
 *   depthgate logits MODEL_DIR --tokens 1,2,3 --json
 *   depthgate eval [MODEL_DIR] --text FILE [--policy SPEC ...]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { defaultModelSetup } from './defaultModel';
import { depthLegendAnsi, renderDepthAnsi, renderDepthHtml, type DepthSpan } from './depthView';
import { DepthgateError } from './errors';
import { getBuildInfo, loadModel, type GenerateOptions, type LoadOptions, type Model } from './index';
import { measurePerplexity } from './perplexity';
import { formatPolicy, parsePolicy, type Policy } from './policy';
import type { SpeculativeStats } from './speculative';
import { serveCommand } from './server/command';

const USAGE = `Usage:
  depthgate generate [MODEL_DIR] --prompt TEXT [options]   stream a completion (default model if no MODEL_DIR)
      --prompt, -p TEXT     the prompt (required)
      --chat                wrap the prompt as a user message in the model's chat template
      --system TEXT         system message (with --chat)
      --max-tokens N        most tokens to generate (default 128)
      --temperature T       0 = greedy (default 0)
      --top-k K             sample among the K most likely tokens
      --top-p P             nucleus sampling threshold
      --seed S              sampling seed (same seed, same output)
      --stop TEXT           stop string (repeatable)
      --threads N           CPU threads (default: all cores)
      --backend B           auto | cpu | cuda (default: $DEPTHGATE_BACKEND or auto)
      --kv-cache T          KV cache dtype: bf16 (default), f16 or f32
      --policy SPEC         which layers each token runs (default: the model's default policy, which
                            \`info\` shows: flexidepth when FlexiDepth routers come with the model, in
                            its own weights or as the default model's add-on; otherwise none):
                              none | static:skip=3+5 | static:attn=2,mlp=4+6 | flexidepth[:threshold=0.5]
                              | skiplayer | d3:alpha=0.9[,start=4][,min=8]
                              | speculative:draft=flexidepth[,maxDraft=4][,minConfidence=0.5][,target=0.8]
                                (exact mode: the draft's own parameters go alongside, e.g.
                                speculative:draft=static,skip=3+4,maxDraft=2)
      --addon FILE          router weights to apply to the model (repeatable)
      --trace FILE          write one JSON line per generated token: layers run, router weights;
                            FILE.html writes a page with each token coloured by its depth
      --show-depth          colour each generated token by the number of layers it ran
  depthgate info [MODEL_DIR]             architecture, parameters, dtype, memory, routers, default policy, build
  depthgate logits MODEL_DIR --tokens 1,2,3 --json [--policy SPEC] [--addon FILE]
                                         logits at every position as {"logits": [[...], ...]};
                                         with --policy (or a routed default policy) also
                                         "executed": [[1,0,...], ...] per position
  depthgate eval [MODEL_DIR] --text FILE [--policy SPEC ...] [options]
                                         perplexity of FILE and mean layers run per token, per policy
      --policy SPEC         a policy to score (repeatable; default: the model's default policy)
      --addon FILE          router weights to apply (repeatable)
      --window N            tokens per window, each in a fresh sequence (default min(256, context))
      --context N           unscored prompt tokens at the start of each window (default window/4);
                            the rest is scored as a generated continuation (D3 decays along it)
      --max-tokens N        stop after about N scored tokens
      --json                print the results as JSON
  depthgate serve [MODEL_DIR] [--host H] [--port N] [options]
                                         OpenAI-compatible HTTP server; \`depthgate serve --help\` lists its options
`;

class UsageError extends Error {}

function intArg(v: string | undefined, name: string, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v) || Number(v) < min) throw new UsageError(`--${name} must be an integer >= ${min}, got '${v}'`);
  return Number(v);
}

function numArg(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${v}'`);
  return n;
}

function progressBar(label: string): ((f: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  let last = -1;
  return (f: number) => {
    const pct = Math.floor(f * 100);
    if (pct === last) return;
    last = pct;
    const width = 30;
    const fill = Math.round(f * width);
    process.stderr.write(`\r${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${pct}%`);
    if (f >= 1) process.stderr.write('\n');
  };
}

function backendArg(v: string | undefined): LoadOptions['backend'] {
  if (v === undefined) return undefined;
  if (v !== 'auto' && v !== 'cpu' && v !== 'cuda') throw new UsageError(`--backend must be auto, cpu or cuda, got '${v}'`);
  return v;
}

/**
 * Loads MODEL_DIR, or with none the embedded default model together with its default FlexiDepth
 * add-on (unless --addon names others). The policy to run when the user gives none is the
 * model's own `defaultPolicy` (src/defaultPolicy.ts).
 */
async function open(
  dir: string | undefined,
  o: { threads?: number; addons?: string[]; backend?: string; kvCache?: string } = {},
): Promise<{ model: Model }> {
  const backend = backendArg(o.backend);
  const kv = o.kvCache;
  if (kv !== undefined && kv !== 'f32' && kv !== 'f16' && kv !== 'bf16')
    throw new UsageError(`--kv-cache must be f32, f16 or bf16, got '${kv}'`);
  let addons = (o.addons ?? []).map((a) => path.resolve(a));
  let modelDir = dir;
  if (modelDir === undefined) {
    const d = defaultModelSetup();
    modelDir = d.dir;
    const ownAddon = !addons.length;
    if (ownAddon) addons = d.addons;
    process.stderr.write(
      `using the default model (12-layer Llama trained on the King James Bible${ownAddon ? ', FlexiDepth routers' : ''}): ${modelDir}\n`,
    );
  }
  const model = await loadModel(modelDir, {
    onProgress: progressBar('loading'),
    ...(o.threads ? { threads: o.threads } : {}),
    ...(addons.length ? { addons } : {}),
    ...(backend ? { backend } : {}),
    ...(kv ? { kvCacheType: kv } : {}),
  });
  return { model };
}

async function generate(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      prompt: { type: 'string', short: 'p' },
      chat: { type: 'boolean' },
      system: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      threads: { type: 'string' },
      policy: { type: 'string' },
      addon: { type: 'string', multiple: true },
      trace: { type: 'string' },
      'show-depth': { type: 'boolean' },
      backend: { type: 'string' },
      'kv-cache': { type: 'string' },
    },
  });
  if (positionals.length > 1) throw new UsageError(`generate takes one MODEL_DIR, got ${positionals.length}`);
  if (values.prompt === undefined) throw new UsageError('generate needs --prompt');
  const opts: GenerateOptions = { maxTokens: intArg(values['max-tokens'], 'max-tokens', 1) ?? 128 };
  const t = numArg(values.temperature, 'temperature');
  if (t !== undefined) opts.temperature = t;
  const k = intArg(values['top-k'], 'top-k', 0);
  if (k !== undefined) opts.topK = k;
  const p = numArg(values['top-p'], 'top-p');
  if (p !== undefined) opts.topP = p;
  const seed = intArg(values.seed, 'seed', 0);
  if (seed !== undefined) opts.seed = seed;
  if (values.stop) opts.stop = values.stop;
  const { model } = await open(positionals[0], {
    threads: intArg(values.threads, 'threads', 1), addons: values.addon, backend: values.backend, kvCache: values['kv-cache'],
  });
  try {
    const L = model.config.numLayers;
    opts.policy = values.policy ? parsePolicy(values.policy, L) : model.defaultPolicy.policy;
    const html = values.trace !== undefined && /\.html?$/i.test(values.trace);
    let traceFd: number | undefined;
    if (values.trace !== undefined) {
      try {
        traceFd = fs.openSync(values.trace, 'w'); // before generating, so a bad path costs nothing
      } catch (e) {
        throw new UsageError(`--trace ${values.trace}: ${(e as Error).message}`);
      }
    }
    const trace = html ? undefined : traceFd;
    const spans: DepthSpan[] = [];
    if (trace !== undefined)
      opts.onToken = (c) =>
        fs.writeSync(
          trace,
          JSON.stringify({
            index: c.index, token: c.token, text: c.text, layers: c.layers, executed: Array.from(c.executed),
            routerWeights: Array.from(c.routerWeights, (w) => (Number.isNaN(w) ? null : +w.toFixed(6))),
            ...(c.speculative ? { speculative: c.speculative } : {}),
          }) + '\n',
        );
    const ac = new AbortController();
    const onSigint = () => ac.abort();
    process.once('SIGINT', onSigint);
    const input = values.chat
      ? [...(values.system ? [{ role: 'system', content: values.system }] : []), { role: 'user', content: values.prompt }]
      : values.prompt;
    const stream = model.stream(input, { ...opts, signal: ac.signal, stopOnAbort: true });
    if (!values.chat) process.stdout.write(values.prompt);
    for await (const chunk of stream) {
      if (html) spans.push({ text: chunk.text, layers: chunk.layers, executed: chunk.executed });
      process.stdout.write(values['show-depth'] ? renderDepthAnsi({ text: chunk.text, layers: chunk.layers }, L) : chunk.text);
    }
    process.removeListener('SIGINT', onSigint);
    const r = await stream.result;
    process.stdout.write('\n');
    if (values['show-depth']) process.stdout.write(depthLegendAnsi(L) + '\n');
    if (trace !== undefined) fs.closeSync(trace);
    if (html)
      fs.writeFileSync(
        traceFd!,
        renderDepthHtml({
          prompt: values.chat ? '' : values.prompt, spans, numLayers: L, meanLayers: r.depth.meanLayers,
          model: path.basename(model.dir), policy: policyLabel(opts.policy), title: 'depthgate: layers per token',
        }),
      );
    if (html) fs.closeSync(traceFd!);
    process.stderr.write(
      `[${r.usage.promptTokens} prompt tokens, ${r.usage.completionTokens} generated (${r.finishReason}); ` +
        `prefill ${r.timings.prefillMs.toFixed(1)} ms, decode ${r.timings.decodeTokensPerSecond.toFixed(1)} tokens/s; ` +
        `${r.depth.meanLayers.toFixed(2)} of ${model.config.numLayers} layers per token` +
        (r.speculative ? `; ${speculativeFooter(r.speculative)}` : '') +
        ']\n',
    );
  } finally {
    await model.dispose();
  }
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function info(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true, options: { addon: { type: 'string', multiple: true }, backend: { type: 'string' } },
  });
  if (positionals.length > 1) throw new UsageError(`info takes one MODEL_DIR, got ${positionals.length}`);
  const b = getBuildInfo();
  console.log(`depthgate ${b.version}: backends ${b.backends.join(', ')}; CPU kernels ${b.cpuKernels} (${b.cpuFeatures.join(' ') || 'no SIMD extensions'})`);
  console.log(`addon: ${b.addonPath} (${b.prebuilt ? 'prebuilt' : 'local build'}, napi ${b.napiVersion}${b.glibc ? `, glibc ${b.glibc}` : ''})`);
  console.log(`CUDA: ${b.cuda.available ? 'available' : `not available: ${b.cuda.reason}`}; GPUs: ${b.cuda.devices.length ? b.cuda.devices.map((d) => `${d.name} (sm_${d.computeCapability}, ${bytes(d.memoryBytes)})`).join(', ') : 'none seen'}`);
  const { model } = await open(positionals[0], { addons: values.addon, backend: values.backend });
  try {
    const i = model.info;
    const c = model.config;
    console.log(`model: ${model.dir}`);
    console.log(`architecture: ${i.architecture} (${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numHeads} heads / ${c.numKvHeads} KV heads of ${c.headDim}, MLP ${c.intermediateSize}, vocab ${c.vocabSize})`);
    console.log(`parameters: ${i.parameters.toLocaleString('en-US')} (${(i.parameters / 1e6).toFixed(2)} M)`);
    console.log(`dtype: ${i.dtype}`);
    console.log(`weights: ${bytes(i.weightBytes)} memory-mapped from ${i.files.length} file(s)`);
    console.log(`KV cache: ${bytes(i.kvBytesPerToken)} per token; ${bytes(i.kvBytesPerToken * i.contextSize)} at the full context of ${i.contextSize}`);
    const own = i.checkpointFlexiDepthLayers;
    const fdFrom = !i.flexiDepthLayers.length ? '' : own.length === i.flexiDepthLayers.length ? ' (in the checkpoint)' : own.length ? ` (in the checkpoint: [${own.join(', ')}]; the rest from add-ons)` : ' (from add-ons)';
    console.log(`routers: FlexiDepth on layers [${i.flexiDepthLayers.join(', ')}]${fdFrom}; SkipLayer on layers [${i.skipRouterLayers.join(', ')}]`);
    console.log(`default policy: ${policyLabel(i.defaultPolicy.policy)}, because ${i.defaultPolicy.reason} (--policy overrides it; --policy none runs every layer)`);
    console.log(`rope: theta ${c.ropeTheta}, scaling ${c.ropeType}${c.ropeType !== 'default' ? ` x${c.ropeFactor}` : ''}; tied embeddings ${c.tieWordEmbeddings}; eos ${c.eosTokenIds.join(', ')}`);
  } finally {
    await model.dispose();
  }
}

async function logits(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      tokens: { type: 'string' }, json: { type: 'boolean' }, threads: { type: 'string' },
      policy: { type: 'string' }, addon: { type: 'string', multiple: true }, backend: { type: 'string' },
      'kv-cache': { type: 'string' },
    },
  });
  if (positionals.length !== 1) throw new UsageError('logits needs exactly one MODEL_DIR');
  if (!values.tokens) throw new UsageError('logits needs --tokens 1,2,3');
  if (!values.json) throw new UsageError('logits prints JSON only; pass --json');
  const tokens = values.tokens.split(',').map((s) => {
    if (!/^\d+$/.test(s.trim())) throw new UsageError(`--tokens must be comma-separated token ids, got '${s}'`);
    return Number(s.trim());
  });
  const { model } = await open(positionals[0], {
    threads: intArg(values.threads, 'threads', 1), addons: values.addon, backend: values.backend, kvCache: values['kv-cache'],
  });
  try {
    const policy = values.policy ? parsePolicy(values.policy, model.config.numLayers) : model.defaultPolicy.policy;
    const r = await model.evaluate(tokens, { policy });
    const out: { logits: number[][]; executed?: number[][] } = { logits: r.logits.map((row) => Array.from(row)) };
    if (values.policy || policy.type !== 'none') out.executed = r.executed.map((row) => Array.from(row));
    process.stdout.write(JSON.stringify(out) + '\n');
  } finally {
    await model.dispose();
  }
}

/** Exact mode's part of the generate footer. */
function speculativeFooter(s: SpeculativeStats): string {
  return (
    `exact mode: ${s.accepted} of ${s.drafted} drafted tokens accepted (${(100 * s.acceptanceRate).toFixed(1)}%), ` +
    `${s.meanDraftLength.toFixed(2)} drafted per verification, ${s.layersPerToken.toFixed(2)} layers computed per token`
  );
}

/** A policy as the CLI syntax writes it, for labels. */
function policyLabel(p: Policy | undefined): string {
  if (!p || p.type === 'none') return 'none';
  if (p.type === 'speculative') return formatPolicy(p);
  const o = Object.entries(p).filter(([k]) => k !== 'type');
  return o.length ? `${p.type}:${o.map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`).join(',')}` : p.type;
}

async function evalText(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      text: { type: 'string' }, policy: { type: 'string', multiple: true }, addon: { type: 'string', multiple: true },
      window: { type: 'string' }, context: { type: 'string' }, 'max-tokens': { type: 'string' }, json: { type: 'boolean' },
      threads: { type: 'string' }, backend: { type: 'string' }, 'kv-cache': { type: 'string' },
    },
  });
  if (positionals.length > 1) throw new UsageError(`eval takes one MODEL_DIR, got ${positionals.length}`);
  if (!values.text) throw new UsageError('eval needs --text FILE');
  let text: string;
  try {
    text = fs.readFileSync(values.text, 'utf8');
  } catch (e) {
    throw new UsageError(`--text ${values.text}: ${(e as Error).message}`);
  }
  const window = intArg(values.window, 'window', 2);
  const context = intArg(values.context, 'context', 1);
  const maxTokens = intArg(values['max-tokens'], 'max-tokens', 1);
  const { model } = await open(positionals[0], {
    threads: intArg(values.threads, 'threads', 1), addons: values.addon, backend: values.backend, kvCache: values['kv-cache'],
  });
  try {
    const L = model.config.numLayers;
    const specs = values.policy?.length ? values.policy : [policyLabel(model.defaultPolicy.policy)];
    const policies = specs.map((s) => parsePolicy(s, L));
    const ids = model.tokenizer.encode(text, false);
    const rows = [];
    if (!values.json) console.log(`${'policy'.padEnd(34)} ${'perplexity'.padStart(10)} ${'mean layers'.padStart(12)} ${'tokens'.padStart(8)}`);
    for (let i = 0; i < policies.length; i++) {
      const r = await measurePerplexity(model, ids, {
        policy: policies[i], ...(window ? { window } : {}), ...(context ? { context } : {}), ...(maxTokens ? { maxTokens } : {}),
      });
      rows.push({ policy: specs[i], ...r });
      if (!values.json)
        console.log(`${specs[i]!.padEnd(34)} ${r.perplexity.toFixed(3).padStart(10)} ${`${r.meanLayers.toFixed(2)} / ${L}`.padStart(12)} ${String(r.tokens).padStart(8)}`);
    }
    if (values.json) process.stdout.write(JSON.stringify({ model: model.dir, layers: L, text: values.text, results: rows }) + '\n');
  } finally {
    await model.dispose();
  }
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'generate':
        await generate(rest);
        return 0;
      case 'info':
        await info(rest);
        return 0;
      case 'logits':
        await logits(rest);
        return 0;
      case 'eval':
        await evalText(rest);
        return 0;
      case 'serve':
        return await serveCommand(rest);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command '${cmd}'`);
    }
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`depthgate: ${(e as Error).message}\n\n${USAGE}`);
      return 2;
    }
    if (e instanceof DepthgateError) {
      process.stderr.write(`depthgate: ${e.message} [${e.code}]\n`);
      return 1;
    }
    throw e;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`depthgate: internal error: ${(e as Error).stack ?? String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
