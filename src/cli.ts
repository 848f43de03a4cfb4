#!/usr/bin/env node
/**
 * depthgate command line: generate, chat (src/cliChat.ts), info, logits, eval and serve
 * (src/server/command.ts). `depthgate COMMAND --help` prints a command's own help (src/cliHelp.ts);
 * a bad command line prints one line and a hint (src/cliArgs.ts); a closed pipe ends quietly and
 * Ctrl-C exits with status 130 (src/terminal.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { depthLegendAnsi, renderDepthAnsi, renderDepthHtml, type DepthSpan } from './depthView';
import { DepthgateError } from './errors';
import { getBuildInfo } from './index';
import { measurePerplexity } from './perplexity';
import { parsePolicy } from './policy';
import { SERVE_USAGE, serveCommand } from './server/command';
import { UsageError, intArg, parseCommand } from './cliArgs';
import { HELP, USAGE } from './cliHelp';
import {
  LOAD_OPTIONS,
  SAMPLING_OPTIONS,
  depthFloor,
  lengthDefault,
  openModel,
  policyArg,
  policyLabel,
  samplingArgs,
} from './cliModel';
import { describeSampling } from './sampling';
import type { SpeculativeStats } from './speculative';
import { chatCommand } from './cliChat';
import { SIGINT_STATUS, colorMode, exitQuietlyOnClosedPipe } from './terminal';

function help(command: string): number {
  process.stdout.write(command === 'serve' ? SERVE_USAGE : (HELP[command] ?? USAGE));
  return 0;
}

/** The depth of each token as superscript digits, for output without colour. */
function superscript(n: number): string {
  return String(n).replace(/\d/g, (d) => '⁰¹²³⁴⁵⁶⁷⁸⁹'[Number(d)]!);
}

