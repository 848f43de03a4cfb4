/**
 * The op-level parity harness (test/native/ops_parity_test.cc, built and run by
 * scripts/test-ops-parity.sh): every op of the op table on two backends against a float64
 * reference. Here (no GPU) backend B is a second CPU backend with the scalar kernels and another
 * thread count in a child process; on a GPU machine it is CUDA (scripts/gpu-check.sh runs it so).
 * Then the planted-bug run: every planted bug (an ignored device count, a swapped scale, a window
 * one key wider, host memory passed as backend memory, ...) must be caught.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanup, tmpDir } from './helpers';

afterAll(cleanup);

interface GroupRow {
  group: string;
  checks: number;
  failed: number;
  maxErrA: number | string;
  maxErrB: number | string;
}

test('every op agrees with the float64 reference on both backends, and every planted bug is caught', () => {
  const json = path.join(tmpDir('depthgate-ops-parity-'), 'ops-parity.json');
  const r = spawnSync('bash', [path.join(__dirname, '..', 'scripts', 'test-ops-parity.sh'), '--json', json], {
    encoding: 'utf8',
    timeout: 600000,
    // Not a GPU check: B is the child CPU backend even where a GPU happens to be usable.
    env: { ...process.env, DEPTHGATE_PARITY_B: 'cpu', DEPTHGATE_REQUIRE_GPU: '' },
  });
  const out = r.stdout + r.stderr;
  expect(out).toMatch(/\d+ passed, 0 failed/);
  expect(out).toMatch(/(\d+) of \1 planted bugs caught/);
  expect(out).toMatch(/ops parity passed/);
  expect(r.status).toBe(0);

  const report = JSON.parse(fs.readFileSync(json, 'utf8')) as {
    a: string;
    b: string;
    failed: number;
    groups: GroupRow[];
  };
  expect(report.a).toMatch(/^cpu /);
  expect(report.b).toMatch(/^cpu scalar in a child process/);
  expect(report.failed).toBe(0);
  const groups = new Map(report.groups.map((g) => [g.group, g]));
  const want = ['memory', 'rmsnorm', 'tanhRows', 'ropeRows', 'routeThreshold', 'routeArgmax', 'compact', 'sample'];
  for (const op of ['embed', 'matmul', 'matmul2', 'matmulGateUp', 'kvWriteRope', 'attention'])
    for (const dt of ['f32', 'f16', 'bf16']) want.push(`${op} ${dt}`);
  for (const g of want) {
    expect(groups.get(g)?.checks ?? 0).toBeGreaterThan(0);
    expect(groups.get(g)?.failed).toBe(0);
  }
}, 600000);
