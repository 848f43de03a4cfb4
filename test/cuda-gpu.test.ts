/**
 * The CUDA backend against the CPU backend, on a machine with a usable NVIDIA GPU (compute
 * capability 8.0+). Skipped, with the reason printed, everywhere else: the probe
 * (getBuildInfo().cuda) says whether a GPU is usable.
 *
 * The cases, checks and tolerances live in scripts/gpu/engineParity.ts, which the one-call GPU
 * check (scripts/gpu-check.sh) also runs with plain node: tiny models (bf16, f16, f32 weights;
 * GQA; biases; tied embeddings; head_dim 128; a sliding window; FlexiDepth and SkipLayer routers;
 * D3), every policy, every KV cache dtype the build accepts; prefill (40 rows, the tiled paths),
 * decode one token at a time (the matrix-vector paths), a context longer than one 256-row chunk,
 * and greedy generation. Plans must be identical and logits within TOL of the CPU's.
 *
 * GPU and CPU share engine.cc and the policies, so an engine-level bug would cancel between them:
 * the last block also compares the GPU with the float64 references of test/reference/ directly.
 */
import * as dgSrc from '../src/index';
import { writeTinyModel } from '../src/testing';
import type { Depthgate, KvDtype } from '../scripts/gpu/common';
import { kvOption, supportedKvDtypes } from '../scripts/gpu/common';
import {
  checkDecode,
  checkGreedy,
  checkLongContext,
  checkPrefill,
  PARITY_CASES,
  TOL,
} from '../scripts/gpu/engineParity';
import { loadRoutedReference, referenceRouted, type RefPolicy } from './reference/routed';
import { cleanup, randomTokens, relError, tinyModel } from './helpers';

afterAll(cleanup);
const dg = { ...dgSrc, writeTinyModel } as unknown as Depthgate;

function gpuStatus(): { ok: boolean; reason: string } {
  try {
    const c = dgSrc.getBuildInfo().cuda;
    if (!c.compiled)
      return { ok: false, reason: `the CUDA backend is not compiled in (${c.reason ?? 'no reason given'})` };
    if (!c.available) return { ok: false, reason: `no usable GPU: ${c.reason ?? 'no reason given'}` };
    return { ok: true, reason: '' };
  } catch (e) {
    return { ok: false, reason: `getBuildInfo failed: ${(e as Error).message}` };
  }
}

const status = gpuStatus();
// DEPTHGATE_REQUIRE_GPU=1 (set by every GPU check the project runs): a machine that should have a
// usable GPU but does not (no driver, a driver too old for the CUDA 13 runtime) fails here instead
// of passing with every GPU test skipped.
const requireGpu = process.env.DEPTHGATE_REQUIRE_GPU === '1';
const describeGpu = status.ok ? describe : describe.skip;
if (!status.ok && !requireGpu) console.log(`skipped: CUDA GPU tests: ${status.reason}`);
if (requireGpu)
  test('DEPTHGATE_REQUIRE_GPU=1: a usable GPU is there', () => {
    if (!status.ok) throw new Error(`DEPTHGATE_REQUIRE_GPU=1 but the CUDA GPU tests cannot run: ${status.reason}`);
  });

describeGpu('CUDA backend matches the CPU backend', () => {
  let kvList: (KvDtype | 'default')[] = ['default'];
  beforeAll(async () => {
    const kv = await supportedKvDtypes(dg, tinyModel({ layers: 1, seed: 1 }));
    if (kv.dtypes.length) kvList = kv.dtypes;
    else console.log(`only the default KV cache dtype: ${kv.note}`);
  });

  for (const c of PARITY_CASES) {
    describe(c.name, () => {
      let dir = '';
      beforeAll(() => {
        dir = tinyModel(c.model);
      });
      for (const policy of c.policies)
        test(`prefill and decode logits, policy ${JSON.stringify(policy)}, every KV dtype`, async () => {
          for (const kv of kvList) {
            const cpu = await dg.loadModel(dir, { ...kvOption(kv), backend: 'cpu', threads: 2 });
            const gpu = await dg.loadModel(dir, { ...kvOption(kv), backend: 'cuda' });
            try {
              expect(gpu.info.backend).toBe('cuda');
              await checkPrefill(cpu, gpu, policy, TOL[kv]);
              await checkDecode(cpu, gpu, policy, TOL[kv]);
            } finally {
              await cpu.dispose();
              await gpu.dispose();
            }
          }
        });
    });
  }

  test('a context longer than one 256-row chunk (cache growth, chunked prefill)', async () => {
    const dir = tinyModel({ layers: 2, dtype: 'bf16', maxPositions: 1024, seed: 12 });
    for (const kv of kvList) await checkLongContext(dg, dir, { ...kvOption(kv), backend: 'cuda' }, TOL[kv]);
  });

  test('greedy generation gives the same tokens as the CPU', async () => {
    const dir = tinyModel({ layers: 3, dtype: 'bf16', seed: 14 });
    for (const kv of kvList) await checkGreedy(dg, dir, { ...kvOption(kv), backend: 'cuda' });
  });
});

describeGpu('CUDA backend matches the float64 reference (independent of engine.cc)', () => {
  let kvList: (KvDtype | 'default')[] = ['default'];
  beforeAll(async () => {
    const kv = await supportedKvDtypes(dg, tinyModel({ layers: 1, seed: 1 }));
    if (kv.dtypes.length) kvList = kv.dtypes;
  });

  for (const c of PARITY_CASES) {
    for (const policy of c.policies) {
      const p = policy as { type: string; threshold?: number; alpha?: number };
      const P = 6; // D3: positions from P on are scored as generated tokens (generatedFrom)
      const ref: RefPolicy = p.type === 'd3' ? { type: 'd3', alpha: p.alpha!, promptLength: P } : (policy as RefPolicy);
      test(`${c.name}, policy ${JSON.stringify(policy)}: decisions and logits of every position, every KV dtype`, async () => {
        const dir = tinyModel(c.model);
        const tokens = randomTokens(20, 0, 256, 19);
        const reference = loadRoutedReference(dir);
        for (const kv of kvList) {
          const want = referenceRouted(reference, tokens, ref, { kvCacheType: kv === 'default' ? 'bf16' : kv });
          const gpu = await dg.loadModel(dir, { ...kvOption(kv), backend: 'cuda' });
          try {
            const seq = (gpu as unknown as dgSrc.Model).createSequence();
            const got = await seq.evaluate(tokens, {
              policy: policy as dgSrc.Policy,
              ...(p.type === 'd3' ? { generatedFrom: P } : {}),
            });
            seq.dispose();
            for (let i = 0; i < tokens.length; i++) {
              expect(Array.from(got.executed[i])).toEqual(want.executed[i]);
              expect(relError(got.logits[i], want.logits[i])).toBeLessThan(TOL[kv]);
            }
          } finally {
            await gpu.dispose();
          }
        }
      });
    }
  }
});
