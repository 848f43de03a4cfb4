/**
 * Odd file-system objects in a model directory (a tar archive can hold any of them): a FIFO, a
 * symlink to /dev/zero, a directory where a file should be, a file past the size cap, a file whose
 * size the file system reports as 0. Each is a ModelFileError naming the file, at once: nothing
 * blocks (a FIFO has no writer here, so a blocking open would hang the test), nothing reads
 * forever, and neither the event loop nor the libuv thread pool is held.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel, ModelFileError, ModelFormatError, NativeLoadError, type Model } from '../src';
import { native, loadNativeFrom } from '../src/binding';
import { readModelConfig } from '../src/config';
import { JSON_SIZE_LIMITS } from '../src/modelFiles';
import { cleanup, openedFiles, tinyModel } from './helpers';

afterAll(cleanup);

function mkfifo(file: string): void {
  fs.rmSync(file, { force: true, recursive: true });
  const r = spawnSync('mkfifo', [file]);
  if (r.status !== 0) throw new Error(`mkfifo failed: ${r.stderr}`);
}

function replaceWith(file: string, kind: 'fifo' | 'devzero' | 'dir'): void {
  fs.rmSync(file, { force: true, recursive: true });
  if (kind === 'fifo') mkfifo(file);
  else if (kind === 'devzero') fs.symlinkSync('/dev/zero', file);
  else fs.mkdirSync(file);
}

/** Loads and expects a ModelFileError naming `file`, within a few seconds and with nothing left open. */
async function expectRefused(
  dir: string,
  file: string,
  message: RegExp,
  options: Parameters<typeof loadModel>[1] = {},
): Promise<void> {
  const t0 = performance.now();
  let model: Model | undefined;
  const err = await loadModel(dir, { threads: 1, ...options }).then(
    (m) => {
      model = m;
    },
    (e: unknown) => e,
  );
  if (model) {
    await model.dispose();
    throw new Error(`loaded ${dir}; expected a ModelFileError for ${file}`);
  }
  expect(err).toBeInstanceOf(ModelFileError);
  expect((err as ModelFileError).file).toBe(file);
  expect((err as Error).message).toMatch(message);
  // "At once": no read of /dev/zero until memory runs out, no wait for a FIFO's writer.
  expect(performance.now() - t0).toBeLessThan(5000);
  expect(openedFiles().filter((f) => f.startsWith(dir))).toEqual([]);
}

const JSON_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json'];

describe.each(['fifo', 'devzero', 'dir'] as const)('a %s in place of', (kind) => {
  const why = {
    fifo: /not a regular file \(it is a FIFO\)/,
    devzero: /not a regular file \(it is a device\)/,
    dir: /not a regular file \(it is a directory\)/,
  }[kind];

  test.each(JSON_FILES)('%s', async (name) => {
    const dir = tinyModel({ seed: 2 });
    const file = path.join(dir, name);
    replaceWith(file, kind);
    await expectRefused(dir, file, why);
  });

  test('model.safetensors.index.json', async () => {
    const dir = tinyModel({ seed: 2, shards: 2 });
    const file = path.join(dir, 'model.safetensors.index.json');
    replaceWith(file, kind);
    await expectRefused(dir, file, why);
  });

  test('model.safetensors, a shard, an add-on', async () => {
    const dir = tinyModel({ seed: 2 });
    const weights = path.join(dir, 'model.safetensors');
    replaceWith(weights, kind);
    await expectRefused(dir, weights, why);

    const sharded = tinyModel({ seed: 2, shards: 2 });
    const shard = path.join(
      sharded,
      fs
        .readdirSync(sharded)
        .filter((f) => /^model-\d+-of-\d+\.safetensors$/.test(f))
        .sort()[1],
    );
    replaceWith(shard, kind);
    await expectRefused(sharded, shard, why);

    const base = tinyModel({ seed: 2 });
    const addon = path.join(base, 'router.safetensors');
    replaceWith(addon, kind);
    await expectRefused(base, addon, why, { addons: [addon] });
  });
});

test('the addon itself opens a FIFO without blocking and refuses it (its own check, not only the TypeScript one)', async () => {
  const dir = tinyModel({ seed: 2 });
  const good = await loadModel(dir, { threads: 1 });
  const config = good.config;
  await good.dispose();
  const fifo = path.join(dir, 'model.safetensors');
  mkfifo(fifo);
  const t0 = performance.now();
  const err = await native()
    .loadModel({ files: [fifo], config, threads: 1, prefault: true, backend: 'cpu' })
    .then(
      () => null,
      (e: unknown) => e as { code: string; file: string; message: string },
    );
  expect(err?.code).toBe('ERR_DEPTHGATE_MODEL_IO');
  expect(err?.file).toBe(fifo);
  expect(err?.message).toMatch(/not a regular file/);
  expect(performance.now() - t0).toBeLessThan(5000);
});

test('loads refused for FIFOs leave the libuv pool free: fs.readFile still runs at once', async () => {
  const dirs = Array.from({ length: 6 }, () => {
    const d = tinyModel({ seed: 2 });
    mkfifo(path.join(d, 'config.json'));
    return d;
  });
  const loads = dirs.map((d) => loadModel(d, { threads: 1 }).catch((e: unknown) => e));
  const t0 = performance.now();
  await fs.promises.readFile(__filename);
  expect(performance.now() - t0).toBeLessThan(2000);
  for (const e of await Promise.all(loads)) expect(e).toBeInstanceOf(ModelFileError);
});

