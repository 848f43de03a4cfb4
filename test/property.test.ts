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
import { readGenerationDefaults } from '../src/sampling';
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
const keys = Object.keys(base).concat([
  'head_dim',
  'rope_scaling',
  'routing_layers',
  'sliding_window',
  'use_sliding_window',
  'mlp_bias',
  'router_reduction_factor',
  'proj_reduction_factor',
  'router_threshold',
  'auto_map',
]);
const anyValue = fc.oneof(
  fc.anything(),
  fc.integer({ min: -5, max: 5000 }),
  fc.double(),
  fc.constantFrom(
    null,
    'llama3',
    'linear',
    'yarn',
    ['LlamaForCausalLM'],
    ['Qwen2ForCausalLM'],
    ['DDLlamaForCausalLM'],
    [0, 1],
    { rope_type: 'llama3', factor: 8 },
  ),
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
      typedOrOk(() => readGenerationDefaults(dir));
    }),
    { numRuns: 300 },
  );
});

test('generation_config.json sampling fields: any values give defaults in range or a typed error', () => {
  const dir = tmpDir();
  const field = fc.oneof(anyValue, fc.boolean(), fc.double({ min: -2, max: 3 }));
  fc.assert(
    fc.property(
      fc.dictionary(
        fc.constantFrom('do_sample', 'temperature', 'top_k', 'top_p', 'repetition_penalty', 'max_new_tokens'),
        field,
      ),
      (g) => {
        fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify(g));
        let d: object | undefined;
        typedOrOk(() => {
          d = readGenerationDefaults(dir).options;
        });
        // Whatever the file says, the defaults it yields pass the options' own validation.
        if (d) validateGenerateOptions({ ...d });
      },
    ),
    { numRuns: 300 },
  );
});

test('model.safetensors.index.json: any weight_map is accepted only when safe', () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'a.safetensors'), '');
  fc.assert(
    fc.property(
      fc.oneof(
        fc.jsonValue(),
        fc.record({
          weight_map: fc.dictionary(
            fc.string(),
            fc.oneof(fc.string(), fc.constantFrom('a.safetensors', '../a.safetensors', '/etc/passwd'), fc.jsonValue()),
          ),
        }),
      ),
      (index) => {
        fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
        typedOrOk(() => {
          const { files } = listWeightFiles(dir);
          for (const f of files) expect(path.relative(dir, f).startsWith('..')).toBe(false);
        });
      },
    ),
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
    fc.property(
      fc.anything(),
      fc.dictionary(
        fc.constantFrom('threads', 'contextSize', 'memoryLimit', 'backend', 'prefault', 'addons', 'x'),
        fc.anything(),
      ),
      (a, b) => {
        typedOrOk(() => validateLoadOptions(a));
        typedOrOk(() => validateLoadOptions(b));
      },
    ),
  );
  fc.assert(
    fc.property(
      fc.dictionary(
        fc.constantFrom(
          'maxTokens',
          'temperature',
          'topK',
          'topP',
          'repetitionPenalty',
          'frequencyPenalty',
          'presencePenalty',
          'penaltyWindow',
          'seed',
          'stop',
          'policy',
          'signal',
          'y',
        ),
        fc.anything(),
      ),
      (o) => {
        typedOrOk(() => validateGenerateOptions(o));
      },
    ),
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

describe('Tokenizer.minTokens is a lower bound on the tokens of any text (it refuses prompts before tokenizing)', () => {
  /** The tiny model's byte-level tokenizer, optionally with a normalizer added to tokenizer.json. */
  function byteLevel(normalizer?: unknown): Tokenizer {
    const dir = tinyModel();
    if (normalizer) {
      const f = path.join(dir, 'tokenizer.json');
      const tj = JSON.parse(fs.readFileSync(f, 'utf8'));
      tj.normalizer = normalizer;
      fs.writeFileSync(f, JSON.stringify(tj));
    }
    return Tokenizer.fromDirectory(dir);
  }

  /** A SentencePiece-style BPE (Llama 2, Mistral): Metaspace normalizer, byte fallback, fused <unk>. */
  function byteFallback(): Tokenizer {
    const dir = tmpDir();
    const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
    for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
    const pieces = ['▁', 'a', 'b', 'c', 'e', 'h', 't', '▁a', '▁t', 'th', '▁th', 'he', '▁the', 'ab', 'abc', '▁abc'];
    pieces.forEach((p, i) => (vocab[p] = 259 + i));
    const merges = ['▁ a', '▁ t', 't h', '▁ th', 'h e', '▁th e', 'a b', 'ab c', '▁ abc'];
    fs.writeFileSync(
      path.join(dir, 'tokenizer.json'),
      JSON.stringify({
        version: '1.0',
        added_tokens: [0, 1, 2].map((id) => ({
          id,
          content: ['<unk>', '<s>', '</s>'][id],
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
          special: true,
        })),
        normalizer: {
          type: 'Sequence',
          normalizers: [
            { type: 'Prepend', prepend: '▁' },
            { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
          ],
        },
        pre_tokenizer: null,
        post_processor: null,
        decoder: {
          type: 'Sequence',
          decoders: [
            { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
            { type: 'ByteFallback' },
            { type: 'Fuse' },
            { type: 'Strip', content: ' ', start: 1, stop: 0 },
          ],
        },
        model: {
          type: 'BPE',
          dropout: null,
          unk_token: '<unk>',
          continuing_subword_prefix: null,
          end_of_word_suffix: null,
          fuse_unk: true,
          byte_fallback: true,
          vocab,
          merges,
        },
      }),
    );
    fs.writeFileSync(
      path.join(dir, 'tokenizer_config.json'),
      JSON.stringify({ bos_token: '<s>', eos_token: '</s>', add_bos_token: false }),
    );
    return Tokenizer.fromDirectory(dir);
  }

  const texts = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 300 }),
    fc.string({
      unit: fc.constantFrom('a', 'b', ' ', 'the', 'abc', 'e\u0301', '\u1100\u1161\u11a8', '\u00e9', '🙂', '  ', '\n'),
      maxLength: 200,
    }),
  );

  test.each([
    ['byte-level BPE (Llama 3, Qwen2)', () => byteLevel()],
    // Regression: ids between the tokenizer's tokens and its added tokens are holes in its vocabulary.
    [
      'byte-level BPE whose vocabulary has holes (vocab_size above its tokens)',
      () => Tokenizer.fromDirectory(tinyModel({ vocabSize: 8000 })),
    ],
    ['byte-level BPE with an NFC normalizer, which can shorten text (Qwen2)', () => byteLevel({ type: 'NFC' })],
    ['byte-level BPE with NFKC', () => byteLevel({ type: 'NFKC' })],
    ['SentencePiece-style BPE with byte fallback (Llama 2, Mistral)', byteFallback],
  ])('%s', (_kind, make) => {
    const tk = make();
    expect(tk.minTokens('abc '.repeat(100))).toBeGreaterThan(0); // a bound is known for this kind
    fc.assert(
      fc.property(texts, fc.boolean(), (text, special) => {
        expect(tk.minTokens(text)).toBeLessThanOrEqual(tk.encode(text, special).length);
      }),
      { numRuns: 400 },
    );
  });
});
