/** `depthgate serve` as a user runs it (node dist/cli.js serve), shut down by SIGTERM. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { cleanup, tinyModel } from './helpers';
import { parseSse, post, raw } from './serverHelpers';

afterAll(cleanup);

const cli = path.join(__dirname, '..', 'dist', 'cli.js');

/** Starts `serve` on a free port; resolves once the model is loaded, with the URL and the stderr so far. */
function serve(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ child: ChildProcess; url: string; stderr: () => string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000);
    child.stderr!.on('data', (c: Buffer) => {
      err += c.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m && /model loaded/.test(err)) {
        clearTimeout(timer);
        resolve({ child, url: m[1], stderr: () => err, exited });
      }
    });
    exited.then((code) => reject(new Error(`serve exited with ${code}: ${err}`)));
  });
}

test('serve with no MODEL_DIR serves the default model; SIGTERM lets a running stream finish, then exits 0', async () => {
  const s = await serve([]);
  expect(s.stderr()).toMatch(/using the default model/);
  const models = (await raw(s.url, 'GET', '/v1/models')).json();
  expect(models.data.map((m: { id: string }) => m.id)).toEqual(['default']);
  const streaming = post(s.url, '/v1/completions', {
    prompt: 'And God said',
    max_tokens: 200,
    temperature: 0,
    stream: true,
  });
  // SIGTERM once the generation is running.
  for (let i = 0; i < 400 && !/depthgate_active_sequences 1/.test((await raw(s.url, 'GET', '/metrics')).text); i++)
    await new Promise((r) => setTimeout(r, 5));
  s.child.kill('SIGTERM');
  const r = await streaming;
  const { data, done } = parseSse(r.text);
  expect(done).toBe(true);
  expect(data[data.length - 1].choices[0].finish_reason).toBe('length');
  expect(await s.exited).toBe(0);
  expect(s.stderr()).toMatch(/SIGTERM: shutting down/);
  expect(s.stderr()).toMatch(/POST \/v1\/completions 200 .*completion 200 \(length\), flexidepth [\d.]+ layers\/token/);
  expect(s.stderr()).toMatch(/stopped\n$/);
});

test('serve options: an API key from the environment, --parallel and --context; bad arguments are usage errors', async () => {
  const dir = tinyModel({ seed: 4, maxPositions: 128 });
  const s = await serve(
    [dir, '--parallel', '2', '--context', '32', '--model-id', 'tiny', '--quiet', '--weights', 'q8_0'],
    { DEPTHGATE_API_KEY: 'k1' },
  );
  expect(s.stderr()).toMatch(
    /model loaded \(LlamaForCausalLM, 2 layers, weights quantized on load to q8_0 in \d+ ms\)/,
  );
  expect((await post(s.url, '/v1/completions', { prompt: 'x' })).status).toBe(401);
  const auth = { authorization: 'Bearer k1' };
  const m = (await raw(s.url, 'GET', '/metrics', undefined, auth)).text;
  expect(m).toMatch(/depthgate_parallel_slots 2/);
  const tooLong = await post(s.url, '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 40 }, auth);
  expect(tooLong.json().error.code).toBe('context_length_exceeded');
  expect((await post(s.url, '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 4 }, auth)).status).toBe(200);
  s.child.kill('SIGTERM');
  expect(await s.exited).toBe(0);
  expect(s.stderr()).not.toMatch(/POST \/v1/); // --quiet

  const run = (args: string[]) =>
    spawnSync(process.execPath, [cli, 'serve', ...args], { encoding: 'utf8', timeout: 30_000 });
  const badPort = run(['--port', 'eighty']);
  expect(badPort.status).toBe(2);
  expect(badPort.stderr).toMatch(/--port must be an integer from 0 to 65535, got 'eighty'/);
  // One line and a hint, not the whole usage.
  expect(badPort.stderr).toBe(
    "depthgate serve: --port must be an integer from 0 to 65535, got 'eighty'\n(`depthgate serve --help` lists the options)\n",
  );
  expect(run([dir, dir]).status).toBe(2);
  const badWeights = run([dir, '--weights', 'q5_k']);
  expect(badWeights.status).toBe(2);
  expect(badWeights.stderr).toMatch(/--weights must be stored, q8_0, q4_0, q4_k or q6_k, got 'q5_k'/);
  expect(run(['--bogus']).status).toBe(2);
  const help = run(['--help']);
  expect(help.status).toBe(0);
  expect(help.stdout).toMatch(/--parallel N/);
  const noRouters = run([dir, '--port', '0', '--policy', 'flexidepth']);
  expect(noRouters.status).toBe(1);
  expect(noRouters.stderr).toMatch(/cannot serve the model: option 'policy': flexidepth needs FlexiDepth routers/);
  const missing = run([path.join(dir, 'nope'), '--port', '0']);
  expect(missing.status).toBe(1);
  expect(missing.stderr).toMatch(/the model directory does not exist/);
  expect(spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8' }).stdout).toMatch(
    /serve\s+an OpenAI-compatible HTTP server/,
  );
  expect(spawnSync(process.execPath, [cli, 'help', 'serve'], { encoding: 'utf8' }).stdout).toMatch(
    /^Usage: depthgate serve \[MODEL_DIR\]/,
  );
});
