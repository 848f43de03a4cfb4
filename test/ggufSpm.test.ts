/**
 * SentencePiece vocabularies in GGUF (tokenizer.ggml.model `llama`: tokens, scores, token types,
 * byte-fallback tokens): the tokenizer built from them (src/ggufTokenizer.ts, merges derived from
 * the scores as transformers' LlamaConverter derives them) against an independent reference,
 * llama.cpp's own algorithm (llm_tokenizer_spm: merge the adjacent pair whose concatenation is
 * the highest-scoring piece, leftmost first; leftover characters as <0xXX> byte tokens), on a
 * vocabulary trained here the way SentencePiece BPE trains one (pieces scored by merge order).
 */
import * as path from 'node:path';
import { GGUF_TOKEN_TYPE, writeGguf, type GgufMetadataValue } from '../src/testing';
import { readGgufHeader } from '../src/ggufConfig';
import { ggufTokenizer } from '../src/ggufTokenizer';
import { cleanup, tmpDir } from './helpers';

afterAll(cleanup);

const CORPUS =
  'In the beginning was the word, and the word was tested. Good software is tested often and carefully; ' +
  'each function should do one thing and do it well. The quick brown fox jumps over the lazy dog. ' +
  'Numbers like 12345 and 678 appear, as do émigrés, naïve cafés and Straße.';

/** A SentencePiece-style BPE vocabulary: specials, 256 byte tokens, characters, then merges by frequency. */
function trainSpm(merges: number): { tokens: string[]; scores: number[]; types: number[] } {
  const tokens = ['<unk>', '<s>', '</s>'];
  const types: number[] = [GGUF_TOKEN_TYPE.unknown, GGUF_TOKEN_TYPE.control, GGUF_TOKEN_TYPE.control];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(GGUF_TOKEN_TYPE.byte);
    scores.push(0);
  }
  const words = CORPUS.split(' ').map((w) => Array.from('\u2581' + w));
  // Characters (all but 'z', 'q' and 'ß', left to byte fallback).
  const chars = [...new Set(words.flat())].filter((c) => !'zqß'.includes(c));
  let score = -1;
  const add = (piece: string) => {
    tokens.push(piece);
    types.push(GGUF_TOKEN_TYPE.normal);
    scores.push(score--);
  };
  for (const c of chars) add(c);
  let segs = words.map((w) => [...w]);
  for (let k = 0; k < merges; k++) {
    const counts = new Map<string, number>();
    for (const w of segs)
      for (let i = 0; i + 1 < w.length; i++) {
        if (!tokens.includes(w[i]!) || !tokens.includes(w[i + 1]!)) continue;
        const key = w[i] + '\u0000' + w[i + 1];
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
    const best = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
    if (!best) break;
    const [l, r] = best[0].split('\u0000') as [string, string];
    add(l + r);
    segs = segs.map((w) => {
      const out: string[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === l && w[i + 1] === r) {
          out.push(l + r);
          i++;
        } else out.push(w[i]!);
      }
      return out;
    });
  }
  return { tokens, scores, types };
}

/** llama.cpp's llm_tokenizer_spm, with add_space_prefix, on text without special tokens. */
function llamaCppSpm(text: string, tokens: string[], scores: number[]): number[] {
  const id = new Map<string, number>();
  tokens.forEach((t, i) => id.has(t) || id.set(t, i));
  if (text.length === 0) return [];
  const sym = Array.from(('\u2581' + text).replaceAll(' ', '\u2581'));
  for (;;) {
    let best = -1;
    let bestScore = -Infinity;
    for (let i = 0; i + 1 < sym.length; i++) {
      const t = id.get(sym[i]! + sym[i + 1]!);
      if (t !== undefined && scores[t]! > bestScore) {
        best = i;
        bestScore = scores[t]!;
      }
    }
    if (best < 0) break;
    sym.splice(best, 2, sym[best]! + sym[best + 1]!);
  }
  const out: number[] = [];
  for (const s of sym) {
    const t = id.get(s);
    if (t !== undefined) out.push(t);
    else
      for (const b of Buffer.from(s, 'utf8')) out.push(id.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)!);
  }
  return out;
}

test('a SentencePiece GGUF vocabulary tokenizes as llama.cpp does, and decodes back to the text', () => {
  const { tokens, scores, types } = trainSpm(120);
  const file = path.join(tmpDir(), 'spm.gguf');
  const md: [string, GgufMetadataValue][] = [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'string', array: tokens }],
    ['tokenizer.ggml.scores', { type: 'f32', array: scores }],
    ['tokenizer.ggml.token_type', { type: 'i32', array: types }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: 1 }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: 2 }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: 0 }],
  ];
  writeGguf(file, { metadata: md, tensors: [] });
  const tok = ggufTokenizer(readGgufHeader(file), file, 1);
  const strings = [
    'Hello world',
    'the word was tested',
    '  leading and  double spaces',
    'Straße, émigré and naïve',
    'lazy quiz 42',
    'tested often and carefully',
    'über 中文 🙂',
    'tabs\there',
    'line\nbreak',
    'x',
    'In the beginning',
  ];
  for (let i = 0; i < 40; i++)
    strings.push(Array.from({ length: 25 }, (_, k) => CORPUS[(i * 37 + k * 11) % CORPUS.length]).join(''));
  for (const s of strings) {
    const want = llamaCppSpm(s, tokens, scores);
    expect([s, tok.encode(s, false)]).toEqual([s, want]);
    // BOS by default for SentencePiece vocabularies (llama.cpp's default too).
    expect(tok.encode(s, true)).toEqual([1, ...want]);
    expect(tok.decode(tok.encode(s, true), true)).toBe(s);
  }
  // The byte-fallback and merged pieces were both exercised.
  expect(strings.some((s) => llamaCppSpm(s, tokens, scores).some((t) => types[t] === GGUF_TOKEN_TYPE.byte))).toBe(true);
  expect(tok.bosTokenId).toBe(1);
  expect(tok.eosToken).toBe('</s>');
  expect(tok.isSpecial(2)).toBe(true);
});
