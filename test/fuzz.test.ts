/**
 * A short coverage-guided fuzz run (libFuzzer + ASan + UBSan) of the native parsers: the JSON
 * reader, whole safetensors files, model binding, and whole GGUF files. Longer runs:
 * `bash scripts/fuzz.sh 600`.
 * Needs clang. Where it is missing the test is reported as skipped, with the reason; where clang
 * is required (DEPTHGATE_REQUIRE_FUZZ=1, which .ci/run sets after installing it) it fails instead.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const hasClang = spawnSync('sh', ['-c', 'command -v clang++']).status === 0;
const required = process.env.DEPTHGATE_REQUIRE_FUZZ === '1';
const name = 'native parsers survive a short fuzz run with no sanitizer report';
if (!hasClang && !required)
  console.log(`skipping "${name}": clang++ is not installed (apt-get install clang), so libFuzzer is unavailable`);

(hasClang || required ? test : test.skip)(
  name,
  () => {
    if (!hasClang)
      throw new Error(
        'DEPTHGATE_REQUIRE_FUZZ=1 but clang++ is not installed (apt-get install clang): the fuzz run cannot happen',
      );
    const seconds = process.env.DEPTHGATE_FUZZ_SECONDS ?? '20';
    const r = spawnSync('bash', [path.join(__dirname, '..', 'scripts', 'fuzz.sh'), seconds], {
      encoding: 'utf8',
      timeout: 900000,
    });
    const out = r.stdout + r.stderr;
    expect(out).not.toMatch(/FOUND A CRASH|ERROR: AddressSanitizer|runtime error:/);
    expect(out.match(/stat::number_of_executed_units:\s+\d+/g)).toHaveLength(4);
    expect(r.status).toBe(0);
  },
  900000,
);
