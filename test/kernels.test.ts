/**
 * The standalone C++ kernel tests (test/native/kernels_test.cc) for every SIMD variant this
 * processor has, plus an AddressSanitizer/UBSan build: run from jest so CI runs them.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

test('C++ kernel tests pass for every available variant, and under ASan/UBSan', () => {
  const r = spawnSync('bash', [path.join(__dirname, '..', 'scripts', 'test-kernels.sh')], {
    encoding: 'utf8',
    timeout: 900000,
  });
  const out = r.stdout + r.stderr;
  expect(out).toMatch(/kernel tests passed/);
  expect(out).not.toMatch(/[1-9]\d* failed/);
  expect(r.status).toBe(0);
}, 900000);

test('engine: every decode step is one upload, backend ops, one download (every policy, batch 1 and 4)', () => {
  const r = spawnSync('bash', [path.join(__dirname, '..', 'scripts', 'test-engine-transfers.sh')], {
    encoding: 'utf8',
    timeout: 900000,
  });
  const out = r.stdout + r.stderr;
  expect(out).toMatch(/^[1-9]\d* passed, 0 failed$/m);
  expect(r.status).toBe(0);
}, 900000);
