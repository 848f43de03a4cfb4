/** Generation behaviour: sampling, stopping, streaming, abort, chat, lifecycle. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AbortError, DisposedError, OutOfMemoryError, loadModel, type Model } from '../src';
import { cleanup, randomTokens, relError, tinyModel } from './helpers';
import { StreamDecoder } from '../src/tokenizer';
import { loadReference, referenceGreedy, referenceLogits } from './reference/reference';

afterAll(cleanup);

let model: Model;
let dir: string;
beforeAll(async () => {
  dir = tinyModel({ seed: 5, maxPositions: 512 });
  model = await loadModel(dir, { threads: 2 });
});
afterAll(async () => model?.dispose());

const prompt = { tokens: randomTokens(6, 0, 256, 9) };

describe('sampling', () => {
  test('the same seed gives the same tokens; another seed gives others', async () => {
    const o = { maxTokens: 24, temperature: 1.0, stopOnEos: false };
    const a = await model.generate(prompt, { ...o, seed: 42 });
    const b = await model.generate(prompt, { ...o, seed: 42 });
    const c = await model.generate(prompt, { ...o, seed: 43 });
    expect(b.tokens).toEqual(a.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  test('topK 1 and a tiny topP both reduce sampling to greedy', async () => {
    const greedy = await model.generate(prompt, { maxTokens: 12, stopOnEos: false });
    const k1 = await model.generate(prompt, { maxTokens: 12, temperature: 1.5, topK: 1, seed: 1, stopOnEos: false });
    const p0 = await model.generate(prompt, { maxTokens: 12, temperature: 1.5, topP: 1e-6, seed: 2, stopOnEos: false });
    expect(k1.tokens).toEqual(greedy.tokens);
    expect(p0.tokens).toEqual(greedy.tokens);
  });

  test('sampling at temperature 1 differs from greedy', async () => {
    const greedy = await model.generate(prompt, { maxTokens: 24, stopOnEos: false });
    const hot = await model.generate(prompt, { maxTokens: 24, temperature: 1, seed: 7, stopOnEos: false });
    expect(hot.tokens).not.toEqual(greedy.tokens);
  });
});

describe('stopping', () => {
  test('the token limit ends generation with finishReason length', async () => {
    const r = await model.generate(prompt, { maxTokens: 5, stopOnEos: false });
    expect(r.tokens).toHaveLength(5);
    expect(r.finishReason).toBe('length');
    expect(r.usage).toEqual({ promptTokens: 6, completionTokens: 5 });
    expect(r.timings.prefillMs).toBeGreaterThan(0);
    expect(r.timings.decodeTokensPerSecond).toBeGreaterThan(0);
  });

  test('an eos id from generation_config.json stops generation and is not streamed', async () => {
    const free = await model.generate(prompt, { maxTokens: 8, stopOnEos: false });
    const eos = free.tokens[3];
    const eosDir = path.join(path.dirname(dir), 'eos-model');
    fs.cpSync(dir, eosDir, { recursive: true });
    fs.writeFileSync(
      path.join(eosDir, 'generation_config.json'),
      JSON.stringify({ eos_token_id: [999999 % 320, eos] }),
    );
    const m2 = await loadModel(eosDir, { threads: 1 });
    try {
      const chunks: number[] = [];
      const r = await m2.generate(prompt, { maxTokens: 8, onToken: (c) => chunks.push(c.token) });
      const at = free.tokens.indexOf(eos);
      expect(r.finishReason).toBe('eos');
      expect(r.tokens).toEqual(free.tokens.slice(0, at + 1));
      expect(chunks).toEqual(free.tokens.slice(0, at));
    } finally {
      await m2.dispose();
    }
  });

  test('a stop string ends generation before it, and the streamed text never contains it', async () => {
    const free = await model.generate('The', { maxTokens: 40, stopOnEos: false });
    // Pick a short stop string from the middle of the free-running text.
    let stop = '';
    for (let i = 6; i < free.text.length - 2 && !stop; i++) {
      const s = free.text.slice(i, i + 2);
      if (/^[\x20-\x7e]{2}$/.test(s) && free.text.indexOf(s) === i) stop = s;
    }
    expect(stop).not.toBe('');
    let streamed = '';
    const r = await model.generate('The', {
      maxTokens: 40,
      stopOnEos: false,
      stop: [stop],
      onToken: (c) => (streamed += c.text),
    });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(free.text.slice(0, free.text.indexOf(stop)));
    expect(streamed).toBe(r.text);
  });
});

describe('streaming', () => {
  test('stream() yields every token and its text adds up to the result', async () => {
    const s = model.stream(prompt, { maxTokens: 10, stopOnEos: false });
    const tokens: number[] = [];
    let text = '';
    for await (const c of s) {
      tokens.push(c.token);
      text += c.text;
    }
    const r = await s.result;
    expect(tokens).toEqual(r.tokens);
    expect(text).toBe(r.text);
    expect(r.text).toBe(model.detokenize(r.tokens));
  });

  test('leaving the loop early stops generation', async () => {
    const s = model.stream(prompt, { maxTokens: 50, stopOnEos: false });
    let n = 0;
    for await (const _ of s) if (++n === 3) break;
    const r = await s.result;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens).toHaveLength(3);
  });
});

describe('abort', () => {
  test('an AbortSignal rejects with AbortError, or resolves the partial result with stopOnAbort', async () => {
    const ac = new AbortController();
    await expect(
      model.generate(prompt, {
        maxTokens: 50,
        stopOnEos: false,
        signal: ac.signal,
        onToken: (c) => c.index === 2 && ac.abort(),
      }),
    ).rejects.toBeInstanceOf(AbortError);
    const ac2 = new AbortController();
    const r = await model.generate(prompt, {
      maxTokens: 50,
      stopOnEos: false,
      signal: ac2.signal,
      stopOnAbort: true,
      onToken: (c) => c.index === 2 && ac2.abort(),
    });
    expect(r.finishReason).toBe('abort');
    expect(r.tokens).toHaveLength(3);
  });

  test('an already aborted signal does no work', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(model.generate(prompt, { signal: ac.signal })).rejects.toBeInstanceOf(AbortError);
  });
});

describe('text and chat input', () => {
  test('text prompts are tokenized with BOS; chat messages go through the chat template', async () => {
    const ids = model.tokenize('Hello world');
    expect(ids[0]).toBe(model.tokenizer.bosTokenId);
    expect(model.detokenize(ids)).toBe('Hello world');
    const messages = [{ role: 'user', content: 'Hi there' }];
    const rendered = model.applyChatTemplate(messages);
    expect(rendered).toContain('Hi there');
    const viaChat = await model.generate(messages, { maxTokens: 4, stopOnEos: false });
    const viaTokens = await model.generate(
      { tokens: model.tokenize(rendered, { addSpecialTokens: false }) },
      { maxTokens: 4, stopOnEos: false },
    );
    expect(viaChat.tokens).toEqual(viaTokens.tokens);
    expect(viaChat.usage.promptTokens).toBe(model.tokenize(rendered, { addSpecialTokens: false }).length);
  });
});

describe('lifecycle', () => {
  test('the event loop keeps running during a long prefill', async () => {
    const big = await loadModel(
      tinyModel({ hidden: 256, heads: 4, kvHeads: 2, intermediate: 1024, layers: 6, maxPositions: 1024 }),
      { threads: 1 },
    );
    try {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 2);
      const t0 = performance.now();
      await big.evaluate(randomTokens(700, 0, 256, 4));
      const ms = performance.now() - t0;
      clearInterval(timer);
      expect(ms).toBeGreaterThan(20);
      expect(ticks).toBeGreaterThan(2);
    } finally {
      await big.dispose();
    }
  });

  test('await using disposes the model; later calls throw DisposedError', async () => {
    let escaped: Model | undefined;
    {
      await using m = await loadModel(dir, { threads: 1 });
      escaped = m;
      expect((await m.generate(prompt, { maxTokens: 2 })).tokens.length).toBeGreaterThan(0);
    }
    expect(escaped!.disposed).toBe(true);
    await expect(escaped!.generate(prompt)).rejects.toBeInstanceOf(DisposedError);
  });

  test('dispose() during generation lets the pass finish, then rejects the rest with DisposedError', async () => {
    const m = await loadModel(dir, { threads: 1 });
    const running = m.generate(prompt, { maxTokens: 200, stopOnEos: false });
    await new Promise((r) => setTimeout(r, 5));
    await m.dispose();
    await expect(running).rejects.toBeInstanceOf(DisposedError);
  });

  test('the load progress callback reaches 1', async () => {
    const seen: number[] = [];
    const m = await loadModel(dir, { threads: 1, onProgress: (f) => seen.push(f) });
    await m.dispose();
    expect(seen.at(-1)).toBe(1);
    expect(seen.every((f, i) => i === 0 || f >= seen[i - 1])).toBe(true);
  });
});

describe('long inputs', () => {
  test("a prompt longer than one slice (512) gives the float64 reference's logits and greedy tokens", async () => {
    const dir = tinyModel({ seed: 6, maxPositions: 1400 });
    const m = await loadModel(dir, { threads: 2, kvCacheType: 'f32' });
    try {
      const tokens = randomTokens(1100, 0, 300, 77);
      const ref = loadReference(dir);
      const want = referenceLogits(ref, tokens);
      const whole = await m.evaluate(tokens);
      expect(whole.logits).toHaveLength(1100);
      // Every slice (positions 0-511, 512-1023, 1024-1099) against the reference.
      for (const p of [0, 511, 512, 1023, 1024, 1099]) expect(relError(whole.logits[p], want[p])).toBeLessThan(1e-5);
      // The same positions through a sequence in two calls (700 + 400: slices that end elsewhere).
      const seq = m.createSequence();
      await seq.evaluate(tokens.slice(0, 700));
      const tail = await seq.evaluate(tokens.slice(700));
      for (const i of [0, 399]) expect(relError(tail.logits[i], want[700 + i])).toBeLessThan(1e-5);
      const g = await m.generate({ tokens }, { maxTokens: 3, stopOnEos: false });
      expect(g.usage.promptTokens).toBe(1100);
      expect(g.tokens).toEqual(referenceGreedy(ref, tokens, 3));
      seq.dispose();
    } finally {
      await m.dispose();
    }
  });

  test('an AbortSignal stops a long prefill between slices', async () => {
    const m = await loadModel(tinyModel({ seed: 6, hidden: 128, intermediate: 512, layers: 4, maxPositions: 4096 }), {
      threads: 1,
    });
    try {
      const ac = new AbortController();
      const tokens = randomTokens(4000, 0, 300, 78);
      const t0 = performance.now();
      setTimeout(() => ac.abort(), 30);
      await expect(m.evaluate(tokens, { signal: ac.signal })).rejects.toBeInstanceOf(AbortError);
      const aborted = performance.now() - t0;
      const t1 = performance.now();
      await m.evaluate(tokens);
      const full = performance.now() - t1;
      expect(aborted).toBeLessThan(full * 0.8);
      const ac2 = new AbortController();
      setTimeout(() => ac2.abort(), 30);
      await expect(m.generate({ tokens }, { signal: ac2.signal })).rejects.toBeInstanceOf(AbortError);
    } finally {
      await m.dispose();
    }
  });
});

describe('memory and concurrency', () => {
  test('a context that cannot fit the memory budget is refused up front, and the model stays usable', async () => {
    const m = await loadModel(tinyModel({ seed: 6, maxPositions: 100000 }), { threads: 1, memoryLimit: 10 * 2 ** 20 });
    try {
      const perToken = m.info.kvBytesPerToken;
      const fits = Math.floor((10 * 2 ** 20) / perToken);
      const err = await Promise.resolve()
        .then(() => m.createSequence({ contextSize: fits + 1 }))
        .catch((e) => e);
      expect(err).toBeInstanceOf(OutOfMemoryError);
      expect(err.message).toMatch(/needs 10\.00 MiB of KV cache \(\d+ bytes\)/); // MiB below 1 GiB
      // Reservations add up across live sequences, and come back on dispose.
      const a = m.createSequence({ contextSize: Math.floor(fits / 2) });
      expect(() => m.createSequence({ contextSize: Math.floor(fits / 2) + 2 })).toThrow(OutOfMemoryError);
      a.dispose();
      m.createSequence({ contextSize: Math.floor(fits / 2) + 2 }).dispose();
      expect((await m.generate({ tokens: [1, 2, 3] }, { maxTokens: 3, stopOnEos: false })).tokens).toHaveLength(3);
    } finally {
      await m.dispose();
    }
  });

  test('32 concurrent greedy generations give exactly the outputs of running them one by one', async () => {
    const prompts = Array.from({ length: 32 }, (_, k) => randomTokens(2 + (k % 7), 0, 300, 500 + k));
    const alone: number[][] = [];
    for (const p of prompts)
      alone.push((await model.generate({ tokens: p }, { maxTokens: 12, stopOnEos: false })).tokens);
    const together = await Promise.all(
      prompts.map((p) => model.generate({ tokens: p }, { maxTokens: 12, stopOnEos: false })),
    );
    expect(together.map((r) => r.tokens)).toEqual(alone);
  });
});

describe('streaming text', () => {
  test('deltas add up to the full decode, for multi-byte text and special tokens, over many tokens', () => {
    const tk = model.tokenizer;
    const texts = ['héllo wörld 世界 🙂 and more text, repeated: 世界🙂🙂 ok', 'plain ascii words only here'];
    for (const t of texts) {
      const ids = tk.encode(t.repeat(20), false);
      const d = new StreamDecoder(tk);
      let out = '';
      for (const id of ids) out += d.push(id);
      out += d.finish();
      expect(out).toBe(tk.decode(ids));
      expect(d.text).toBe(out);
    }
    // Random ids (incomplete byte sequences, special tokens) still add up.
    const ids = randomTokens(400, 0, 320, 99);
    const d = new StreamDecoder(tk);
    let out = '';
    for (const id of ids) out += d.push(id);
    out += d.finish();
    expect(out).toBe(tk.decode(ids));
  });
});

describe('stop strings and the decoder’s final flush', () => {
  test('a stop string completed by the text the decoder releases only at the end is still found and cut', async () => {
    // Find a greedy continuation whose k-th token ends inside a character: generating k tokens,
    // the last character is held back until the final flush, which must be checked for stops too.
    const tk = model.tokenizer;
    let found: { prompt: number[]; k: number; text: string } | undefined;
    for (let seed = 1; seed < 60 && !found; seed++) {
      const p = randomTokens(4, 0, 300, seed);
      const full = await model.generate({ tokens: p }, { maxTokens: 40, stopOnEos: false });
      for (let k = 2; k <= full.tokens.length && !found; k++) {
        const text = tk.decode(full.tokens.slice(0, k));
        const stop = text.slice(-2);
        if (text.endsWith('\uFFFD') && stop.length === 2 && text.indexOf(stop) === text.length - 2)
          found = { prompt: p, k, text };
      }
    }
    if (!found) throw new Error('no greedy continuation ending inside a character was found for this model');
    const stop = found.text.slice(-2);
    const s = model.stream({ tokens: found.prompt }, { maxTokens: found.k, stopOnEos: false, stop: [stop] });
    let streamed = '';
    for await (const c of s) streamed += c.text;
    const r = await s.result;
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(found.text.slice(0, -2));
    expect(streamed).toBe(r.text);
    expect(r.text.includes(stop)).toBe(false);
  });
});

describe('stream decoder work', () => {
  /** Ids decoded (summed over calls) while streaming `ids`, and the text it gave. */
  function streamWork(ids: number[]): { work: number; text: string } {
    const tk = model.tokenizer;
    const spy = jest.spyOn(tk, 'decodeIds');
    try {
      const d = new StreamDecoder(tk);
      let text = '';
      for (const id of ids) text += d.push(id);
      text += d.finish();
      return { work: spy.mock.calls.reduce((a, [w]) => a + w.length, 0), text };
    } finally {
      spy.mockRestore();
    }
  }
  const tk = () => model.tokenizer;
  const all = () => Array.from({ length: tk().size }, (_, i) => i);
  const special = () => all().filter((i) => tk().isSpecial(i));
  // Byte tokens that alone are an incomplete or invalid UTF-8 sequence.
  const brokenBytes = () => all().filter((i) => !tk().isSpecial(i) && tk().decode([i]) === '\uFFFD');
  const cycle = (ids: number[], n: number, step: number) =>
    Array.from({ length: n }, (_, i) => ids[(i * step) % ids.length]);

  test.each([
    ['special tokens', () => cycle(special(), 4000, 1)],
    ['tokens that end inside a character', () => cycle(brokenBytes(), 4000, 7)],
  ])('a run of 4000 %s costs work proportional to its length, and decodes exactly', (_what, make) => {
    const ids = make();
    expect(ids.length).toBe(4000);
    const small = streamWork(ids.slice(0, 2000));
    const big = streamWork(ids);
    // Re-decoding the whole run at every token would be 8 million ids; a bounded window is < 20 per token.
    expect(big.work).toBeLessThan(20 * ids.length);
    expect(big.work).toBeLessThanOrEqual(2 * small.work + 100);
    expect(big.text).toBe(tk().decode(ids));
  });

  test('deltas stay exact across long runs of byte tokens mixed with text (the window re-anchors inside characters)', () => {
    const bytes = brokenBytes();
    for (let seed = 1; seed <= 5; seed++) {
      const pick = randomTokens(3000, 0, 1000, seed);
      const ids = pick.map((r, i) => (r < 700 ? bytes[r % bytes.length] : (r * 13 + i) % tk().size));
      expect(streamWork(ids).text).toBe(tk().decode(ids));
    }
  });
});
