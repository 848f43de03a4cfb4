/**
 * The life of a generation stream: however it ends (read to the end, left early, refused, failed,
 * cancelled, aborted, or dropped by a consumer that stopped reading), it gives back its sequence's
 * busy flag, the tokens it fed (so the sequence's token list and its cache agree), and a one-shot
 * sequence with its KV reservation, and its `result` settles. Dropped streams are found by the
 * garbage collector (a FinalizationRegistry), so these tests run it (exposed through v8 flags).
 */
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import {
  AbortError,
  BusyError,
  InvalidOptionError,
  loadModel,
  type GenerateResult,
  type Model,
  type Sequence,
} from '../src';
import { cleanup, tinyModel } from './helpers';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

afterAll(cleanup);

let model: Model;
beforeAll(async () => {
  model = await loadModel(tinyModel({ seed: 4, layers: 2 }), { threads: 1, memoryLimit: 8 * 2 ** 20 });
});
afterAll(async () => model?.dispose());

const live = (m: Model): number => (m as unknown as { sequences: Set<Sequence> }).sequences.size;
const nativeLength = (s: Sequence): number => (s as unknown as { ns: { length: number } }).ns.length;
const O = { maxTokens: 20, stopOnEos: false };

/** Runs the garbage collector until `p` settles (or 5 s pass). */
async function collectUntil<T>(p: Promise<T>): Promise<T | 'pending'> {
  let settled = false;
  const watched = p.then(
    (v) => ((settled = true), v),
    (e) => {
      settled = true;
      throw e;
    },
  );
  for (let i = 0; i < 100 && !settled; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 50));
  }
  return settled ? watched : 'pending';
}

describe('a stream refused before it starts takes nothing', () => {
  test('an invalid policy: iterating throws, result rejects, no sequence or KV reservation is left', async () => {
    const before = live(model);
    const perStream = model.info.kvBytesPerToken * 256;
    // Far more streams than the 8 MiB budget could hold if each leaked its reservation.
    const n = Math.ceil((8 * 2 ** 20) / perStream) + 4;
    for (let i = 0; i < n; i++) {
      const s = model.stream('hello', { maxTokens: 250, policy: { type: 'static', skipLayers: [99] } });
      await expect(
        (async () => {
          for await (const _ of s);
        })(),
      ).rejects.toBeInstanceOf(InvalidOptionError);
      await expect(s.result).rejects.toBeInstanceOf(InvalidOptionError);
    }
    expect(live(model)).toBe(before);
    expect((await model.generate('hello', { maxTokens: 250, stopOnEos: false })).tokens).toHaveLength(250);
  });

  test('a policy the model has no routers for, on a persistent sequence', async () => {
    const seq = model.createSequence({ contextSize: 64 });
    const s = seq.stream('hello', { policy: { type: 'flexidepth' } });
    const err = await s.result.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InvalidOptionError).option).toBe('policy');
    // Not left "already generating".
    expect((await seq.generate('hello', { maxTokens: 3, stopOnEos: false })).tokens).toHaveLength(3);
    seq.dispose();
  });
});

describe('explicit ways to stop free at once', () => {
  test('return() before the first next()', async () => {
    const before = live(model);
    const s = model.stream('hello', O);
    expect(live(model)).toBe(before + 1);
    await s[Symbol.asyncIterator]().return!();
    expect(live(model)).toBe(before);
    expect((await s.result).finishReason).toBe('abort');
  });

  test('cancel() of a stream never iterated, and of one between tokens', async () => {
    const before = live(model);
    const s = model.stream('hello', O);
    s.cancel();
    expect(live(model)).toBe(before);
    expect((await s.result).finishReason).toBe('abort');

    const seq = model.createSequence({ contextSize: 64 });
    const t = seq.stream('hello', O);
    const it = t[Symbol.asyncIterator]();
    await it.next();
    t.cancel(); // between tokens: nothing in flight
    const r = await t.result;
    expect(r.finishReason).toBe('abort');
    expect(seq.tokens.length).toBe(nativeLength(seq)); // the token list and the cache agree
    expect(await it.next()).toEqual({ done: true, value: undefined });
    expect((await seq.generate(' more', { maxTokens: 3, stopOnEos: false })).tokens).toHaveLength(3);
    expect(seq.tokens.length).toBe(nativeLength(seq));
    seq.dispose();
  });

  test('cancel() while a token is being computed ends the stream when that pass returns', async () => {
    const seq = model.createSequence({ contextSize: 64 });
    const s = seq.stream('hello', O);
    const it = s[Symbol.asyncIterator]();
    const next = it.next(); // a pass is in flight
    s.cancel();
    await next;
    const r = await s.result;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeLessThanOrEqual(1);
    expect(seq.tokens.length).toBe(nativeLength(seq));
    seq.dispose();
  });

  test('the signal, aborted between tokens, frees at once and settles result', async () => {
    const before = live(model);
    const ac = new AbortController();
    const s = model.stream('hello', { ...O, signal: ac.signal });
    const it = s[Symbol.asyncIterator]();
    await it.next();
    ac.abort();
    expect(live(model)).toBe(before);
    await expect(s.result).rejects.toBeInstanceOf(AbortError);
    await expect(it.next()).rejects.toBeInstanceOf(AbortError);

    const ac2 = new AbortController();
    const s2 = model.stream('hello', { ...O, signal: ac2.signal, stopOnAbort: true });
    ac2.abort(); // never iterated
    expect(live(model)).toBe(before);
    expect((await s2.result).finishReason).toBe('abort');
  });

  test('a signal already aborted when the stream is made frees at once', async () => {
    const before = live(model);
    const s = model.stream('hello', { ...O, signal: AbortSignal.abort() });
    expect(live(model)).toBe(before);
    await expect(s.result).rejects.toBeInstanceOf(AbortError);
    await expect(
      (async () => {
        for await (const _ of s);
      })(),
    ).rejects.toBeInstanceOf(AbortError);
    const r = await model.generate('hello', { ...O, signal: AbortSignal.abort(), stopOnAbort: true });
    expect([r.finishReason, r.tokens.length]).toEqual(['abort', 0]);
  });

  test('await using a stream cancels it', async () => {
    const before = live(model);
    let result: Promise<GenerateResult>;
    {
      await using s = model.stream('hello', O);
      result = s.result;
    }
    expect(live(model)).toBe(before);
    expect((await result).finishReason).toBe('abort');
  });
});