async function generate(argv: string[]): Promise<number> {
  const args = parseCommand('generate', argv, {
    prompt: { type: 'string', short: 'p' },
    chat: { type: 'boolean' },
    system: { type: 'string' },
    ...SAMPLING_OPTIONS,
    ...LOAD_OPTIONS,
    trace: { type: 'string' },
    'show-depth': { type: 'boolean' },
  });
  if (args.flag('help')) return help('generate');
  const prompt = args.str('prompt');
  if (prompt === undefined) throw new UsageError('generate needs --prompt TEXT', 'generate');
  if (args.has('system') && !args.flag('chat'))
    throw new UsageError('--system needs --chat (it is a message of the chat template)', 'generate');
  const opts = samplingArgs(args, 'generate');
  const chat = args.flag('chat');
  const tracePath = args.str('trace');
  const html = tracePath !== undefined && /\.html?$/i.test(tracePath);
  let traceFd: number | undefined;
  if (tracePath !== undefined) {
    try {
      traceFd = fs.openSync(tracePath, 'w'); // before loading, so a bad path costs nothing
    } catch (e) {
      throw new UsageError(`--trace ${tracePath}: ${(e as Error).message}`, 'generate');
    }
  }
  const model = await openModel('generate', args);
  lengthDefault(opts, model, 128);
  try {
    const L = model.config.numLayers;
    opts.policy = policyArg(args, model);
    const showDepth = args.flag('show-depth');
    const colors = colorMode(process.stdout);
    const scale = { minLayers: depthFloor(opts.policy, model), colors: colors === '256' ? '256' : '24bit' } as const;
    const trace = html ? undefined : traceFd;
    const spans: DepthSpan[] = [];
    if (trace !== undefined)
      opts.onToken = (c) =>
        fs.writeSync(
          trace,
          JSON.stringify({
            index: c.index,
            token: c.token,
            text: c.text,
            layers: c.layers,
            executed: Array.from(c.executed),
            routerWeights: Array.from(c.routerWeights, (w) => (Number.isNaN(w) ? null : +w.toFixed(6))),
            ...(c.speculative ? { speculative: c.speculative } : {}),
          }) + '\n',
        );
    // Ctrl-C stops the generation (what was made is printed, exit 130); a second one exits at once.
    const ac = new AbortController();
    const onSigint = () => {
      if (ac.signal.aborted) process.exit(SIGINT_STATUS);
      ac.abort();
    };
    process.on('SIGINT', onSigint);
    const system = args.str('system');
    const input = chat
      ? [...(system !== undefined ? [{ role: 'system', content: system }] : []), { role: 'user', content: prompt }]
      : prompt;
    const stream = model.stream(input, { ...opts, signal: ac.signal, stopOnAbort: true });
    if (!chat) process.stdout.write(prompt);
    for await (const chunk of stream) {
      if (html) spans.push({ text: chunk.text, layers: chunk.layers, executed: chunk.executed });
      if (!showDepth || chunk.text === '') process.stdout.write(chunk.text);
      else if (colors !== 'none')
        process.stdout.write(renderDepthAnsi({ text: chunk.text, layers: chunk.layers }, L, scale));
      else process.stdout.write(chunk.text.replace(/(\r?\n)?$/, (nl) => superscript(chunk.layers) + nl));
    }
    const r = await stream.result;
    process.stdout.write('\n');
    if (showDepth) {
      const legendColors = colorMode(process.stderr);
      if (legendColors !== 'none')
        process.stderr.write(depthLegendAnsi(L, { ...scale, colors: legendColors === '256' ? '256' : '24bit' }) + '\n');
      else if (colors === 'none') process.stderr.write(`(the number after each token is the layers it ran, of ${L})\n`);
    }
    if (trace !== undefined) fs.closeSync(trace);
    if (html)
      fs.writeFileSync(
        traceFd!,
        renderDepthHtml({
          prompt: chat ? '' : prompt,
          spans,
          numLayers: L,
          meanLayers: r.depth.meanLayers,
          model: path.basename(model.dir),
          policy: policyLabel(opts.policy),
          title: 'depthgate: layers per token',
        }),
      );
    if (html) fs.closeSync(traceFd!);
    process.stderr.write(
      `[${r.usage.promptTokens} prompt tokens, ${r.usage.completionTokens} generated (${r.finishReason}); ` +
        `prefill ${r.timings.prefillMs.toFixed(1)} ms, decode ${r.timings.decodeTokensPerSecond.toFixed(1)} tokens/s; ` +
        `${r.depth.meanLayers.toFixed(2)} of ${model.config.numLayers} layers per token` +
        (r.speculative ? `; ${speculativeFooter(r.speculative)}` : '') +
        ']\n' +
        `[${describeSampling(r.sampling)}]\n`,
    );
    process.removeListener('SIGINT', onSigint);
    return ac.signal.aborted ? SIGINT_STATUS : 0;
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

async function info(argv: string[]): Promise<number> {
  const args = parseCommand('info', argv, {
    addon: { type: 'string', multiple: true },
    backend: { type: 'string' },
    weights: { type: 'string' },
    'no-generation-config': { type: 'boolean' },
  });
  if (args.flag('help')) return help('info');
  const b = getBuildInfo();
  console.log(
    `depthgate ${b.version}: backends ${b.backends.join(', ')}; CPU kernels ${b.cpuKernels} (${b.cpuFeatures.join(' ') || 'no SIMD extensions'}), prefetch ${b.cpuPrefetch}; ${b.usableProcessors} usable processor(s)`,
  );
  console.log(
    `addon: ${b.addonPath} (${b.prebuilt ? 'prebuilt' : 'local build'}, napi ${b.napiVersion}${b.glibc ? `, glibc ${b.glibc}` : ''})`,
  );
  console.log(
    `CUDA: ${b.cuda.available ? 'available' : `not available: ${b.cuda.reason}`}; GPUs: ${b.cuda.devices.length ? b.cuda.devices.map((d) => `${d.name} (sm_${d.computeCapability}, ${bytes(d.memoryBytes)})`).join(', ') : 'none seen'}`,
  );
  const model = await openModel('info', args);
  try {
    const i = model.info;
    const c = model.config;
    console.log(`model: ${model.dir}`);
    console.log(
      `architecture: ${i.architecture} (${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numHeads} heads / ${c.numKvHeads} KV heads of ${c.headDim}, MLP ${c.intermediateSize}, vocab ${c.vocabSize})`,
    );
    console.log(`parameters: ${i.parameters.toLocaleString('en-US')} (${(i.parameters / 1e6).toFixed(2)} M)`);
    console.log(`dtype: ${i.dtype}`);
    if (i.weights === 'stored')
      console.log(
        `weights: ${bytes(i.weightBytes)} ${i.placedMatrices > 0 || i.repackedMatrices > 0 ? 'read' : 'memory-mapped'} from ${i.files.length} file(s)`,
      );
    else
      console.log(
        `weights: ${bytes(i.weightBytes)}, quantized on load to ${i.weights} in ${i.quantizeMs.toFixed(0)} ms from ${i.files.length} file(s)`,
      );
    if (i.repackedMatrices > 0 || i.placedMatrices > 0) {
      const what = [
        ...(i.repackedMatrices > 0 ? [`${i.repackedMatrices} Q8_0 matrices repacked for the VNNI kernel`] : []),
        ...(i.placedMatrices > 0 ? [`${i.placedMatrices} matrices copied`] : []),
      ];
      console.log(
        `CPU layout: ${what.join(', ')} in ${i.cpuLayoutMs.toFixed(0)} ms, ${i.hugePages ? 'in memory advised for 2 MB huge pages' : 'on 4 KB pages'}`,
      );
    }
    console.log(
      `KV cache: ${bytes(i.kvBytesPerToken)} per token; ${bytes(i.kvBytesPerToken * i.contextSize)} at the full context of ${i.contextSize}`,
    );
    const own = i.checkpointFlexiDepthLayers;
    const fdFrom = !i.flexiDepthLayers.length
      ? ''
      : own.length === i.flexiDepthLayers.length
        ? ' (in the checkpoint)'
        : own.length
          ? ` (in the checkpoint: [${own.join(', ')}]; the rest from add-ons)`
          : ' (from add-ons)';
    console.log(
      `routers: FlexiDepth on layers [${i.flexiDepthLayers.join(', ')}]${fdFrom}; SkipLayer on layers [${i.skipRouterLayers.join(', ')}]`,
    );
    console.log(
      `default policy: ${policyLabel(i.defaultPolicy.policy)}, because ${i.defaultPolicy.reason} (--policy overrides it; --policy none runs every layer)`,
    );
    console.log(`chat template: ${model.tokenizer.chatTemplate ? 'yes' : 'none (--chat and chat need one)'}`);
    console.log(
      `rope: theta ${c.ropeTheta}, scaling ${c.ropeType}${c.ropeType !== 'default' ? ` x${c.ropeFactor}` : ''}; tied embeddings ${c.tieWordEmbeddings}; eos ${c.eosTokenIds.join(', ')}`,
    );
    const gd = i.generationDefaults;
    const gdo = Object.entries(gd.options)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    console.log(
      `generation defaults: ${gd.file ? `${gdo || 'none'} (from ${gd.file})` : 'none (no generation_config.json)'}`,
    );
  } finally {
    await model.dispose();
  }
  return 0;
}

async function logits(argv: string[]): Promise<number> {
  const args = parseCommand('logits', argv, {
    tokens: { type: 'string' },
    prompt: { type: 'string', short: 'p' },
    json: { type: 'boolean' },
    top: { type: 'string' },
    policy: { type: 'string' },
    ...LOAD_OPTIONS,
  });
  if (args.flag('help')) return help('logits');
  const tokenList = args.str('tokens');
  const prompt = args.str('prompt');
  if ((tokenList === undefined) === (prompt === undefined))
    throw new UsageError('logits needs --prompt TEXT or --tokens 1,2,3 (one of them)', 'logits');
  const top = intArg(args.str('top'), 'top', 1, 'logits', 100) ?? 3;
  const ids = tokenList?.split(',').map((s) => {
    if (!/^\d+$/.test(s.trim()))
      throw new UsageError(`--tokens must be comma-separated token ids, got '${s}'`, 'logits');
    return Number(s.trim());
  });
  const model = await openModel('logits', args);
  try {
    const policy = policyArg(args, model);
    const tokens = ids ?? model.tokenize(prompt!);
    const r = await model.evaluate(tokens, { policy });
    if (args.flag('json')) {
      const out: { logits: number[][]; executed?: number[][] } = { logits: r.logits.map((row) => Array.from(row)) };
      if (args.has('policy') || policy.type !== 'none') out.executed = r.executed.map((row) => Array.from(row));
      process.stdout.write(JSON.stringify(out) + '\n');
      return 0;
    }
    const show = (id: number) => JSON.stringify(model.detokenize([id], { skipSpecialTokens: false }));
    const rows = r.tokens.map((id, p) => {
      const row = r.logits[p]!;
      const best = Array.from(row.keys())
        .sort((a, b) => row[b]! - row[a]!)
        .slice(0, top);
      return [
        String(p),
        String(id),
        show(id),
        best.map((b) => `${show(b)} ${row[b]!.toFixed(2)}`).join(', '),
        String(r.executed[p]!.reduce((a, b) => a + b, 0)),
      ];
    });
    const head = ['pos', 'token', 'text', `most likely next (logit)`, `layers of ${model.config.numLayers}`];
    const widths = head.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]!.length)));
    for (const row of [head, ...rows])
      console.log(
        row
          .map((v, c) => (c < 2 ? v.padStart(widths[c]!) : v.padEnd(widths[c]!)))
          .join('  ')
          .trimEnd(),
      );
    console.log(`(policy ${policyLabel(policy)}; --json prints every logit)`);
  } finally {
    await model.dispose();
  }
  return 0;
}

