/** The depthgate command line, run as a user runs it (node dist/cli.js). */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadReference, referenceLogits } from './reference/reference';
import { cleanup, relError, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('generate with no model directory uses the embedded trained model and its FlexiDepth routers', () => {
  const r = run(['generate', '--prompt', 'And God said', '--max-tokens', '12']);
  expect(r.code).toBe(0);
  expect(r.stderr).toMatch(/default model \(12-layer .*FlexiDepth routers\)/);
  expect(r.stdout.startsWith('And God said')).toBe(true);
  expect(r.stderr).toMatch(/12 generated/);
  // The routers really skip: fewer than all 12 layers per token on average.
  const mean = Number(/([\d.]+) of 12 layers per token/.exec(r.stderr)![1]);
  expect(mean).toBeLessThan(12);
  expect(mean).toBeGreaterThan(6);
  // The model's generation_config.json sets the sampling, and the footer says so.
  expect(r.stderr).toMatch(/sampling: temperature 0\.8, top-k 50, top-p 0\.95 \(defaults from generation_config\.json: temperature, topK, topP\)/);
  // The same seed gives the same text again; greedy with --no-generation-config or --temperature 0.
  const seeded = ['generate', '--prompt', 'And God said', '--max-tokens', '12', '--seed', '3'];
  expect(run(seeded).stdout).toBe(run(seeded).stdout);
  const greedy = run(['generate', '--prompt', 'And God said', '--max-tokens', '12', '--no-generation-config']);
  expect(greedy.stderr).toMatch(/\[sampling: greedy\]/);
  expect(run(['generate', '--prompt', 'And God said', '--max-tokens', '12', '--temperature', '0']).stdout).toBe(greedy.stdout);
  // A penalty from the command line: named in the footer, and it changes the greedy text.
  const penalised = run(['generate', '--prompt', 'And God said', '--max-tokens', '40', '--temperature', '0', '--repetition-penalty', '1.3', '--presence-penalty', '0.5']);
  expect(penalised.code).toBe(0);
  expect(penalised.stderr).toMatch(/sampling: greedy, repetition penalty 1\.3, presence penalty 0\.5\]/);
  expect(penalised.stdout).not.toBe(run(['generate', '--prompt', 'And God said', '--max-tokens', '40', '--temperature', '0']).stdout);
  // --policy none overrides the default policy: every token runs all 12 layers.
  const full = run(['generate', '--prompt', 'And God said', '--max-tokens', '4', '--policy', 'none']);
  expect(full.stderr).toMatch(/12\.00 of 12 layers per token/);
});

test('--show-depth colours each generated token by its depth; --trace FILE.html writes the page', () => {
  const dir = tinyModel({ layers: 4, seed: 21 });
  const html = path.join(tmpDir(), 'depth.html');
  const r = run(['generate', dir, '--prompt', 'Once', '--max-tokens', '8', '--policy', 'd3:alpha=0.7', '--show-depth', '--trace', html]);
  expect(r.code).toBe(0);
  expect(r.stdout.startsWith('Once')).toBe(true);
  // 24-bit background colours, at least two different depths (D3 decays), and a legend.
  const colours = new Set([...r.stdout.matchAll(/\x1b\[48;2;(\d+;\d+;\d+)m/g)].map((m) => m[1]));
  expect(colours.size).toBeGreaterThanOrEqual(2);
  expect(r.stdout).toMatch(/layers/);
  const page = fs.readFileSync(html, 'utf8');
  expect(page).toMatch(/^<!DOCTYPE html>/i);
  expect((page.match(/<span class="tok"/g) ?? []).length).toBe(8);
  expect(page).toMatch(/d3:alpha=0\.7/);
  // A trace file that cannot be written is a usage error before any generation.
  const bad = run(['generate', dir, '--prompt', 'Once', '--trace', path.join(tmpDir(), 'no', 'such', 'dir', 'x.html')]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--trace .*x\.html: ENOENT/);
  expect(bad.stdout).toBe('');
  // Without --show-depth the output is plain text.
  const plain = run(['generate', dir, '--prompt', 'Once', '--max-tokens', '8', '--policy', 'd3:alpha=0.7']);
  expect(plain.stdout).not.toMatch(/\x1b\[/);
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
  const r = run(['logits', dir, '--tokens', '5,17,200,3', '--json', '--kv-cache', 'f32']);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout) as { logits: number[][] };
  const want = referenceLogits(loadReference(dir), [5, 17, 200, 3]);
  expect(out.logits).toHaveLength(4);
  out.logits.forEach((row, i) => expect(relError(row, want[i])).toBeLessThan(1e-5));
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
