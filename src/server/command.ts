/**
 * `depthgate serve [MODEL_DIR]`: the OpenAI-compatible server from the command line. It listens
 * first and loads the model after (/health says 503 until it is loaded), logs one line per
 * request to stderr, and on SIGTERM or SIGINT shuts down gracefully: new requests get 503,
 * running ones get --shutdown-timeout seconds to finish, then the model is freed. A second
 * signal exits at once.
 */
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { defaultModelSetup } from '../defaultModel';
import { DepthgateError } from '../errors';
import { loadModel, type Model } from '../model';
import { WEIGHT_FORMATS, type LoadOptions, type WeightFormatOption } from '../options';
import { createServer } from './server';
import type { RequestRecord, ServerOptions } from './options';

/** The help text of `serve` (also printed after a usage error). */
export const SERVE_USAGE = `Usage: depthgate serve [MODEL_DIR] [options]   OpenAI-compatible HTTP server (default model if no MODEL_DIR)
      --host H              address to listen on (default 127.0.0.1)
      --port N              port (default 8080; 0 picks a free one)
      --parallel N          generations that run at once, batched together (default 4)
      --queue N             requests that may wait for a slot; more get 429 (default 64)
      --context N           context per request: prompt + max_tokens must fit (default: the model's)
      --policy SPEC         policy of requests that name none (default: the model's default policy)
      --api-key KEY         require Authorization: Bearer KEY (or set DEPTHGATE_API_KEY)
      --cors ORIGIN         allow browser calls from ORIGIN (repeatable; '*' for any; default none)
      --model-id NAME       the model's name in /v1/models (default: the directory's name)
      --addon FILE          router weights to apply to the model (repeatable)
      --threads N           CPU threads (default: the processors this process may use)
      --backend B           auto | cpu | cuda (default: $DEPTHGATE_BACKEND or auto)
      --weights W           weights in memory: stored (default), or quantized on load (CPU): q8_0, q4_0,
                            q4_k (llama.cpp's Q4_K_M mix of Q4_K and Q6_K) or q6_k
      --shutdown-timeout S  seconds running requests get to finish on SIGTERM (default 10)
      --quiet               no access log
`;

class ServeUsageError extends Error {}

function intArg(v: string | undefined, name: string, min: number, max = 2 ** 31 - 1): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max)
    throw new ServeUsageError(`--${name} must be an integer from ${min} to ${max}, got '${v}'`);
  return Number(v);
}

function accessLine(r: RequestRecord): string {
  const parts = [`${r.method} ${r.path} ${r.status} ${r.durationMs.toFixed(0)} ms`];
  if (r.promptTokens !== undefined) parts.push(`prompt ${r.promptTokens}`);
  if (r.completionTokens !== undefined) parts.push(`completion ${r.completionTokens} (${r.finishReason})`);
  if (r.meanLayers !== undefined) parts.push(`${r.policy} ${r.meanLayers.toFixed(2)} layers/token`);
  if (r.cancelled) parts.push(`cancelled by ${r.cancelled}`);
  if (r.error) parts.push(`error ${r.error}`);
  return `${new Date().toISOString()} ${parts.join(', ')}\n`;
}

