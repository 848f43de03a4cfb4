// ChatSession: whatever the turns did (replies cut by maxTokens, stop strings, aborts, a history
// replaced), the sequence's cache holds the tokens of the conversation rendered at once, and the
// K/V behind them are those a fresh evaluation of those tokens computes.
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  ChatSession,
  InvalidOptionError,
  BusyError,
  loadModel,
  type ChatMessage,
  type Model,
  type GenerateResult,
} from '../src';
import { TINY_CHAT_TEMPLATE } from '../src/testing';
import { cleanup, relError, tinyModel } from './helpers';

afterAll(cleanup);

// Qwen2's template (ChatML), with its default system prompt when the conversation has none.
const CHATML =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Mistral-7B-Instruct-v0.1's template: roles must alternate, no system role.
const MISTRAL =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}" +
  "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

function modelWithTemplate(template: string, seed: number): string {
  const dir = tinyModel({ seed, layers: 3, maxPositions: 1024 });
  const file = path.join(dir, 'tokenizer_config.json');
  const config = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(file, JSON.stringify({ ...config, chat_template: template }));
  return dir;
}

/** The tokens of `messages` rendered at once, with the generation prompt. */
function rendered(model: Model, messages: ChatMessage[]): number[] {
  return model.tokenize(model.applyChatTemplate(messages), { addSpecialTokens: false });
}

const none = { type: 'none' } as const;
const users = ['And God said', 'unto him, Behold', 'Who art thou?', 'Let there be light.'];

describe.each([
  ['Llama-3', TINY_CHAT_TEMPLATE, 'You speak briefly.'],
  ['ChatML (Qwen2)', CHATML, undefined],
  ['Mistral', MISTRAL, undefined],
])('%s template', (_name, template, systemPrompt) => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(modelWithTemplate(template, 11), { threads: 1, kvCacheType: 'f32' });
  });
  afterAll(async () => {
    await model.dispose();
  });

  test('after each turn the cache is the conversation rendered at once, then the reply; only the new tokens are fed', async () => {
    using seq = model.createSequence({ contextSize: 1024 });
    const session = new ChatSession({ sequence: seq, systemPrompt });
    let r: GenerateResult | undefined;
    let held: number[] = [];
    for (const [turn, text] of users.entries()) {
      // Turns end in different ways: cut by maxTokens, or by a stop string in the middle of a token run.
      r = await session.prompt(text, { maxTokens: 3 + turn, policy: none, ...(turn === 2 ? { stop: ['e'] } : {}) });
      const history = session.getHistory();
      expect(history.at(-2)).toEqual({ role: 'user', content: text });
      expect(history.at(-1)).toEqual({ role: 'assistant', content: r.text });
      const prompt = rendered(model, history.slice(0, -1));
      // The last sampled token is not fed until the next turn.
      expect(seq.tokens).toEqual([...prompt, ...r.tokens].slice(0, -1));
      // Fed: the tokens past the longest prefix shared with what the cache held (the last
      // sampled token counts as held: it is fed first when it matches).
      let common = 0;
      while (common < held.length && held[common] === prompt[common]) common++;
      expect(r.usage.promptTokens).toBe(prompt.length - common);
      if (turn > 0) expect(common).toBeGreaterThan(held.length - r.tokens.length - 8);
      held = [...prompt, ...r.tokens];
    }
    // The K/V behind those tokens are the ones a fresh evaluation computes: the next token's
    // logits match, so nothing stale is left where the rendering differed from what was generated.
    const probe = 5;
    const cached = await seq.evaluate([probe], { policy: none });
    const fresh = await model.evaluate([...held, probe], { policy: none });
    expect(cached.tokens).toEqual(held.slice(-1).concat(probe));
    expect(relError(cached.logits.at(-1)!, fresh.logits.at(-1)!)).toBeLessThan(1e-4);
  });

  test('setHistory: the next turn keeps what still matches and re-feeds the rest', async () => {
    using seq = model.createSequence({ contextSize: 1024 });
    const session = new ChatSession({ sequence: seq, systemPrompt });
    await session.prompt(users[0]!, { maxTokens: 4, policy: none });
    await session.prompt(users[1]!, { maxTokens: 4, policy: none });
    const firstTurn = session.getHistory().slice(0, -2);
    session.setHistory([...firstTurn]);
    const r = await session.prompt(users[3]!, { maxTokens: 4, policy: none });
    const prompt = rendered(model, [...firstTurn, { role: 'user', content: users[3]! }]);
    expect(seq.tokens).toEqual([...prompt, ...r.tokens].slice(0, -1));
    expect(r.usage.promptTokens).toBeLessThan(prompt.length);
    expect(session.getHistory()).toEqual([
      ...firstTurn,
      { role: 'user', content: users[3] },
      { role: 'assistant', content: r.text },
    ]);
  });
});

