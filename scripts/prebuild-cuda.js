#!/usr/bin/env node
// Second half of `npm run prebuildify`: when nvcc is available, build the CUDA backend library
// (CMake, CUDA only) and place it next to the prebuilt addon, where the addon's loader looks.
// Without nvcc it says so and leaves a CPU-only prebuild.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const has = (tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
if (!has('nvcc') || !has('cmake')) {
  console.log('prebuild-cuda: nvcc or cmake not found; the prebuild is CPU-only');
  process.exit(0);
}
const build = path.join(root, 'build-cuda');
const run = (args) => {
  const r = spawnSync('cmake', args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
run(['-S', '.', '-B', build, '-DCMAKE_BUILD_TYPE=Release', '-DDEPTHGATE_CUDA=ON', '-DDEPTHGATE_CUDA_ONLY=ON']);
run(['--build', build, '--target', 'depthgate_cuda', '-j', String(require('node:os').availableParallelism())]);
const lib = [path.join(build, 'Release', 'libdepthgate_cuda.so'), path.join(build, 'libdepthgate_cuda.so')].find((f) =>
  fs.existsSync(f),
);
if (!lib) {
  console.error('prebuild-cuda: the build did not produce libdepthgate_cuda.so');
  process.exit(1);
}
const dest = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.mkdirSync(dest, { recursive: true });
fs.copyFileSync(lib, path.join(dest, 'libdepthgate_cuda.so'));
spawnSync('strip', ['--strip-unneeded', path.join(dest, 'libdepthgate_cuda.so')]);
console.log(`prebuild-cuda: ${path.join(dest, 'libdepthgate_cuda.so')}`);