/** Runs `depthgate serve`; resolves with the exit code once the server has shut down. */
export async function serveCommand(argv: string[]): Promise<number> {
  let values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '8080' },
        parallel: { type: 'string' },
        queue: { type: 'string' },
        context: { type: 'string' },
        policy: { type: 'string' },
        'api-key': { type: 'string' },
        cors: { type: 'string', multiple: true },
        'model-id': { type: 'string' },
        addon: { type: 'string', multiple: true },
        threads: { type: 'string' },
        backend: { type: 'string' },
        weights: { type: 'string' },
        'shutdown-timeout': { type: 'string' },
        quiet: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
    if (values.help) {
      process.stdout.write(SERVE_USAGE);
      return 0;
    }
    if (positionals.length > 1) throw new ServeUsageError(`serve takes one MODEL_DIR, got ${positionals.length}`);
    if (values.backend !== undefined && !['auto', 'cpu', 'cuda'].includes(values.backend))
      throw new ServeUsageError(`--backend must be auto, cpu or cuda, got '${values.backend}'`);
    if (values.weights !== undefined && !(WEIGHT_FORMATS as readonly string[]).includes(values.weights))
      throw new ServeUsageError(`--weights must be stored, q8_0, q4_0, q4_k or q6_k, got '${values.weights}'`);
  } catch (e) {
    if (e instanceof ServeUsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(
        `depthgate serve: ${(e as Error).message}\n(\`depthgate serve --help\` lists the options)\n`,
      );
      return 2;
    }
    throw e;
  }
  const say = (s: string) => process.stderr.write(`depthgate: ${s}\n`);
  let options: ServerOptions;
  let port: number;
  let shutdownS: number;
  let threads: number | undefined;
  try {
    port = intArg(values.port, 'port', 0, 65535)!;
    shutdownS = intArg(values['shutdown-timeout'], 'shutdown-timeout', 0) ?? 10;
    threads = intArg(values.threads, 'threads', 1, 1024);
    const apiKey = values['api-key'] ?? (process.env.DEPTHGATE_API_KEY || undefined);
    const num = (v: string | undefined, name: string, min: number) => {
      const n = intArg(v, name, min);
      return n === undefined ? {} : { [name]: n };
    };
    options = {
      ...num(values.parallel, 'parallel', 1),
      ...renameKey(num(values.queue, 'queue', 0), 'queue', 'queueLength'),
      ...renameKey(num(values.context, 'context', 2), 'context', 'contextSize'),
      ...(values.policy !== undefined ? { policy: values.policy } : {}),
      ...(apiKey ? { apiKey } : {}),
      ...(values.cors ? { cors: values.cors } : {}),
      ...(values['model-id'] ? { modelId: values['model-id'] } : {}),
      shutdownTimeoutMs: shutdownS * 1000,
      ...(values.quiet ? {} : { onRequest: (r: RequestRecord) => process.stderr.write(accessLine(r)) }),
    };
  } catch (e) {
    process.stderr.write(`depthgate serve: ${(e as Error).message}\n(\`depthgate serve --help\` lists the options)\n`);
    return 2;
  }
  let modelDir = positionals[0];
  let addons = (values.addon ?? []).map((a) => path.resolve(a));
  if (modelDir === undefined) {
    const d = defaultModelSetup();
    modelDir = d.dir;
    if (!addons.length) addons = d.addons;
    say(`using the default model (12-layer Llama trained on the King James Bible): ${modelDir}`);
  }
  const loadOptions: LoadOptions = {
    ...(threads ? { threads } : {}),
    ...(addons.length ? { addons } : {}),
    ...(values.backend ? { backend: values.backend as LoadOptions['backend'] } : {}),
    ...(values.weights ? { weights: values.weights as WeightFormatOption } : {}),
  };
  const loading = loadModel(modelDir, loadOptions);
  let server;
  try {
    server = createServer(loading, options);
  } catch (e) {
    loading.then(
      (m) => m.dispose(),
      () => undefined,
    );
    if (e instanceof DepthgateError) {
      process.stderr.write(`depthgate serve: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  try {
    const { url } = await server.listen(port, values.host);
    say(`listening on ${url} (loading the model)`);
  } catch (e) {
    loading.then(
      (m) => m.dispose(),
      () => undefined,
    );
    say(`cannot listen on ${values.host}:${port}: ${(e as Error).message}`);
    return 1;
  }
  let model: Model | undefined;
  let code = 0;
  let stopping = false;
  let onSignal: (sig: NodeJS.Signals) => void = () => undefined;
  await new Promise<void>((resolve) => {
    onSignal = (sig) => {
      if (stopping) {
        say(`${sig} again: exiting now`);
        process.exit(1);
      }
      stopping = true;
      say(`${sig}: shutting down (running requests get ${shutdownS} s to finish)`);
      resolve();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    server.ready.then(
      async () => {
        model = await loading;
        const i = model.info;
        const q =
          i.weights === 'stored' ? '' : `, weights quantized on load to ${i.weights} in ${i.quantizeMs.toFixed(0)} ms`;
        say(`model loaded (${i.architecture}, ${i.numLayers} layers${q}), served as '${server.modelId}'`);
      },
      (e) => {
        say(`cannot serve the model: ${(e as Error).message}`);
        code = 1;
        resolve();
      },
    );
  });
  await server.close();
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  await (model ?? (await loading.catch(() => undefined)))?.dispose();
  say('stopped');
  return code;
}

function renameKey(o: Record<string, number>, from: string, to: string): Record<string, number> {
  const v = o[from];
  return v === undefined ? {} : { [to]: v };
}
