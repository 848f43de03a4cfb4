/**
 * The package as users get it: prebuildify a binary, `npm pack`, then install the tarball into an
 * empty folder as a new user would, and generate text there with the CPU backend.
 *
 * What the install may and may not do. A user's `npm install` fetches the dependencies from the
 * registry, so this one does too, with an empty npm cache and a fresh HOME (carrying only the
 * machine's .npmrc, for its registry settings): a warm cache must not be what makes it pass. What
 * it must not do is compile or download a binary. Compiling is excluded by PATH (node, npm and sh
 * only: no cc, make, cmake or python) and checked by the absence of any gyp or compiler output.
 * Downloading is excluded by checking every installed package's install-time scripts: npm itself
 * only talks to the registry, and the only script allowed is depthgate's own `node-gyp-build`,
 * which loads a prebuilt binary or compiles one, never downloads. (`--offline` against a cache
 * filled here was the earlier mechanism; it failed on a machine whose cache lacked the registry
 * metadata that resolving the tarball's `^` ranges needs.)
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULT_ADDON } from '../src/defaultModel';
import { cleanup, tmpDir } from './helpers';

afterAll(cleanup);
const root = path.join(__dirname, '..');

/** The app the first test installs the tarball into, and its environment (node, npm, sh only), for the README test. */
let installed: { app: string; env: NodeJS.ProcessEnv } | undefined;

function run(cmd: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv }) {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, encoding: 'utf8', timeout: 600000 });
  if (r.status !== 0) process.stderr.write(`$ ${cmd} ${args.join(' ')}\n${r.stdout}\n${r.stderr}\n`);
  return { code: r.status, out: `${r.stdout}\n${r.stderr}`, stdout: r.stdout };
}

/** A scratch copy of the package sources (node_modules linked), so the build here is left alone. */
function packageCopy(): string {
  const dir = tmpDir('depthgate-src-');
  for (const f of [
    'package.json',
    'tsconfig.json',
    'binding.gyp',
    'CMakeLists.txt',
    'README.md',
    'ARCHITECTURE.md',
    'src',
    'native',
    'cuda',
    'scripts',
    'models',
    'docs',
    'bench/data',
  ])
    fs.cpSync(path.join(root, f), path.join(dir, f), { recursive: true });
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}

