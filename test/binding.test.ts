/** The addon loader's error report, build info, and the shipped API's documentation. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { getBuildInfo, NativeLoadError } from '../src';
import { loadNativeFrom } from '../src/binding';
import { cleanup, tmpDir } from './helpers';

afterAll(cleanup);
const root = path.join(__dirname, '..');

describe('loader', () => {
  test('with no binary anywhere, the error lists every place tried and why each failed', () => {
    const dir = tmpDir();
    const err = (() => {
      try {
        loadNativeFrom(dir);
      } catch (e) {
        return e as NativeLoadError;
      }
      throw new Error('loaded');
    })();
    expect(err).toBeInstanceOf(NativeLoadError);
    expect(err.code).toBe('ERR_DEPTHGATE_NATIVE_LOAD');
    expect(err.attempts.map((a) => path.relative(dir, a.path))).toEqual([
      'build/Release/depthgate.node',
      'build/Debug/depthgate.node',
      `prebuilds/${process.platform}-${process.arch}/*.node`,
    ]);
    expect(err.message).toMatch(new RegExp(`for ${process.platform}-${process.arch}, node ${process.versions.node}`));
    expect(err.message).toMatch(/glibc >= 2\.32/);
  });

  test('a broken prebuilt binary and one for the other libc are each reported with their reason', () => {
    const dir = tmpDir();
    const pre = path.join(dir, 'prebuilds', `${process.platform}-${process.arch}`);
    fs.mkdirSync(pre, { recursive: true });
    fs.writeFileSync(path.join(pre, 'depthgate.glibc.node'), 'not an ELF file');
    fs.writeFileSync(path.join(pre, 'depthgate.musl.node'), 'not an ELF file');
    let err: NativeLoadError | undefined;
    try {
      loadNativeFrom(dir);
    } catch (e) {
      err = e as NativeLoadError;
    }
    const byName = Object.fromEntries(err!.attempts.map((a) => [path.basename(a.path), a.error]));
    expect(byName['depthgate.glibc.node']).toMatch(/invalid ELF header|file too short/);
    expect(byName['depthgate.musl.node']).toMatch(/built for musl, this system uses glibc/);
  });

  test('DEPTHGATE_NATIVE_PATH is used alone, and a bad one is reported as such', () => {
    const good = loadNativeFrom(tmpDir(), path.join(root, 'build', 'Release', 'depthgate.node'));
    expect(typeof good.addon.loadModel).toBe('function');
    expect(() => loadNativeFrom(root, '/nonexistent/depthgate.node')).toThrow(
      /DEPTHGATE_NATIVE_PATH is set[\s\S]*nonexistent\/depthgate\.node: not found/,
    );
  });

  test('getBuildInfo reports version, backends, CPU features and CUDA status', () => {
    const b = getBuildInfo();
    expect(b.version).toBe(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version);
    const libBeside = fs.existsSync(path.join(path.dirname(b.addonPath), 'libdepthgate_cuda.so'));
    expect(b.backends).toEqual(libBeside ? ['cpu', 'cuda'] : ['cpu']);
    expect(['avx512', 'avx2', 'scalar']).toContain(b.cpuKernels);
    expect(b.cuda.compiled).toBe(libBeside);
    // No GPU in CI: CUDA is unavailable and the reason says why (library missing, or no driver/GPU).
    if (!b.cuda.available)
      expect(b.cuda.reason).toMatch(libBeside ? /cuda|driver|device|GPU/i : /library is not installed/);
    expect(fs.existsSync(b.addonPath)).toBe(true);
  });
});

describe('the shipped API is documented', () => {
  const dist = path.join(root, 'dist');
  test('every exported declaration in the .d.ts files has a TSDoc comment', () => {
    const missing: string[] = [];
    // binding and cli are internal modules (not re-exported by index).
    for (const f of fs
      .readdirSync(dist)
      .filter((n) => n.endsWith('.d.ts') && !['binding.d.ts', 'cli.d.ts'].includes(n))) {
      const lines = fs.readFileSync(path.join(dist, f), 'utf8').split('\n');
      lines.forEach((line, i) => {
        const m = /^export (?:declare )?(?:abstract )?(?:function|class|interface|type|const) (\w+)/.exec(line);
        if (!m) return;
        let j = i - 1;
        while (j >= 0 && lines[j].trim() === '') j--;
        if (!lines[j]?.trim().endsWith('*/')) missing.push(`${f}: ${m[1]}`);
      });
    }
    expect(missing).toEqual([]);
  });

  test('every option property of the public option types has a TSDoc comment', () => {
    const missing: string[] = [];
    for (const f of ['options.d.ts', 'policy.d.ts', 'model.d.ts', 'sequence.d.ts']) {
      const lines = fs.readFileSync(path.join(dist, f), 'utf8').split('\n');
      let inInterface = '';
      lines.forEach((line, i) => {
        const start = /^export interface (\w+)/.exec(line);
        if (start) inInterface = start[1];
        else if (/^}/.test(line)) inInterface = '';
        const prop = /^ {4}(\w+)\??: /.exec(line);
        if (inInterface && prop && prop[1] !== 'type' && !lines[i - 1].trim().endsWith('*/'))
          missing.push(`${inInterface}.${prop[1]}`);
      });
    }
    expect(missing).toEqual([]);
  });

  test("the README's API section names every exported function and class", () => {
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const exported = Object.keys(require(path.join(dist, 'index.js')) as object).filter((k) => k !== '__esModule');
    const absent = exported.filter((k) => !readme.includes(k));
    expect(absent).toEqual([]);
  });
});
