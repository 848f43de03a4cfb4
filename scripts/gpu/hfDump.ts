/**
 * The depthgate half of the Hugging Face comparison: writes tiny checkpoints in exact HF layout
 * (writeTinyModel) and depthgate's logits for one prompt on each, from the CPU backend and from
 * backend B (CUDA on the GPU machine), as raw little-endian f32 files with a manifest that
 * scripts/gpu/hf_parity.py reads to run transformers on the same checkpoints.
 *   node hfDump.js --dir DIR [--b cuda|cpu]
 * The KV cache is f32 where the build lets us choose, so the comparison with transformers in
 * float32 measures the arithmetic alone.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { backendB, loadDepthgate, log, parseArgs, randomTokens, supportedKvDtypes, writeJson } from './common';

export const HF_MODELS: { name: string; model: Record<string, unknown> }[] = [
  { name: 'llama-f32-gqa', model: { layers: 3, dtype: 'f32', heads: 4, kvHeads: 2, seed: 21 } },
  { name: 'llama-bf16-tied-bias', model: { layers: 3, dtype: 'bf16', tied: true, bias: true, seed: 22 } },
  {
    name: 'llama-f16-llama3-rope',
    model: { layers: 3, dtype: 'f16', ropeScaling: 'llama3', maxPositions: 512, seed: 23 },
  },
  {
    name: 'llama-bf16-headdim128',
    model: { layers: 2, dtype: 'bf16', hidden: 256, heads: 2, kvHeads: 1, headDim: 128, intermediate: 512, seed: 24 },
  },
  { name: 'qwen2-bf16', model: { arch: 'qwen2', layers: 3, dtype: 'bf16', seed: 25 } },
  { name: 'mistral-bf16-window7', model: { arch: 'mistral', layers: 3, dtype: 'bf16', slidingWindow: 7, seed: 26 } },
];

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dir = path.resolve(args.dir ?? 'hf-parity');
  const b = args.b ?? 'cuda';
  const dg = loadDepthgate();
  fs.mkdirSync(dir, { recursive: true });
  const probe = path.join(dir, 'kv-probe');
  dg.writeTinyModel(probe, { layers: 1, seed: 1 });
  const kv = await supportedKvDtypes(dg, probe);
  const kvOpt = kv.dtypes.includes('f32') ? { kvCacheType: 'f32' } : {};
  const manifest: Record<string, unknown>[] = [];
  for (const m of HF_MODELS) {
    const mdir = path.join(dir, m.name);
    dg.writeTinyModel(mdir, m.model);
    const tokens = randomTokens(40, 4, 250, 31);
    const entry: Record<string, unknown> = {
      name: m.name,
      dir: mdir,
      tokens,
      dtype: m.model.dtype,
      kv: kvOpt.kvCacheType ?? 'default',
    };
    const sides: [string, string, Record<string, unknown>][] = [
      ['cpu', 'cpu', { backend: 'cpu', threads: 2 }],
      ['b', b, backendB(b)],
    ];
    for (const [key, label, opts] of sides) {
      try {
        const model = await dg.loadModel(mdir, { ...kvOpt, ...opts });
        const r = await model.evaluate(tokens);
        await model.dispose();
        const flat = new Float32Array(r.logits.length * r.logits[0].length);
        r.logits.forEach((row, i) => flat.set(row, i * row.length));
        const file = path.join(mdir, `depthgate-${key}.f32`);
        fs.writeFileSync(file, Buffer.from(flat.buffer));
        entry[key] = { backend: label, file, rows: r.logits.length, vocab: r.logits[0].length };
      } catch (e) {
        entry[key] = { backend: label, error: (e as Error).message };
        log(`${m.name} on ${label}: ${(e as Error).message}`);
      }
    }
    manifest.push(entry);
  }
  writeJson(path.join(dir, 'manifest.json'), { b, kvNote: kv.dtypes.length ? '' : kv.note, models: manifest });
  log(`wrote ${manifest.length} models and their depthgate logits to ${dir}`);
}

if (require.main === module) void main();