describe('streams dropped without being read to the end are given back by the garbage collector', () => {
  test('a stream never iterated: its one-shot sequence and KV reservation come back, result resolves', async () => {
    const before = live(model);
    const results: Promise<GenerateResult>[] = [];
    for (let i = 0; i < 8; i++) results.push(model.stream('hello', O).result);
    expect(live(model)).toBe(before + 8);
    const settled = await collectUntil(Promise.all(results));
    expect(settled).not.toBe('pending');
    expect((settled as GenerateResult[]).every((r) => r.finishReason === 'abort')).toBe(true);
    expect(live(model)).toBe(before);
  });

  test('a stream left after one next() without return(): the sequence is usable and consistent again', async () => {
    const seq = model.createSequence({ contextSize: 64 });
    const { result } = await (async () => {
      const s = seq.stream('hello', O);
      const it = s[Symbol.asyncIterator]();
      await it.next();
      return { result: s.result }; // the stream and its iterator go out of reach here
    })();
    await expect(seq.generate(' x', { maxTokens: 1 })).rejects.toBeInstanceOf(BusyError); // still held, for now
    const r = await collectUntil(result);
    expect(r).not.toBe('pending');
    expect((r as GenerateResult).finishReason).toBe('abort');
    expect(seq.tokens.length).toBe(nativeLength(seq));
    expect((await seq.generate(' more', { maxTokens: 3, stopOnEos: false })).tokens).toHaveLength(3);
    expect(seq.tokens.length).toBe(nativeLength(seq));
    seq.dispose();
  });

  test('a stream being read is not collected: its reader keeps it', async () => {
    const s = model.stream('hello', O);
    const result = s.result;
    let n = 0;
    for await (const _ of s) {
      if (n % 5 === 0) gc(); // the loop holds only the iterator; the stream itself may go
      await new Promise((r) => setTimeout(r, 1));
      n++;
    }
    expect(n).toBe(20);
    expect((await result).finishReason).toBe('length');
  });
});

describe('busy', () => {
  test('reset() while the sequence is generating is a BusyError, and the sequence stays consistent', async () => {
    const seq = model.createSequence({ contextSize: 100 });
    let thrown: unknown;
    const r = await seq.generate('hello', {
      ...O,
      onToken: (c) => {
        if (c.index === 5 && thrown === undefined) {
          try {
            seq.reset();
          } catch (e) {
            thrown = e;
          }
        }
      },
    });
    expect(thrown).toBeInstanceOf(BusyError);
    expect((thrown as BusyError).code).toBe('ERR_DEPTHGATE_BUSY');
    expect(r.tokens).toHaveLength(20);
    expect(seq.tokens.length).toBe(nativeLength(seq));
    seq.reset(); // idle: fine
    expect(seq.tokens).toEqual([]);
    expect(nativeLength(seq)).toBe(0);
    seq.dispose();
  });

  test('a second call on a generating sequence, and a second iteration of a stream, are BusyErrors', async () => {
    const seq = model.createSequence({ contextSize: 100 });
    const first = seq.generate('hello', O);
    await expect(seq.evaluate([1, 2])).rejects.toBeInstanceOf(BusyError);
    await expect(seq.generate('x', O)).rejects.toBeInstanceOf(BusyError);
    await first;
    const s = model.stream('hello', { maxTokens: 2 });
    for await (const _ of s);
    expect(() => s[Symbol.asyncIterator]()).toThrow(BusyError);
    seq.dispose();
  });
});
