// Two jest projects. `fast` (npm run test:fast) is the edit-compile-test loop: the engine against
// the float64 references, the API, the server and bad input, in about 65 s on 2 cores. test:fast runs
// one jest worker per core (--maxWorkers=100%): jest's default of cores - 1 is a single worker on a
// 2-core machine, which ran these files one after another in 90-100 s. `slow` (npm run test:slow)
// builds and runs native things: the C++ kernel, pool and op-parity tests under sanitizers, the CUDA library with nvcc, the packed tarball installed from
// the registry, libFuzzer, load/run/free soak, the GPU check's dry run. `npm test` runs both.
const slow = [
  'build',
  'cli', // spawns the CLI many times
  'cuda',
  'cuda-gpu',
  'fuzz',
  'generate', // long prompts and the default model
  'gpuCheck',
  'kernels',
  'opsParity',
  'package',
  'perplexity',
  'reliability',
  'speculative', // every draft policy on the default model
  'speculativeSampling', // a chi-square test over 2400 seeds
  'threads',
];
const slowPattern = `/test/(${slow.join('|')})\\.test\\.ts$`;

const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'test/tsconfig.json', diagnostics: { ignoreCodes: [151002] } }] },
};

/** @type {import('jest').Config} */
module.exports = {
  testTimeout: 120000,
  projects: [
    { ...common, displayName: 'fast', testPathIgnorePatterns: ['/node_modules/', slowPattern] },
    { ...common, displayName: 'slow', testRegex: slowPattern },
  ],
};
