/**
 * Property-based tests of the TypeScript parsers that read outside data: config.json,
 * generation_config.json, model.safetensors.index.json, tokenizer files, load/generate options and
 * the CLI's policy syntax. For any input they either succeed or throw a typed DepthgateError;
 * they never throw anything else.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { DepthgateError, parsePolicy, readModelConfig, validatePolicy } from '../src';
import { listWeightFiles } from '../src/config';
import { validateGenerateOptions, validateLoadOptions } from '../src/options';
import { Tokenizer } from '../src/tokenizer';
import { cleanup, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

const typedOrOk = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    if (!(e instanceof DepthgateError)) throw new Error(`untyped error: ${(e as Error)?.stack ?? String(e)}`);
  }
};

const base = JSON.parse(fs.readFileSync(path.join(tinyModel(), 'config.json'), 'utf8')) as Record<string, unknown>;
const keys = Object.keys(base).concat(['head_dim', 'rope_scaling', 'routing_layers', 'sliding_window', 'use_sliding_window', 'mlp_bias',
  'router_reduction_factor', 'proj_reduction_factor', 'router_threshold', 'auto_map']);
const anyValue = fc.oneof(
  fc.anything(),
  fc.integer({ min: -5, max: 5000 }),
  fc.double(),
  fc.constantFrom(null, 'llama3', 'linear', 'yarn', ['LlamaForCausalLM'], ['Qwen2ForCausalLM'], ['DDLlamaForCausalLM'], [0, 1], { rope_type: 'llama3', factor: 8 }),
);

test('config.json: any mutation parses to a valid config or a typed error', () => {
  const dir = tmpDir();
  fc.assert(
    fc.property(fc.dictionary(fc.constantFrom(...keys), anyValue), fc.boolean(), (patch, drop) => {
      const cfg: Record<string, unknown> = { ...base, ...patch };
      if (drop) delete cfg[Object.keys(patch)[0] ?? 'vocab_size'];
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
      typedOrOk(() => {
        const c = readModelConfig(dir);
        // What passes is internally consistent.
        expect(c.numHeads % c.numKvHeads).toBe(0);
        expect(c.headDim % 2).toBe(0);
        expect(c.hiddenSize).toBeGreaterThan(0);
      });
    }),
    { numRuns: 400 },
  );
});

test('config.json and generation_config.json as arbitrary text', () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(base));
  fc.assert(
    fc.property(fc.string(), fc.jsonValue(), (text, json) => {
      fs.writeFileSync(path.join(dir, 'generation_config.json'), text);
      typedOrOk(() => readModelConfig(dir));
      fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify(json));
      typedOrOk(() => readModelConfig(dir));
    }),
    { numRuns: 300 },
  );
});

test('model.safetensors.index.json: any weight_map is accepted only when safe', () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'a.safetensors'), '');
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue(), fc.record({ weight_map: fc.dictionary(fc.string(), fc.oneof(fc.string(), fc.constantFrom('a.safetensors', '../a.safetensors', '/etc/passwd'), fc.jsonValue())) })), (index) => {
      fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
      typedOrOk(() => {
        const { files } = listWeightFiles(dir);
        for (const f of files) expect(path.relative(dir, f).startsWith('..')).toBe(false);
      });
    }),
    { numRuns: 300 },
  );
});

test('tokenizer files: arbitrary JSON gives a tokenizer or a typed error', () => {
  const dir = tmpDir();
  fc.assert(
    fc.property(fc.jsonValue(), fc.jsonValue(), (tj, tc) => {
      fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tc));
      typedOrOk(() => Tokenizer.fromDirectory(dir));
    }),
    { numRuns: 200 },
  );
});

test('load and generate options: anything is validated or refused with a typed error', () => {
  fc.assert(
    fc.property(fc.anything(), fc.dictionary(fc.constantFrom('threads', 'contextSize', 'memoryLimit', 'backend', 'prefault', 'addons', 'x'), fc.anything()), (a, b) => {
      typedOrOk(() => validateLoadOptions(a));
      typedOrOk(() => validateLoadOptions(b));
    }),
  );
  fc.assert(
    fc.property(fc.dictionary(fc.constantFrom('maxTokens', 'temperature', 'topK', 'topP', 'seed', 'stop', 'policy', 'signal', 'y'), fc.anything()), (o) => {
      typedOrOk(() => validateGenerateOptions(o));
    }),
  );
});

test('policies: any object or CLI string is a valid policy or a typed error', () => {
  fc.assert(
    fc.property(fc.anything(), fc.string(), fc.integer({ min: 1, max: 64 }), (p, text, layers) => {
      typedOrOk(() => validatePolicy(p, layers));
      typedOrOk(() => parsePolicy(text, layers));
      typedOrOk(() => {
        const pol = parsePolicy(`static:skip=${text}`, layers);
        if (pol.type === 'static') for (const l of pol.skipLayers ?? []) expect(l).toBeLessThan(layers);
      });
    }),
    { numRuns: 500 },
  );
});
