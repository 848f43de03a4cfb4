/**
 * The engine's threads: each model's load and forward passes run on that model's own thread, not
 * on the libuv thread pool (which Node shares between fs, crypto, dns and zlib: four busy models
 * used to make a 1 KB fs.readFile wait for a pass). A loaded model that is idle does not keep the
 * process alive, and Worker.terminate() does not wait for a running pass to end.
 *
 * The child-process and worker cases run the built package (dist/, as `npm test` builds it).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { loadModel } from '../src';
import { cleanup, randomTokens, tinyModel } from './helpers';

afterAll(cleanup);
const root = path.join(__dirname, '..');
const dist = JSON.stringify(path.join(root, 'dist', 'index.js'));

/** Big enough that one 512-token pass takes about a second on one core. */
const slowModel = () =>
  tinyModel({ seed: 5, hidden: 512, heads: 8, kvHeads: 8, intermediate: 2048, layers: 6, maxPositions: 1024 });

test('passes in flight on five models (more than the libuv pool has threads) do not delay a small fs.readFile', async () => {
  const dir = slowModel();
  const models = await Promise.all(Array.from({ length: 5 }, () => loadModel(dir, { threads: 1 })));
  try {
    const ids = randomTokens(512, 0, 300, 1);
    let finished = 0;
    const t0 = performance.now();
    const passes = Promise.all(models.map((m) => m.evaluate(ids).then(() => finished++)));
    await new Promise((r) => setTimeout(r, 100));
    const t1 = performance.now();
    await fs.promises.readFile(__filename);
    const readMs = performance.now() - t1;
    const finishedBeforeRead = finished;
    await passes;
    const passMs = performance.now() - t0;
    console.log(`fs.readFile took ${readMs.toFixed(0)} ms while five passes of ${passMs.toFixed(0)} ms ran`);
    // The read did not wait for a pass to end: all five were still running when it returned.
    expect(finishedBeforeRead).toBe(0);
    expect(readMs).toBeLessThan(Math.min(1000, passMs / 2));
  } finally {
    await Promise.all(models.map((m) => m.dispose()));
  }
});

test('a process with a loaded model that is idle (never disposed) exits by itself', () => {
  const dir = tinyModel({ seed: 5 });
  const script = `require(${dist}).loadModel(${JSON.stringify(dir)}, { threads: 1 }).then(async (m) => {
    const r = await m.generate({ tokens: [1, 2, 3] }, { maxTokens: 3, stopOnEos: false });
    console.log('generated', r.tokens.length);
  });`;
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60000 });
  expect(r.stdout).toMatch(/generated 3/);
  expect(r.signal).toBeNull();
  expect(r.status).toBe(0);
  expect(performance.now() - t0).toBeLessThan(30000);
});

test('Worker.terminate() during a pass returns without waiting for the pass to end', async () => {
  const dir = slowModel();
  const code = `
    const { parentPort } = require('node:worker_threads');
    require(${dist}).loadModel(${JSON.stringify(dir)}, { threads: 1 }).then(async (m) => {
      const ids = Array.from({ length: 512 }, (_, i) => (i * 7) % 300);
      const t0 = performance.now();
      await m.evaluate(ids);
      parentPort.postMessage({ passMs: performance.now() - t0 });
      m.evaluate(ids);
      parentPort.postMessage({ started: true });
    });`;
  const worker = new Worker(code, { eval: true });
  const messages: { passMs?: number; started?: boolean }[] = [];
  await new Promise<void>((resolve, reject) => {
    worker.on('error', reject);
    worker.on('message', (m) => {
      messages.push(m);
      if (m.started) resolve();
    });
  });
  await new Promise((r) => setTimeout(r, 100)); // the second pass is now running on the model's thread
  const t0 = performance.now();
  await worker.terminate();
  const terminateMs = performance.now() - t0;
  const passMs = messages[0].passMs!;
  console.log(`terminate() took ${terminateMs.toFixed(0)} ms; a pass takes ${passMs.toFixed(0)} ms`);
  expect(terminateMs).toBeLessThan(passMs / 2);
});
