/**
 * Limits checked before heavy or unbounded work: a prompt that cannot fit is refused before it is
 * tokenized (synchronous work on the event loop), a chat template renders within a bound, a token
 * array is checked before it is copied, evaluate() stays within the context and counts its logits
 * against the memory budget, and the default budget follows a container's memory limit.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  ContextOverflowError,
  InvalidOptionError,
  loadModel,
  ModelFormatError,
  OutOfMemoryError,
  type Model,
} from '../src';
import { memorySources } from '../src/memory';
import { cleanup, tinyModel } from './helpers';

afterAll(cleanup);

let dir: string;
let model: Model;
beforeAll(async () => {
  dir = tinyModel({ seed: 7 });
  model = await loadModel(dir, { threads: 1, contextSize: 64 });
});
afterAll(async () => model?.dispose());

describe('a prompt that cannot fit is refused before it is tokenized', () => {
  const huge = 'And God said unto Moses, '.repeat(40000); // 1 MB

  test('text, chat messages and token arrays, on one-shot calls and on sequences', async () => {
    const encode = jest.spyOn(model.tokenizer, 'encode');
    try {
      await expect(model.generate(huge)).rejects.toThrow(
        /the prompt is 1000000 characters, at least \d+ tokens but only 64/,
      );
      const s = model.stream(huge);
      await expect(s.result).rejects.toBeInstanceOf(ContextOverflowError);
      const seq = model.createSequence({ contextSize: 32 });
      await expect(seq.generate(huge)).rejects.toBeInstanceOf(ContextOverflowError);
      await expect(seq.generate([{ role: 'user', content: huge }])).rejects.toBeInstanceOf(ContextOverflowError);
      expect(seq.tokens).toEqual([]);
      seq.dispose();
      expect(encode).not.toHaveBeenCalled();
      // Copying a pretend array of a billion ids would take gigabytes; it is refused by its length.
      await expect(model.generate({ tokens: { length: 1e9 } })).rejects.toThrow(/the prompt is 1000000000 tokens/);
      await expect(model.evaluate({ length: 1e9 })).rejects.toBeInstanceOf(ContextOverflowError);
    } finally {
      encode.mockRestore();
    }
    // What fits still runs.
    expect((await model.generate('And God said', { maxTokens: 2, stopOnEos: false })).tokens).toHaveLength(2);
  });

  test('for a tokenizer where no such bound can be proven (whitespace-dropping), the text is tokenized first, and still refused', async () => {
    const d = tinyModel({ seed: 7 });
    const tjFile = path.join(d, 'tokenizer.json');
    const tj = JSON.parse(fs.readFileSync(tjFile, 'utf8'));
    tj.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, tj.pre_tokenizer] };
    fs.writeFileSync(tjFile, JSON.stringify(tj));
    const m = await loadModel(d, { threads: 1, contextSize: 16 });
    try {
      expect(m.tokenizer.minTokens('a '.repeat(1000))).toBe(0);
      await expect(m.generate('a '.repeat(1000))).rejects.toBeInstanceOf(ContextOverflowError);
    } finally {
      await m.dispose();
    }
  });

  test('token ids are checked before copying, and typed arrays are taken as they are', async () => {
    await expect(model.generate({ tokens: null as never })).rejects.toBeInstanceOf(InvalidOptionError);
    await expect(model.generate({ tokens: { length: -1 } as never })).rejects.toThrow(/length is -1/);
    // eslint-disable-next-line no-sparse-arrays -- a hole is the bad input under test
    await expect(model.generate({ tokens: [5, , 6] as never })).rejects.toThrow(
      /element 1 \(undefined\) is not a token id/,
    );
    await expect(model.generate({ tokens: [5n] as never })).rejects.toThrow(/element 0 \(5n\)/);
    const r = await model.generate({ tokens: new Int32Array([5, 6]) }, { maxTokens: 1 });
    expect(r.usage.promptTokens).toBe(2); // ids are taken as given: no BOS added
  });
});

describe('detokenize', () => {
  test.each<[string, unknown, RegExp]>([
    ['an id past the vocabulary', [99999], /token id 99999 is outside the vocabulary/],
    ['a negative id', [-1], /token id -1 is outside/],
    ['a fraction', [1.5], /token id 1\.5 is outside/],
    ['a string', ['a'], /element 0 \("a"\) is not a token id/],
    ['null', null, /must be an array of token ids/],
    ['an array-like claiming a billion elements', { length: 1e9 }, /1000000000 elements, more than/],
  ])('%s is an InvalidOptionError on tokens', (_what, tokens, message) => {
    let err: unknown;
    try {
      model.detokenize(tokens as never);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InvalidOptionError).option).toBe('tokens');
    expect((err as Error).message).toMatch(message);
  });

  test('bad options are InvalidOptionErrors; good ids decode', () => {
    expect(() => model.detokenize([65], { skipSpecialTokens: 'no' as never })).toThrow(InvalidOptionError);
    expect(() => model.detokenize([65], { bogus: 1 } as never)).toThrow(InvalidOptionError);
    expect(() => model.tokenize('a', { addSpecialTokens: 'no' as never })).toThrow(InvalidOptionError);
    expect(model.detokenize(model.tokenize('hello', { addSpecialTokens: false }))).toBe('hello');
    expect(model.detokenize(new Uint16Array(model.tokenize('hello', { addSpecialTokens: false })))).toBe('hello');
  });
});

describe('chat templates render within a bound', () => {
  async function withTemplate(template: string, run: (m: Model, file: string) => Promise<void>): Promise<void> {
    const d = tinyModel({ seed: 7 });
    const file = path.join(d, 'tokenizer_config.json');
    const tc = JSON.parse(fs.readFileSync(file, 'utf8'));
    tc.chat_template = template;
    fs.writeFileSync(file, JSON.stringify(tc));
    const m = await loadModel(d, { threads: 1 });
    try {
      await run(m, file);
    } finally {
      await m.dispose();
    }
  }
  const hi = [{ role: 'user', content: 'hi' }];

  test.each([
    [
      'a loop of 10^8 steps',
      '{% for i in range(100000000) %}x{% endfor %}',
      /did not finish within its bound.*range\(\) of 100000000 items/,
    ],
    [
      'nested loops',
      '{% for i in range(300) %}{% for j in range(300) %}x{% endfor %}{% endfor %}',
      /did not finish within its bound/,
    ],
    [
      'a string doubled in a loop',
      "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
      /a string of more than \d+ characters/,
    ],
  ])(
    '%s is a ModelFormatError naming tokenizer_config.json, in a bounded number of steps',
    async (_what, template, message) => {
      await withTemplate(template, async (m, file) => {
        const t0 = performance.now();
        let err: unknown;
        try {
          m.applyChatTemplate(hi);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(ModelFormatError);
        expect((err as ModelFormatError).file).toBe(file);
        expect((err as Error).message).toMatch(message);
        // The bound is in steps (the message says it was hit); the time only says it is a small one: the
        // unbounded renders took 45 s and more, and a loaded 2-core CI machine can take 1 s for this.
        expect(performance.now() - t0).toBeLessThan(5000);
        await expect(m.generate(hi)).rejects.toBeInstanceOf(ModelFormatError);
      });
    },
  );

  test("a template's raise_exception is an InvalidOptionError on messages; one that does not parse is a ModelFormatError", async () => {
    await withTemplate(
      "{% if messages[0]['role'] != 'system' %}{{ raise_exception('the first message must be a system message') }}{% endif %}",
      async (m) => {
        expect(() => m.applyChatTemplate(hi)).toThrow(
          /option 'messages': the chat template refused them: the first message must be a system message/,
        );
      },
    );
    await withTemplate('{% for %}', async (m, file) => {
      expect(() => m.applyChatTemplate(hi)).toThrow(ModelFormatError);
      expect(() => m.applyChatTemplate(hi)).toThrow(
        new RegExp(`${file.replace(/[/.]/g, '\\$&')}: chat_template is not a valid template`),
      );
    });
  });

  test('the bound grows with the conversation: the model’s own template renders 2000 messages', () => {
    const messages = Array.from({ length: 2000 }, (_, i) => ({
      role: i % 2 ? 'assistant' : 'user',
      content: `message ${i} `.repeat(20),
    }));
    const text = model.applyChatTemplate(messages);
    expect(text).toContain('message 1999');
    expect(text.split('<|eot_id|>')).toHaveLength(2001);
  });
});

describe('memory', () => {
  // Contexts far past 256 positions probe the budget: a model whose max_position_embeddings allows them.
  let wide: string | undefined;
  const wideDir = () => (wide ??= tinyModel({ seed: 7, maxPositions: 2 ** 31 - 1 }));
  test('evaluate() is capped by the model’s contextSize', async () => {
    await expect(model.evaluate(Array.from({ length: 65 }, (_, i) => i))).rejects.toThrow(
      /65 tokens but only 64 of its 64/,
    );
    expect((await model.evaluate(Array.from({ length: 64 }, (_, i) => i))).logits).toHaveLength(64);
  });

  test("evaluate()'s logits count against the budget while it runs", async () => {
    const probe = await loadModel(wideDir(), { threads: 1 });
    const kv = probe.info.kvBytesPerToken;
    const v = probe.config.vocabSize;
    await probe.dispose();
    // A budget that holds the KV cache of 400 positions but not their logits (400 x vocab x 4 bytes) too.
    const n = 400;
    const m = await loadModel(wideDir(), { threads: 1, memoryLimit: n * kv + (n * v * 4) / 2 });
    try {
      const seq = m.createSequence({ contextSize: n });
      await expect(seq.evaluate(Array.from({ length: n }, (_, i) => i % 300))).rejects.toThrow(
        /evaluating 400 positions returns .* of logits/,
      );
      expect(seq.tokens).toEqual([]);
      // Fewer positions fit; the reservation is returned after each call.
      for (let k = 0; k < 3; k++) expect((await seq.evaluate([1, 2, 3])).logits).toHaveLength(3);
      seq.dispose();
    } finally {
      await m.dispose();
    }
  });

  describe('the default budget follows a container limit (process.constrainedMemory)', () => {
    const saved = { ...memorySources };
    afterEach(() => Object.assign(memorySources, saved));

    async function largestContext(): Promise<number> {
      const m = await loadModel(wideDir(), { threads: 1 });
      try {
        const perToken = m.info.kvBytesPerToken;
        let lo = 1;
        let hi = 2 ** 31 - 1;
        while (lo < hi) {
          const mid = Math.ceil((lo + hi) / 2);
          try {
            m.createSequence({ contextSize: mid }).dispose();
            lo = mid;
          } catch (e) {
            if (!(e instanceof OutOfMemoryError)) throw e;
            hi = mid - 1;
          }
        }
        return lo * perToken;
      } finally {
        await m.dispose();
      }
    }

    test('a 64 MiB cgroup limit below the machine memory sets the budget (90% of it, less the weights)', async () => {
      memorySources.total = () => 64 * 2 ** 30;
      memorySources.constrained = () => 64 * 2 ** 20;
      const m = await loadModel(wideDir(), { threads: 1 });
      const weights = m.info.weightBytes;
      const perToken = m.info.kvBytesPerToken;
      await m.dispose();
      const budget = Math.floor(64 * 2 ** 20 * 0.9) - weights;
      const reached = await largestContext();
      expect(reached).toBeLessThanOrEqual(budget);
      expect(reached).toBeGreaterThan(budget - perToken);
    });

    test.each([
      ['0 (no limit)', 0],
      ['undefined (not known)', undefined],
      ['2^64 (unlimited, as cgroup v1 reports it)', 2 ** 64],
      ['a limit above the machine memory', 128 * 2 ** 30],
    ])('%s falls back to the machine memory', async (_what, limit) => {
      memorySources.total = () => 256 * 2 ** 20;
      memorySources.constrained = () => limit;
      const m = await loadModel(wideDir(), { threads: 1 });
      const weights = m.info.weightBytes;
      const perToken = m.info.kvBytesPerToken;
      await m.dispose();
      const budget = Math.floor(256 * 2 ** 20 * 0.9) - weights;
      const reached = await largestContext();
      expect(reached).toBeLessThanOrEqual(budget);
      expect(reached).toBeGreaterThan(budget - perToken);
    });
  });
});
