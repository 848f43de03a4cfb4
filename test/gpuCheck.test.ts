/**
 * The one-call GPU check (scripts/gpu-check.sh) in its dry run, which is what can be checked
 * without a GPU: the bundle is prepared (dist/, the addon, node's runtime modules, the op harness,
 * the compiled node scripts, node itself xz-compressed) and what would travel fits in 64 MiB;
 * node unpacks from the bundle and runs; every node script runs against the CPU backend; the
 * python scripts compile, import only what exists here or on the GPU machine, and run their
 * self-tests; the summary and bench JSON are written; $OUT holds at most 8 files, each under
 * 16 MiB. Then a part broken on purpose is recorded as failed while the parts after it still run.
 * The GPU parts themselves (CUDA, memcheck, the benchmarks' numbers) are not measured here.
 * For speed the bundle goes to a temporary folder, without the CUDA library, with node at xz -0
 * (larger than the real -6, so the size check errs on the safe side).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanup, tmpDir } from './helpers';

afterAll(cleanup);
const script = path.join(__dirname, '..', 'scripts', 'gpu-check.sh');
const bundle = path.join(tmpDir('depthgate-gpu-bundle-'), 'bundle');

interface Part {
  part: string;
  status: string;
}

function dryRun(out: string, env: Record<string, string>): { status: number | null; output: string } {
  const r = spawnSync('bash', [script, '--dry-run', out], {
    encoding: 'utf8',
    timeout: 900000,
    env: {
      ...process.env,
      DG_BUNDLE: bundle,
      DG_NO_CUDA_BUILD: '1',
      DG_XZ_LEVEL: '0',
      DEPTHGATE_REQUIRE_GPU: '',
      ...env,
    },
  });
  return { status: r.status, output: r.stdout + r.stderr };
}

test('dry run: the bundle fits, every part that needs no GPU runs, $OUT stays within its limits', () => {
  const out = tmpDir('depthgate-gpu-out-');
  const r = dryRun(out, {});
  if (r.status !== 0) throw new Error(`dry run failed:\n${r.output.slice(-6000)}`);

  const manifest = JSON.parse(fs.readFileSync(path.join(bundle, 'manifest.json'), 'utf8'));
  expect(manifest.travelBytes).toBeLessThanOrEqual(64 * 1024 * 1024);
  expect(manifest.travelBytes).toBeGreaterThan(manifest.bundleBytes);
  for (const f of [
    'node.xz',
    'bin/ops_parity_test',
    'app/dist/index.js',
    'app/build/Release/depthgate.node',
    'scripts/engineParity.js',
    'scripts/benchDecode.js',
  ])
    expect(fs.existsSync(path.join(bundle, f))).toBe(true);

  const files = fs.readdirSync(out);
  expect(files.length).toBeLessThanOrEqual(8);
  for (const f of files) expect(fs.statSync(path.join(out, f)).size).toBeLessThan(16 * 1024 * 1024);
  for (const f of [
    'summary.json',
    'bench.json',
    'ops-parity.json',
    'engine-parity.json',
    'hf-parity.json',
    'env.txt',
    'log.txt',
  ])
    expect(files).toContain(f);

  const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
  const status = Object.fromEntries((summary.parts as Part[]).map((p) => [p.part, p.status]));
  expect(status).toEqual({
    node: 'ok',
    env: 'ok',
    cuda: 'skipped',
    ops: 'ok',
    engine: 'ok',
    hf: 'ok',
    memcheck: 'skipped',
    python_checks: 'ok',
    bench_torch: 'ok',
    bench_depthgate: 'ok',
    bench_ops: 'ok',
  });
  expect(summary.correctness).toBe('passed');
  expect(summary.results.opsParity.failed).toBe(0);
  expect(summary.results.opsParity.passed).toBeGreaterThan(500);
  expect(summary.results.engineParity.passed).toBeGreaterThan(10);
  expect(summary.results.hfParity.selfTest).toBe(true);
  // Dry-run figures are never presented as measurements.
  for (const t of summary.targets) expect(t.met).toBeNull();

  const bench = JSON.parse(fs.readFileSync(path.join(out, 'bench.json'), 'utf8'));
  expect(bench.kernels.length).toBeGreaterThan(10);
  // bench_torch's self-test checkpoints, in the layout of the GPU run's: a tied one, and an
  // untied one with FlexiDepth routers on every layer.
  const [tied, routed] = bench.depthgate.models;
  expect(tied.error).toBeUndefined();
  expect(tied.dense.length).toBe(3);
  expect(routed.dense.length).toBe(3);
  expect(routed.skipping.length).toBe(4);
  expect(routed.flexidepth.length).toBe(2);
  expect(bench.command).toMatch(/gpu-check\.sh --dry-run/);
}, 900000);

test('a part that fails is recorded, and the parts after it still run', () => {
  const out = tmpDir('depthgate-gpu-out-');
  const r = dryRun(out, { DG_SKIP_PREPARE: '1', DG_GPU_CHECK_BREAK: 'engine' });
  expect(r.status).not.toBe(0);
  const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
  const status = Object.fromEntries((summary.parts as Part[]).map((p) => [p.part, p.status]));
  expect(status.engine).toBe('failed');
  expect(summary.failedParts).toEqual(['engine']);
  expect(summary.correctness).toBe('failed');
  for (const p of ['hf', 'bench_depthgate', 'bench_ops']) expect(status[p]).toBe('ok');
}, 600000);