describe('size caps and sizes the file system reports', () => {
  test(`a config file past ${JSON_SIZE_LIMITS.other / 2 ** 20} MiB is refused without reading it`, async () => {
    const dir = tinyModel({ seed: 2 });
    const file = path.join(dir, 'tokenizer_config.json');
    fs.truncateSync(file, JSON_SIZE_LIMITS.other + 1); // sparse: no time or space to write
    await expectRefused(dir, file, /tokenizer_config\.json is larger than the 16 MiB depthgate reads for it/);
  });

  test(`tokenizer.json may be up to ${JSON_SIZE_LIMITS['tokenizer.json'] / 2 ** 20} MiB (real ones reach about 20 MB)`, async () => {
    const dir = tinyModel({ seed: 2 });
    const file = path.join(dir, 'tokenizer.json');
    // The tokenizer padded with spaces to 20 MiB still loads.
    const text = fs.readFileSync(file, 'utf8');
    fs.writeFileSync(file, text + ' '.repeat(20 * 2 ** 20 - text.length));
    const m = await loadModel(dir, { threads: 1 });
    expect(m.tokenize('hello').length).toBeGreaterThan(0);
    await m.dispose();
    fs.truncateSync(file, JSON_SIZE_LIMITS['tokenizer.json'] + 1);
    await expectRefused(dir, file, /tokenizer\.json is larger than the 64 MiB/);
  });

  test('a file that reports size 0 but has content (/proc) is read to its end, not to its reported size', () => {
    const dir = tinyModel({ seed: 2 });
    const file = path.join(dir, 'config.json');
    fs.rmSync(file);
    fs.symlinkSync('/proc/self/status', file);
    expect(fs.statSync(file).size).toBe(0);
    // It was read: the error is about its content, not its size.
    expect(() => readModelConfig(dir)).toThrow(/config\.json is not valid JSON/);
    expect(() => readModelConfig(dir)).toThrow(ModelFormatError);
  });
});

describe('tokenizer_config.json', () => {
  test('absent is fine (it is optional)', async () => {
    const dir = tinyModel({ seed: 2 });
    fs.rmSync(path.join(dir, 'tokenizer_config.json'));
    const m = await loadModel(dir, { threads: 1 });
    expect(m.tokenizer.chatTemplate).toBeNull();
    await m.dispose();
  });

  test('a dangling symlink is an error, not absent', async () => {
    const dir = tinyModel({ seed: 2 });
    const file = path.join(dir, 'tokenizer_config.json');
    fs.rmSync(file);
    fs.symlinkSync(path.join(dir, 'no-such-blob'), file);
    await expectRefused(dir, file, /tokenizer_config\.json is missing/);
  });
});

describe('DEPTHGATE_NATIVE_PATH', () => {
  test.each([
    ['/dev/zero', /not a regular file/],
    ['a FIFO', /not a regular file/],
    ['a directory', /not a regular file/],
  ])('%s is refused with NativeLoadError, without reading it', (what, why) => {
    let target = what;
    if (what === 'a FIFO') {
      target = path.join(tinyModel(), 'depthgate.node');
      mkfifo(target);
    } else if (what === 'a directory') target = path.dirname(tinyModel());
    const t0 = performance.now();
    let err: unknown;
    try {
      loadNativeFrom(path.join(__dirname, '..'), target);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeLoadError);
    expect((err as NativeLoadError).attempts).toEqual([
      { path: path.resolve(target), error: expect.stringMatching(why) },
    ]);
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  test('a regular file not named .node is loaded as a native module, never run as JavaScript', () => {
    const file = path.join(path.dirname(tinyModel()), 'addon.bin');
    fs.writeFileSync(file, 'globalThis.__ranAsJavaScript = true;');
    let err: unknown;
    try {
      loadNativeFrom(path.join(__dirname, '..'), file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeLoadError);
    expect((globalThis as { __ranAsJavaScript?: boolean }).__ranAsJavaScript).toBeUndefined();
    // The real addon under another name loads.
    const copy = path.join(path.dirname(file), 'depthgate-copy.bin');
    fs.copyFileSync(path.join(__dirname, '..', 'build', 'Release', 'depthgate.node'), copy);
    expect(typeof loadNativeFrom(path.join(__dirname, '..'), copy).addon.loadModel).toBe('function');
  });
});

test('a relative add-on path is taken from the working directory, not the model directory', async () => {
  const dir = tinyModel({ seed: 31, layers: 2, skiplayer: { mode: 'layer', addonFile: 'skip.safetensors' } });
  const fromCwd = path.relative(process.cwd(), path.join(dir, 'skip.safetensors'));
  expect(path.isAbsolute(fromCwd)).toBe(false);
  const m = await loadModel(dir, { threads: 1, addons: [fromCwd] });
  try {
    expect(m.info.skipRouterLayers).toEqual([0, 1]);
  } finally {
    await m.dispose();
  }
  // The bare name, which would be found beside the model, is looked for in the working directory.
  await expect(loadModel(dir, { threads: 1, addons: ['skip.safetensors'] })).rejects.toMatchObject({
    code: 'ERR_DEPTHGATE_MODEL_IO',
    file: path.resolve('skip.safetensors'),
  });
});