describe('a session', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(modelWithTemplate(TINY_CHAT_TEMPLATE, 12), { threads: 1 });
  });
  afterAll(async () => {
    await model.dispose();
  });

  test('streams the reply; the streamed text is the reply in the history', async () => {
    using seq = model.createSequence({ contextSize: 128 });
    const session = new ChatSession({ sequence: seq });
    const stream = session.stream('Hello', { maxTokens: 6, policy: none });
    let text = '';
    for await (const c of stream) text += c.text;
    const r = await stream.result;
    expect(text).toBe(r.text);
    expect(session.getHistory()).toEqual([
      { role: 'user', content: 'Hello' },
      { role: 'assistant', content: r.text },
    ]);
  });

  test('an abort with stopOnAbort keeps the partial reply; one that rejects leaves the history as it was', async () => {
    using seq = model.createSequence({ contextSize: 128 });
    const session = new ChatSession({ sequence: seq });
    const ac = new AbortController();
    let n = 0;
    const r = await session.prompt('Hello', {
      maxTokens: 50,
      stopOnEos: false,
      policy: none,
      signal: ac.signal,
      stopOnAbort: true,
      onToken: () => {
        if (++n === 2) ac.abort();
      },
    });
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeLessThan(50);
    expect(session.getHistory().at(-1)).toEqual({ role: 'assistant', content: r.text });
    const before = session.getHistory();
    const ac2 = new AbortController();
    const p = session.prompt('Again', {
      maxTokens: 50,
      stopOnEos: false,
      policy: none,
      signal: ac2.signal,
      onToken: () => ac2.abort(),
    });
    await expect(p).rejects.toMatchObject({ code: 'ERR_DEPTHGATE_ABORTED' });
    expect(session.getHistory()).toEqual(before);
    // The cache still ends up as the conversation rendered at once.
    const r3 = await session.prompt('Third', { maxTokens: 3, policy: none });
    expect(seq.tokens).toEqual([...rendered(model, session.getHistory().slice(0, -1)), ...r3.tokens].slice(0, -1));
  });

  test('one turn at a time; the policy is chosen per turn', async () => {
    using seq = model.createSequence({ contextSize: 128 });
    const session = new ChatSession({ sequence: seq });
    const first = session.prompt('Hello', { maxTokens: 4, policy: none });
    expect(() => session.stream('Again')).toThrow(BusyError);
    expect(() => session.setHistory([])).toThrow(BusyError);
    expect((await first).depth.meanLayers).toBe(3);
    const skipping = await session.prompt('Again', { maxTokens: 4, policy: { type: 'static', skipLayers: [1] } });
    expect(skipping.depth.meanLayers).toBe(2);
  });

  test('a template that refuses the conversation fails the turn (messages) and keeps the history', async () => {
    const m = await loadModel(modelWithTemplate(MISTRAL, 13), { threads: 1 });
    try {
      using seq = m.createSequence({ contextSize: 64 });
      const session = new ChatSession({ sequence: seq, systemPrompt: 'Be brief.' });
      await expect(session.prompt('Hello')).rejects.toMatchObject({
        option: 'messages',
        message: expect.stringMatching(/roles must alternate/),
      });
      expect(session.getHistory()).toEqual([{ role: 'system', content: 'Be brief.' }]);
      session.setHistory([]);
      await expect(session.prompt('Hello', { maxTokens: 2, policy: none })).resolves.toMatchObject({
        usage: { completionTokens: 2 },
      });
    } finally {
      await m.dispose();
    }
  });

  test('bad arguments are InvalidOptionErrors naming them', () => {
    using seq = model.createSequence({ contextSize: 16 });
    expect(() => new ChatSession({ sequence: {} as never })).toThrow(expect.objectContaining({ option: 'sequence' }));
    expect(() => new ChatSession({ sequence: seq, systemPrompt: 3 as never })).toThrow(
      expect.objectContaining({ option: 'systemPrompt' }),
    );
    expect(() => new ChatSession({ sequence: seq, history: [] } as never)).toThrow(
      expect.objectContaining({ option: 'history' }),
    );
    const session = new ChatSession({ sequence: seq });
    expect(() => session.setHistory([{ role: 'user' }] as never)).toThrow(
      expect.objectContaining({ option: 'messages[0]' }),
    );
    expect(() => session.stream(7 as never)).toThrow(InvalidOptionError);
    expect(() => session.stream('hi', { maxTokens: 0 })).toThrow(expect.objectContaining({ option: 'maxTokens' }));
  });

  test('a conversation longer than the context is a ContextOverflowError from the turn', async () => {
    using seq = model.createSequence({ contextSize: 16 });
    const session = new ChatSession({ sequence: seq });
    await expect(session.prompt('a long message that does not fit in sixteen positions at all')).rejects.toMatchObject({
      code: 'ERR_DEPTHGATE_CONTEXT_OVERFLOW',
    });
  });
});

test("contextSize beyond the model's max_position_embeddings is refused, naming it", async () => {
  const dir = tinyModel({ seed: 14, maxPositions: 64 });
  await expect(loadModel(dir, { contextSize: 65 })).rejects.toMatchObject({
    option: 'contextSize',
    message: expect.stringMatching(/max_position_embeddings \(64/),
  });
  const m = await loadModel(dir, { threads: 1 });
  try {
    expect(() => m.createSequence({ contextSize: 4096 })).toThrow(
      expect.objectContaining({
        option: 'contextSize',
        message: expect.stringMatching(/max_position_embeddings \(64/),
      }),
    );
    expect(m.createSequence({ contextSize: 64 }).contextSize).toBe(64);
  } finally {
    await m.dispose();
  }
});