test('npm pack + install with an empty cache and no compiler gives a working package', () => {
  const src = packageCopy();
  const pre = run('npm', ['run', 'prebuildify'], { cwd: src });
  expect(pre.code).toBe(0);
  // With nvcc the CUDA backend library ships next to the addon; without, the prebuild is CPU-only.
  const withCuda = /prebuild-cuda: \//.test(pre.out);
  if (!withCuda) console.log('no nvcc here: the package is CPU-only');
  const prebuilt = fs.readdirSync(path.join(src, 'prebuilds', `linux-x64`)).filter((f) => f.endsWith('.node'));
  expect(prebuilt.length).toBeGreaterThan(0);

  // The binary's floor: glibc 2.32 and GCC 11's libstdc++ (as the README states).
  const syms = run('objdump', ['-T', path.join(src, 'prebuilds', 'linux-x64', prebuilt[0])], { cwd: src }).stdout;
  const newest = (prefix: string) =>
    [...syms.matchAll(new RegExp(`\\(${prefix}_([0-9.]+)\\)`, 'g'))]
      .map((m) => m[1].split('.').map(Number))
      .sort((a, b) => a[0] - b[0] || a[1] - b[1] || (a[2] ?? 0) - (b[2] ?? 0))
      .at(-1)!;
  expect(newest('GLIBC')).toEqual([2, 32]);
  expect(newest('GLIBCXX')).toEqual([3, 4, 29]);

  const dest = tmpDir('depthgate-pack-');
  const pack = run('npm', ['pack', '--json', '--pack-destination', dest], { cwd: src });
  expect(pack.code).toBe(0);
  const info = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as {
    filename: string;
    size: number;
    unpackedSize: number;
    files: { path: string }[];
  }[];
  const files = info[0].files.map((f) => f.path);
  expect(files).toEqual(
    expect.arrayContaining([
      'dist/index.js',
      'dist/index.d.ts',
      'dist/cli.js',
      `prebuilds/linux-x64/${prebuilt[0]}`,
      'binding.gyp',
      'native/sources.json',
      'native/engine.cc',
    ]),
  );
  // The embedded default model and its router add-ons ship; nothing else heavy does: no tests,
  // benchmarks, training code, TypeScript sources, source maps or build folders.
  expect(files).toEqual(
    expect.arrayContaining([
      'models/default/model.safetensors',
      'models/default/tokenizer.json',
      `models/default/${DEFAULT_ADDON}`,
    ]),
  );
  // The held-out text of the README's eval example ships, as do the pages and plots it links to.
  for (const f of files.filter((f) => f !== 'bench/data/kjv-heldout.txt'))
    expect(f).not.toMatch(/^(test|bench|src|build|scripts|train)\/|\.map$|\.ts$(?<!\.d\.ts)/);
  // Every file the README links to or names as an example's input is in the package, so an installed copy has them.
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const linked = [...readme.matchAll(/\]\(((?!https?:|#)[^)#\s]+)(?:#[^)]*)?\)/g)].map((m) =>
    m[1]!.replace(/^\.\//, ''),
  );
  expect(linked.length).toBeGreaterThan(0);
  for (const f of [...linked, 'bench/data/kjv-heldout.txt']) expect([f, files.includes(f)]).toEqual([f, true]);
  for (const f of files.filter((f) => f.endsWith('.safetensors'))) expect(f).toMatch(/^models\/default\//);
  if (withCuda) expect(files).toContain('prebuilds/linux-x64/libdepthgate_cuda.so');
  // About 1.3 MiB of code (with the CUDA library) plus the default model's ~16 MiB of bf16 weights.
  expect(info[0].size).toBeLessThan((withCuda ? 22 : 20) * 2 ** 20);
  console.log(
    `tarball ${info[0].filename}: ${(info[0].size / 1024).toFixed(0)} KiB packed, ${(info[0].unpackedSize / 1024).toFixed(0)} KiB unpacked, ${files.length} files`,
  );

  // An environment with node, npm and sh only.
  const bin = tmpDir('depthgate-bin-');
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh')); // npm runs install scripts through sh
  const npmCli = fs.realpathSync(run('/bin/sh', ['-c', 'command -v npm'], { cwd: root }).stdout.trim());
  fs.writeFileSync(path.join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`, { mode: 0o755 });
  const home = tmpDir('depthgate-home-');
  const userNpmrc = path.join(os.homedir(), '.npmrc');
  if (fs.existsSync(userNpmrc)) fs.copyFileSync(userNpmrc, path.join(home, '.npmrc'));
  const env: NodeJS.ProcessEnv = { PATH: bin, HOME: home, npm_config_cache: tmpDir('depthgate-npm-cache-') };
  for (const k of [
    'HTTP_PROXY',
    'HTTPS_PROXY',
    'NO_PROXY',
    'http_proxy',
    'https_proxy',
    'no_proxy',
    'NODE_EXTRA_CA_CERTS',
    'SSL_CERT_FILE',
  ])
    if (process.env[k]) env[k] = process.env[k];
  for (const tool of ['cc', 'gcc', 'g++', 'make', 'cmake', 'python3'])
    expect(run('/bin/sh', ['-c', `command -v ${tool} || echo missing`], { cwd: bin, env }).stdout.trim()).toBe(
      'missing',
    );

  const app = tmpDir('depthgate-app-');
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
  const install = run(
    'npm',
    ['install', '--no-audit', '--no-fund', '--foreground-scripts', path.join(dest, info[0].filename)],
    { cwd: app, env },
  );
  expect(install.out).not.toMatch(/gyp info|CXX\(target\)|make: /);
  expect(install.code).toBe(0);
  expect(fs.existsSync(path.join(app, 'node_modules', 'depthgate', 'build'))).toBe(false);
  // No installed package but depthgate runs anything at install time (see the header).
  const withScripts: Record<string, string> = {};
  const walk = (dir: string) => {
    for (const name of fs.readdirSync(dir)) {
      if (name.startsWith('.')) continue;
      const pkgDir = path.join(dir, name);
      if (name.startsWith('@')) {
        walk(pkgDir);
        continue;
      }
      const manifest = path.join(pkgDir, 'package.json');
      if (!fs.existsSync(manifest)) continue;
      const pkg = JSON.parse(fs.readFileSync(manifest, 'utf8')) as {
        name: string;
        scripts?: Record<string, string>;
        gypfile?: boolean;
      };
      const scripts = ['preinstall', 'install', 'postinstall']
        .filter((k) => pkg.scripts?.[k])
        .map((k) => `${k}: ${pkg.scripts![k]}`);
      // npm runs `node-gyp rebuild` for a package with a binding.gyp and no install script, unless gypfile is false.
      if (
        !pkg.scripts?.install &&
        !pkg.scripts?.preinstall &&
        pkg.gypfile !== false &&
        fs.existsSync(path.join(pkgDir, 'binding.gyp'))
      )
        scripts.push('install: node-gyp rebuild (implicit, binding.gyp)');
      if (scripts.length) withScripts[pkg.name] = scripts.join('; ');
      if (fs.existsSync(path.join(pkgDir, 'node_modules'))) walk(path.join(pkgDir, 'node_modules'));
    }
  };
  walk(path.join(app, 'node_modules'));
  expect(withScripts).toEqual({ depthgate: 'install: node-gyp-build' });

  installed = { app, env };
  const script = `
    const dg = require('depthgate');
    const b = dg.getBuildInfo();
    require('depthgate/testing').writeTinyModel('model', { layers: 2 });
    dg.loadModel('model', { backend: 'cpu' }).then(async (m) => {
      const r = await m.generate('Hello', { maxTokens: 5, stopOnEos: false });
      console.log(JSON.stringify({ addon: b.addonPath, backends: b.backends, cuda: b.cuda, tokens: r.tokens.length }));
      await m.dispose();
    });`;
  const gen = run('node', ['-e', script], { cwd: app, env });
  expect(gen.code).toBe(0);
  const res = JSON.parse(gen.stdout.trim().split('\n').at(-1)!) as {
    addon: string;
    backends: string[];
    cuda: { compiled: boolean; available: boolean };
    tokens: number;
  };
  expect(res.addon).toContain(path.join('node_modules', 'depthgate', 'prebuilds', 'linux-x64'));
  // The installed addon finds the packed CUDA library (no GPU here, so it is not usable).
  expect(res.cuda.compiled).toBe(withCuda);
  expect(res.backends).toEqual(withCuda ? ['cpu', 'cuda'] : ['cpu']);
  expect(res.tokens).toBe(5);
  const cli = run(
    'node',
    [path.join(app, 'node_modules', '.bin', 'depthgate'), 'generate', '--prompt', 'Hi', '--max-tokens', '3'],
    { cwd: app, env },
  );
  expect(cli.code).toBe(0);
  expect(cli.stdout.startsWith('Hi')).toBe(true);
  // With no model directory: the packed default model and its FlexiDepth routers.
  expect(cli.out).toMatch(/default model .*FlexiDepth/);
  expect(cli.out).toMatch(/3 generated/);
}, 900000);

/** The README's ```ts and ```js examples, in order. */
function readmeExamples(): { lang: 'ts' | 'js'; code: string }[] {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  return [...readme.matchAll(/^```(ts|js)\n([\s\S]*?)^```$/gm)].map((m) => ({
    lang: m[1] as 'ts' | 'js',
    code: m[2]!,
  }));
}

/**
 * "Runs as written": each example is compiled by tsc --strict (module nodenext) in the app that
 * installed the tarball, against the installed package's own declarations, and run there with
 * node. The model directories and add-on files an example names ('./Llama-3.2-1B-Instruct',
 * './flexidepth.safetensors') are links to the installed default model and its FlexiDepth add-on;
 * the only edits are the ports (0, and the URL of a server the test starts, for the OpenAI client).
 */
test('every TypeScript and JavaScript example in the README compiles under tsc --strict against the installed package and runs', async () => {
  if (!installed) throw new Error('the pack-and-install test did not get as far as installing the package');
  const { app, env } = installed;
  const pkg = path.join(app, 'node_modules', 'depthgate');
  const examples = readmeExamples();
  expect(examples.length).toBeGreaterThanOrEqual(3);
  const dir = path.join(app, 'examples');
  fs.mkdirSync(dir, { recursive: true });
  // The openai client of the serve example comes from this repository's dependencies.
  const openai = path.join(app, 'node_modules', 'openai');
  if (!fs.existsSync(openai)) fs.symlinkSync(path.join(root, 'node_modules', 'openai'), openai);
  examples.forEach((e, i) => {
    for (const [, name] of e.code.matchAll(/'\.\/([\w.-]+)'/g)) {
      const link = path.join(app, name!);
      if (fs.existsSync(link)) continue;
      fs.symlinkSync(
        name!.endsWith('.safetensors')
          ? path.join(pkg, 'models', 'default', DEFAULT_ADDON)
          : path.join(pkg, 'models', 'default'),
        link,
      );
    }
    fs.writeFileSync(
      path.join(dir, `example${i}.${e.lang === 'ts' ? 'mts' : 'mjs'}`),
      e.code.replace(/\.listen\(\d+\)/g, '.listen(0)'),
    );
  });
  fs.writeFileSync(
    path.join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        lib: ['es2023', 'esnext.disposable'],
        types: ['node'],
        typeRoots: [path.join(root, 'node_modules', '@types')],
        outDir: 'out',
        allowJs: true,
        skipLibCheck: true,
      },
      include: ['examples'],
    }),
  );
  const tsc = run(
    process.execPath,
    [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'],
    { cwd: app },
  );
  expect(tsc.out.trim()).toBe('');
  expect(tsc.code).toBe(0);

  // A server for the OpenAI client example, from the installed CLI.
  const serve = spawn('node', [path.join(pkg, 'dist', 'cli.js'), 'serve', '--port', '0', '--quiet'], {
    cwd: app,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let err = '';
      serve.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /listening on (http:\/\/\S+)/.exec(err);
        if (m) resolve(m[1]!);
      });
      serve.on('exit', () => reject(new Error(`serve exited: ${err}`)));
    });
    for (const [i, e] of examples.entries()) {
      const file = path.join(app, 'out', `example${i}.${e.lang === 'ts' ? 'mjs' : 'mjs'}`);
      if (e.lang === 'js') fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('http://127.0.0.1:8080', url));
      if (/process\.once\('SIGTERM'/.test(e.code)) {
        // A server that runs until SIGTERM: it must print its URL, then shut down cleanly.
        const child = spawn('node', [file], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let stopped = false;
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          // One SIGTERM: the example's handler is process.once, so a second one (from a later chunk
          // of output) would kill it by default and the exit code would be null.
          if (!stopped && /^http:\/\//m.test(out)) {
            stopped = true;
            child.kill('SIGTERM');
          }
        });
        const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
        expect([i, code, out]).toEqual([i, 0, expect.stringMatching(/^http:\/\/[\d.]+:\d+/)]);
        continue;
      }
      const r = await new Promise<{ code: number | null; out: string }>((res) => {
        const child = spawn('node', [file], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 300000 });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (out += d.toString()));
        child.on('exit', (code) => res({ code, out }));
      });
      expect([i, r.code, r.out]).toEqual([i, 0, expect.anything()]);
      expect(r.out).not.toMatch(/Error/);
    }
  } finally {
    serve.kill('SIGKILL');
  }
}, 900000);
