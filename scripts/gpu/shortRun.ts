/**
 * A short run of every kernel path on one backend, for compute-sanitizer (memcheck) to watch:
 * a tiny model with FlexiDepth routers on two layers and SkipLayer routers on another, every
 * policy, a 40-token prefill, decode steps through the cache, sampled generation, and three
 * generations batched together. Small on purpose: under memcheck every kernel runs many times
 * slower.
 *   node shortRun.js [--b cuda|cpu] [--dir TMP]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backendB, loadDepthgate, log, parseArgs, PolicyLike, randomTokens } from './common';

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dg = loadDepthgate();
  const dir = path.join(fs.mkdtempSync(path.join(args.dir ?? os.tmpdir(), 'dg-short-')), 'model');
  dg.writeTinyModel(dir, {
    layers: 4,
    dtype: 'bf16',
    heads: 4,
    kvHeads: 2,
    seed: 3,
    flexidepth: { layers: [2, 3] },
    skiplayer: { mode: 'module', layers: [1] },
  });
  const model = await dg.loadModel(dir, backendB(args.b ?? 'cuda'));
  const backend = model.info.backend;
  const policies: PolicyLike[] = [
    { type: 'none' },
    { type: 'static', skipLayers: [1], skipAttention: [2] },
    { type: 'flexidepth' },
    { type: 'skiplayer' },
    { type: 'd3', alpha: 0.5 },
  ];
  try {
    for (const policy of policies) {
      await model.evaluate(randomTokens(40, 4, 250, 5), { policy });
      const s = model.createSequence({ contextSize: 64 });
      await s.evaluate(randomTokens(5, 4, 250, 6), { policy });
      for (let i = 0; i < 3; i++) await s.evaluate([10 + i], { policy });
      s.dispose();
      await model.generate(
        { tokens: randomTokens(6, 4, 250, 7) },
        { maxTokens: 6, stopOnEos: false, policy, temperature: 0.8, topK: 20, seed: 1 },
      );
      await Promise.all(
        [1, 2, 3].map((k) =>
          model.generate({ tokens: randomTokens(4 + k, 4, 250, k) }, { maxTokens: 4, stopOnEos: false, policy }),
        ),
      );
      log(`short run: ${JSON.stringify(policy)} done`);
    }
  } finally {
    await model.dispose();
  }
  log(`short run on ${backend}: every policy ran`);
}

if (require.main === module)
  main().catch((e: unknown) => {
    log(`short run failed: ${(e as Error).message}`);
    process.exitCode = 1;
  });
