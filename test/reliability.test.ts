/**
 * Reliability: no leaks across load/generate/dispose cycles (native, under LeakSanitizer; and the
 * process's own memory, mappings and file descriptors), KV memory returned when a sequence ends,
 * and what happens when a checkpoint changes while it is memory-mapped: replaced by rename or
 * deleted, it keeps working; rewritten or truncated in place, it is refused before (and after)
 * each pass; truncated during a pass, SIGBUS names the file.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel, ModelFileError } from '../src';
import { cleanup, openedFiles, randomTokens, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);
const root = path.join(__dirname, '..');

test('native load/run/free cycles, failed loads included, leak nothing (LeakSanitizer)', () => {
  const r = spawnSync('bash', [path.join(root, 'scripts', 'test-leaks.sh')], { encoding: 'utf8', timeout: 900000 });
  const out = r.stdout + r.stderr;
  expect(out).not.toMatch(/LeakSanitizer|AddressSanitizer|runtime error:/);
  expect(out).toMatch(/leak test passed/);
  expect(r.status).toBe(0);
}, 900000);

test('100 load/generate/dispose cycles: memory, mappings and file descriptors come back', async () => {
  const dir = tinyModel({ seed: 3, hidden: 128, intermediate: 256, layers: 3 });
  const cycle = async () => {
    const m = await loadModel(dir, { threads: 1 });
    await m.generate({ tokens: [1, 2, 3] }, { maxTokens: 4, stopOnEos: false });
    await m.dispose();
  };
  for (let i = 0; i < 10; i++) await cycle(); // warm-up: allocator and JIT settle
  global.gc?.();
  const rss0 = process.memoryUsage().rss;
  const fds0 = fs.readdirSync('/proc/self/fd').length;
  for (let i = 0; i < 100; i++) await cycle();
  global.gc?.();
  const grownMiB = (process.memoryUsage().rss - rss0) / 2 ** 20;
  expect(grownMiB).toBeLessThan(24); // the model is 0.3 MB: 100 leaked loads would exceed this
  expect(fs.readdirSync('/proc/self/fd').length).toBeLessThanOrEqual(fds0 + 2);
  expect(openedFiles().filter((f) => f.startsWith(dir))).toEqual([]);
});

test('the KV cache is released when a sequence ends', async () => {
  // An f32 cache (the default is bf16, half the bytes) so the cache is 64 MiB, well above RSS noise.
  const m = await loadModel(tinyModel({ seed: 3, hidden: 256, heads: 4, kvHeads: 4, layers: 8, maxPositions: 4096 }), {
    threads: 2,
    kvCacheType: 'f32',
  });
  try {
    const seq = m.createSequence({ contextSize: 4096 });
    await seq.evaluate(randomTokens(4000, 0, 300, 1));
    const withCache = process.memoryUsage().rss;
    seq.dispose();
    const freed = (withCache - process.memoryUsage().rss) / 2 ** 20;
    // 4096 positions x 8 layers x 2 (K, V) x 256 floats x 4 bytes = 64 MiB of cache.
    expect(freed).toBeGreaterThan(40);
  } finally {
    await m.dispose();
  }
});

describe('a checkpoint that changes while mapped', () => {
  test('replaced by rename or deleted: the loaded model keeps working with its old weights', async () => {
    const dir = tinyModel({ seed: 8 });
    const m = await loadModel(dir, { threads: 1 });
    try {
      const before = await m.evaluate([5, 6, 7]);
      const file = path.join(dir, 'model.safetensors');
      const other = tinyModel({ seed: 9 });
      fs.copyFileSync(path.join(other, 'model.safetensors'), file + '.new');
      fs.renameSync(file + '.new', file); // the safe way to update a checkpoint
      expect(Array.from((await m.evaluate([5, 6, 7])).logits[2])).toEqual(Array.from(before.logits[2]));
      fs.rmSync(file);
      expect(Array.from((await m.evaluate([5, 6, 7])).logits[2])).toEqual(Array.from(before.logits[2]));
    } finally {
      await m.dispose();
    }
  });

  test('overwritten in place (same size, as cp does): the next pass is refused with ModelFileError, not computed from mixed weights', async () => {
    const dir = tinyModel({ seed: 8 });
    const file = path.join(dir, 'model.safetensors');
    const m = await loadModel(dir, { threads: 1 });
    try {
      await m.evaluate([5, 6, 7]);
      const other = tinyModel({ seed: 9 }); // same shapes, other weights: the same size
      expect(fs.statSync(path.join(other, 'model.safetensors')).size).toBe(fs.statSync(file).size);
      await new Promise((r) => setTimeout(r, 20)); // a later modification time, even on coarse clocks
      fs.copyFileSync(path.join(other, 'model.safetensors'), file); // truncates and rewrites the same inode
      for (const call of [() => m.evaluate([5, 6, 7]), () => m.generate({ tokens: [1, 2] }, { maxTokens: 2 })]) {
        const err = await call().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ModelFileError);
        expect((err as ModelFileError).file).toBe(file);
        expect((err as Error).message).toMatch(/was modified on disk since it was loaded.*refuses to run/);
      }
    } finally {
      await m.dispose();
    }
  });

  test('truncated in place between passes: refused with ModelFileError (no SIGBUS)', async () => {
    const dir = tinyModel({ seed: 8, hidden: 128, intermediate: 512 });
    const file = path.join(dir, 'model.safetensors');
    const m = await loadModel(dir, { threads: 1 });
    try {
      const size = fs.statSync(file).size;
      fs.truncateSync(file, 4096);
      const err = await m.evaluate([1, 2, 3]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ModelFileError);
      expect((err as Error).message).toMatch(
        new RegExp(`changed size on disk \\(${size} bytes when loaded, 4096 now\\)`),
      );
    } finally {
      await m.dispose();
    }
  });

  test('truncated while a page is being read (during a pass): the SIGBUS handler names the file and the cause first', () => {
    const out = tmpDir();
    const bin = path.join(out, 'mapguard_test');
    const cc = spawnSync(
      'g++',
      ['-std=c++17', '-O1', '-Inative', 'test/native/mapguard_test.cc', 'native/mapguard.cc', '-o', bin],
      {
        cwd: root,
        encoding: 'utf8',
      },
    );
    expect(cc.stderr).toBe('');
    expect(cc.status).toBe(0);
    const file = path.join(out, 'model.safetensors');
    fs.writeFileSync(file, Buffer.alloc(1 << 16, 1));
    const r = spawnSync(bin, [file], { encoding: 'utf8', timeout: 60000 });
    expect(r.signal).toBe('SIGBUS');
    expect(r.stdout).not.toMatch(/survived/);
    expect(r.stderr).toContain(
      `depthgate: fatal: the model file ${file} was truncated or rewritten while it was memory-mapped`,
    );
  });
});