async function evalText(argv: string[]): Promise<number> {
  const args = parseCommand('eval', argv, {
    text: { type: 'string' },
    policy: { type: 'string', multiple: true },
    window: { type: 'string' },
    context: { type: 'string' },
    'max-tokens': { type: 'string' },
    json: { type: 'boolean' },
    ...LOAD_OPTIONS,
  });
  if (args.flag('help')) return help('eval');
  const textFile = args.str('text');
  if (!textFile) throw new UsageError('eval needs --text FILE', 'eval');
  let text: string;
  try {
    text = fs.readFileSync(textFile, 'utf8');
  } catch (e) {
    throw new UsageError(`--text ${textFile}: ${(e as Error).message}`, 'eval');
  }
  const window = intArg(args.str('window'), 'window', 2, 'eval');
  const context = intArg(args.str('context'), 'context', 1, 'eval');
  const maxTokens = intArg(args.str('max-tokens'), 'max-tokens', 1, 'eval');
  const specList = args.list('policy');
  const model = await openModel('eval', args);
  try {
    const L = model.config.numLayers;
    const specs = specList?.length ? specList : [policyLabel(model.defaultPolicy.policy)];
    const policies = specs.map((s) => parsePolicy(s, L));
    const ids = model.tokenizer.encode(text, false);
    const rows = [];
    const json = args.flag('json');
    if (!json)
      console.log(
        `${'policy'.padEnd(34)} ${'perplexity'.padStart(10)} ${'mean layers'.padStart(12)} ${'tokens'.padStart(8)}`,
      );
    for (let i = 0; i < policies.length; i++) {
      const r = await measurePerplexity(model, ids, {
        policy: policies[i],
        ...(window ? { window } : {}),
        ...(context ? { context } : {}),
        ...(maxTokens ? { maxTokens } : {}),
      });
      rows.push({ policy: specs[i], ...r });
      if (!json)
        console.log(
          `${specs[i]!.padEnd(34)} ${r.perplexity.toFixed(3).padStart(10)} ${`${r.meanLayers.toFixed(2)} / ${L}`.padStart(12)} ${String(r.tokens).padStart(8)}`,
        );
    }
    if (json)
      process.stdout.write(JSON.stringify({ model: model.dir, layers: L, text: textFile, results: rows }) + '\n');
  } finally {
    await model.dispose();
  }
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'generate':
        return await generate(rest);
      case 'chat':
        return await chatCommand(rest);
      case 'info':
        return await info(rest);
      case 'logits':
        return await logits(rest);
      case 'eval':
        return await evalText(rest);
      case 'serve':
        return await serveCommand(rest);
      case '--version':
      case '-v':
        process.stdout.write(`${getBuildInfo().version}\n`);
        return 0;
      case '-h':
      case '--help':
      case 'help':
        return help(rest[0] ?? '');
      case undefined:
        process.stderr.write(USAGE);
        return 2;
      default:
        throw new UsageError(`unknown command '${cmd}' (commands: generate, chat, info, logits, eval, serve)`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      const hint = e.command ? `depthgate ${e.command} --help` : 'depthgate --help';
      process.stderr.write(
        `depthgate${e.command ? ` ${e.command}` : ''}: ${e.message}\n(\`${hint}\` lists the options)\n`,
      );
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
  exitQuietlyOnClosedPipe();
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

/** Exact mode's part of the generate footer. */
function speculativeFooter(s: SpeculativeStats): string {
  return (
    `exact mode: ${s.accepted} of ${s.drafted} drafted tokens accepted (${(100 * s.acceptanceRate).toFixed(1)}%), ` +
    `${s.meanDraftLength.toFixed(2)} drafted per verification, ${s.layersPerToken.toFixed(2)} layers computed per token`
  );
}
