/**
 * The CUDA backend library (cuda/, libdepthgate_cuda.so) on any machine: it builds with nvcc
 * when nvcc is present, exports exactly its three C entry points, does not depend on the CUDA
 * runtime or driver libraries at load time, and on a machine without a usable GPU its probe
 * reports available:false with a reason instead of crashing. No GPU is needed (see
 * cuda-gpu.test.ts for the tests that need one).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanup, tmpDir } from './helpers';

afterAll(cleanup);
const root = path.join(__dirname, '..');

function which(cmd: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

const nvcc = which('nvcc') ?? (fs.existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : null);
const haveTools = !!which('cmake') && !!which('g++') && !!which('nm');

// A C++ program that loads the library the way the addon does and prints what it reports.
const PROBE_SRC = `
#include <dlfcn.h>
#include <cstdio>
#include <cstddef>
typedef int (*abi_fn)(void);
typedef int (*probe_fn)(char*, size_t);
typedef void* (*create_fn)(int, char*, size_t);
int main(int argc, char** argv) {
  if (argc < 2) return 64;
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) { std::fprintf(stderr, "dlopen: %s\\n", dlerror()); return 2; }
  abi_fn abi = (abi_fn)dlsym(h, "dg_cuda_abi_version");
  probe_fn probe = (probe_fn)dlsym(h, "dg_cuda_probe");
  create_fn create = (create_fn)dlsym(h, "dg_cuda_create_ops");
  if (!abi || !probe || !create) { std::fprintf(stderr, "missing entry point\\n"); return 3; }
  static char buf[16384];
  int usable = probe(buf, sizeof buf);
  char err[1024] = {0};
  void* ops = usable ? nullptr : create(0, err, sizeof err);
  std::printf("{\\"abi\\":%d,\\"usable\\":%d,\\"probe\\":%s,\\"createFailed\\":%s}\\n", abi(), usable, buf,
              (!usable && !ops && err[0]) ? "true" : "false");
  return 0;
}
`;

const describeNvcc = nvcc && haveTools ? describe : describe.skip;
const whyNot = !nvcc
  ? 'nvcc is not on PATH, so the CUDA backend library cannot be built here'
  : !haveTools
    ? 'cmake, g++ or nm is missing'
    : '';
// On a GPU check (DEPTHGATE_REQUIRE_GPU=1) the toolchain must be there: skipping is a failure.
if (whyNot && process.env.DEPTHGATE_REQUIRE_GPU === '1')
  test('DEPTHGATE_REQUIRE_GPU=1: the CUDA toolchain is there', () => {
    throw new Error(`DEPTHGATE_REQUIRE_GPU=1 but the CUDA library tests cannot run: ${whyNot}`);
  });
else if (whyNot) console.log(`skipped: ${whyNot}`);

describeNvcc('CUDA backend library (built with nvcc, no GPU needed)', () => {
  let lib = '';
  let buildSeconds = 0;

  beforeAll(() => {
    const out = tmpDir('depthgate-cuda-');
    const t0 = Date.now();
    const cfg = spawnSync(
      'cmake',
      [
        '-S',
        root,
        '-B',
        out,
        '-DCMAKE_BUILD_TYPE=Release',
        '-DDEPTHGATE_CUDA=ON',
        '-DDEPTHGATE_CUDA_ONLY=ON',
        `-DCMAKE_CUDA_COMPILER=${nvcc}`,
      ],
      { encoding: 'utf8', timeout: 300000 },
    );
    if (cfg.status !== 0) throw new Error(`cmake configure failed:\n${cfg.stdout}\n${cfg.stderr}`);
    const build = spawnSync('cmake', ['--build', out, '--target', 'depthgate_cuda', '-j2'], {
      encoding: 'utf8',
      timeout: 900000,
    });
    if (build.status !== 0) throw new Error(`CUDA build failed:\n${build.stdout}\n${build.stderr}`);
    buildSeconds = (Date.now() - t0) / 1000;
    lib = path.join(out, 'libdepthgate_cuda.so');
  }, 960000);

  test('builds libdepthgate_cuda.so', () => {
    expect(fs.existsSync(lib)).toBe(true);
    console.log(`CUDA library built in ${buildSeconds.toFixed(1)} s`);
  });

  test('exports the three dg_cuda_* entry points and no other C symbols of its own', () => {
    const nm = spawnSync('nm', ['-D', '--defined-only', lib], { encoding: 'utf8' });
    expect(nm.status).toBe(0);
    const defined = nm.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length === 3);
    const names = defined.map((f) => f[2]);
    for (const s of ['dg_cuda_abi_version', 'dg_cuda_probe', 'dg_cuda_create_ops']) expect(names).toContain(s);
    // Strong text symbols: only ours (weak template instances of libstdc++ may appear as W).
    const strong = defined
      .filter((f) => f[1] === 'T')
      .map((f) => f[2])
      .sort();
    expect(strong).toEqual(['dg_cuda_abi_version', 'dg_cuda_create_ops', 'dg_cuda_probe']);
    // The static CUDA runtime stays private.
    expect(names.filter((n) => /^(cuda|__cuda)/.test(n))).toEqual([]);
  });

  test('has no load-time dependency on libcudart or libcuda', () => {
    const od = spawnSync('objdump', ['-p', lib], { encoding: 'utf8' });
    expect(od.status).toBe(0);
    const needed = od.stdout
      .split('\n')
      .filter((l) => /NEEDED/.test(l))
      .map((l) => l.trim().split(/\s+/)[1]);
    expect(needed.length).toBeGreaterThan(0);
    expect(needed.filter((n) => /cudart|libcuda|cublas|nvrtc/.test(n))).toEqual([]);
    const ldd = spawnSync('ldd', [lib], { encoding: 'utf8' });
    if (ldd.status === 0) expect(ldd.stdout).not.toMatch(/libcudart|libcuda\.so/);
  });

  test('loads with dlopen and its probe answers without crashing', () => {
    const dir = tmpDir('depthgate-cuda-probe-');
    const src = path.join(dir, 'probe.cc');
    const exe = path.join(dir, 'probe');
    fs.writeFileSync(src, PROBE_SRC);
    const cc = spawnSync('g++', ['-O1', '-o', exe, src, '-ldl'], { encoding: 'utf8' });
    expect(cc.stderr).toBe('');
    expect(cc.status).toBe(0);
    const run = spawnSync(exe, [lib], { encoding: 'utf8', timeout: 120000 });
    expect(run.signal).toBeNull();
    expect(run.status).toBe(0);
    const r = JSON.parse(run.stdout) as {
      abi: number;
      usable: number;
      createFailed: boolean;
      probe: {
        available: boolean;
        reason: string;
        devices: { name: string; computeCapability: string; memoryBytes: number }[];
      };
    };
    const abiHeader = fs
      .readFileSync(path.join(root, 'native/cuda_loader.h'), 'utf8')
      .match(/#define DG_CUDA_ABI (\d+)/);
    expect(abiHeader).not.toBeNull();
    expect(r.abi).toBe(Number(abiHeader![1]));
    expect(typeof r.probe.available).toBe('boolean');
    expect(Array.isArray(r.probe.devices)).toBe(true);
    expect(r.probe.available).toBe(r.usable === 1);
    if (!r.probe.available) {
      // The machine this suite was written on: no driver, no GPU.
      expect(r.probe.reason.length).toBeGreaterThan(0);
      expect(r.createFailed).toBe(true);
      // Without the driver's library the reason says so (not "driver version is insufficient").
      const driver = spawnSync('/bin/sh', ['-c', 'ldconfig -p | grep -q "libcuda\\.so\\.1 " && echo yes || echo no'], {
        encoding: 'utf8',
      }).stdout.trim();
      if (driver === 'no') expect(r.probe.reason).toMatch(/^no NVIDIA driver found/);
      console.log(`CUDA probe on this machine: unavailable (${r.probe.reason})`);
    } else {
      for (const d of r.probe.devices) {
        expect(d.computeCapability).toMatch(/^\d+\.\d+$/);
        expect(d.memoryBytes).toBeGreaterThan(0);
      }
      console.log(
        `CUDA probe on this machine: ${r.probe.devices.map((d) => `${d.name} sm_${d.computeCapability}`).join(', ')}`,
      );
    }
  });
});

test('the CUDA sources are only in the CUDA library, never in the addon source list', () => {
  const listed = JSON.parse(fs.readFileSync(path.join(root, 'native/sources.json'), 'utf8')) as string[];
  expect(listed).toContain('native/cuda_loader.cc');
  expect(listed.filter((s) => s.startsWith('cuda/') || s.endsWith('.cu'))).toEqual([]);
  // The loader compiles without CUDA headers, so both addon builds (cmake-js, node-gyp) take it.
  const loader =
    fs.readFileSync(path.join(root, 'native/cuda_loader.cc'), 'utf8') +
    fs.readFileSync(path.join(root, 'native/cuda_loader.h'), 'utf8');
  expect(loader).not.toMatch(/#include\s*[<"](cuda_runtime|cuda\.h|cuda_fp16|cuda_bf16)/);
});
