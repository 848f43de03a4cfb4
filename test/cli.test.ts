/** The depthgate command line, run as a user runs it (node dist/cli.js). */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { loadReference, referenceLogits } from './reference/reference';
import { cleanup, relError, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('generate with no model directory writes and uses the default model', () => {
  const cache = tmpDir();
  const r = run(['generate', '--prompt', 'Hello', '--max-tokens', '6'], { DEPTHGATE_CACHE_DIR: cache });
  expect(r.stderr).toMatch(/default model/);
  expect(r.code).toBe(0);
  expect(r.stdout.startsWith('Hello')).toBe(true);
  expect(r.stderr).toMatch(/6 generated/);
  // The second run reuses the cached model and, greedy, prints the same text.
  const again = run(['generate', '--prompt', 'Hello', '--max-tokens', '6'], { DEPTHGATE_CACHE_DIR: cache });
  expect(again.stdout).toBe(r.stdout);
});

test('generate with sampling options and a seed is reproducible', () => {
  const dir = tinyModel({ seed: 2 });
  const args = ['generate', dir, '-p', 'Once', '--max-tokens', '8', '--temperature', '0.9', '--top-k', '40', '--top-p', '0.95', '--seed', '5'];
  const a = run(args);
  const b = run(args);
  expect(a.code).toBe(0);
  expect(a.stdout).toBe(b.stdout);
});

test('info reports architecture, parameters, dtype and memory', () => {
  const dir = tinyModel({ arch: 'qwen2', dtype: 'bf16', layers: 3 });
  const r = run(['info', dir]);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/architecture: Qwen2ForCausalLM \(3 layers/);
  expect(r.stdout).toMatch(/parameters: [\d,]+/);
  expect(r.stdout).toMatch(/dtype: BF16/);
  expect(r.stdout).toMatch(/weights: .* memory-mapped/);
  expect(r.stdout).toMatch(/CPU kernels (avx512|avx2|scalar)/);
});

test('logits --json prints one row per position matching the reference', () => {
  const dir = tinyModel({ seed: 4 });
  const r = run(['logits', dir, '--tokens', '5,17,200,3', '--json']);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout) as { logits: number[][] };
  const want = referenceLogits(loadReference(dir), [5, 17, 200, 3]);
  expect(out.logits).toHaveLength(4);
  out.logits.forEach((row, i) => expect(relError(row, want[i])).toBeLessThan(1e-4));
});

test('bad arguments and bad models give a message and a non-zero exit, not a crash', () => {
  const dir = tinyModel();
  const bad = run(['generate', dir, '--prompt', 'x', '--temperature', 'hot']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--temperature must be a number/);
  const unknown = run(['generate', dir, '--prompt', 'x', '--bogus']);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toMatch(/bogus/);
  const missing = run(['info', path.join(dir, 'nope')]);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toMatch(/model directory does not exist \[ERR_DEPTHGATE_MODEL_IO\]/);
  const cmd = run(['frobnicate']);
  expect(cmd.code).toBe(2);
});
