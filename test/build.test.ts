/**
 * Both native builds compile the same source list: node-gyp (binding.gyp, what `npm install`
 * runs when no prebuilt binary matches) and cmake-js (CMakeLists.txt, the main build).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanup, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);
const root = path.join(__dirname, '..');

test('native/sources.json lists every C++ source under native/', () => {
  const listed = (JSON.parse(fs.readFileSync(path.join(root, 'native/sources.json'), 'utf8')) as string[]).sort();
  const onDisk: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(path.join(root, d), { withFileTypes: true })) {
      const rel = `${d}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (rel.endsWith('.cc')) onDisk.push(rel);
    }
  };
  walk('native');
  expect(listed).toEqual(onDisk.sort());
});

test('the cmake-js build compiles and its addon generates text', () => {
  const out = tmpDir('depthgate-cmake-');
  const build = spawnSync('npx', ['cmake-js', 'compile', '-O', out, '--log-level', 'warn'], {
    cwd: root,
    encoding: 'utf8',
    timeout: 600000,
  });
  expect(build.stderr + build.stdout).not.toMatch(/error:/);
  expect(build.status).toBe(0);
  const addon = path.join(out, 'Release', 'depthgate.node');
  expect(fs.existsSync(addon)).toBe(true);
  const dir = tinyModel();
  const script = `require('./dist/index.js').loadModel(${JSON.stringify(dir)}).then(async m => {
    const r = await m.generate({tokens: [1, 2, 3]}, {maxTokens: 4, stopOnEos: false});
    console.log(JSON.stringify({n: r.tokens.length, addon: require('./dist/index.js').getBuildInfo().addonPath}));
    await m.dispose();
  })`;
  const run = spawnSync(process.execPath, ['-e', script], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, DEPTHGATE_NATIVE_PATH: addon },
  });
  expect(run.stderr).toBe('');
  const res = JSON.parse(run.stdout) as { n: number; addon: string };
  expect(res).toEqual({ n: 4, addon });
}, 600000);
