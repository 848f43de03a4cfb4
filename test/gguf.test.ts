/**
 * GGUF files: the same tiny weights written as safetensors and converted to GGUF the way
 * llama.cpp's convert_hf_to_gguf.py does (names, fastest-first dimensions, the Q/K row
 * permutation of architecture llama) give the same logits, and both match the float64 reference;
 * the tokenizer and chat template built from GGUF metadata match tokenizer.json; malformed files
 * are refused with typed errors naming the file and the key or tensor, and leave nothing mapped.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel, ModelFormatError, UnsupportedModelError, ModelFileError, type Model } from '../src';
import {
  convertToGguf,
  ggufBytes,
  writeGguf,
  type GgufFileSpec,
  type GgufTensor,
  type GgufMetadataValue,
  type GgufTensorType,
} from '../src/testing';
import { readGgufHeader } from '../src/ggufConfig';
import { float32ToFloat16Bits } from '../src/testing/floatBits';
import { dequantizeKQuant } from '../src/testing/kQuants';
import { Tokenizer } from '../src/tokenizer';
import { loadReference, referenceLogits } from './reference/reference';
import { cleanup, openedFiles, randomTokens, relError, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

// As test/engine.test.ts: with an f32 KV cache only the engine's f32 arithmetic differs from float64.
const TOL_F32 = 1e-5;

const cases: [string, Parameters<typeof tinyModel>[0]][] = [
  ['llama f32 GQA', { arch: 'llama', dtype: 'f32' }],
  ['llama bf16 tied', { arch: 'llama', dtype: 'bf16', tied: true }],
  ['llama f16 MHA explicit head_dim', { arch: 'llama', dtype: 'f16', hidden: 64, heads: 4, kvHeads: 4, headDim: 32 }],
  ['llama attention_bias', { arch: 'llama', bias: true }],
  ['qwen2 biases bf16', { arch: 'qwen2', dtype: 'bf16' }],
];

describe.each(cases)('%s as GGUF', (_name, options) => {
  let dir: string;
  let file: string;
  let st: Model;
  let gg: Model;
  beforeAll(async () => {
    dir = tinyModel({ seed: 11, ...options });
    file = path.join(path.dirname(dir), 'model.gguf');
    convertToGguf(dir, file);
    st = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
    gg = await loadModel(file, { kvCacheType: 'f32', threads: 2 });
  });
  afterAll(async () => {
    await st?.dispose();
    await gg?.dispose();
  });

  test('the config from GGUF metadata is the config from config.json', () => {
    const pick = (c: Model['config']) => {
      const { configFile: _f, modelType: _m, torchDtype: _t, architecture: _a, ...rest } = c;
      return rest;
    };
    expect(pick(gg.config)).toEqual({
      ...pick(st.config),
      maxPositionEmbeddings: st.config.maxPositionEmbeddings,
      rmsNormEps: Math.fround(st.config.rmsNormEps),
    });
  });

  test('logits equal the safetensors model and match the float64 reference', async () => {
    const tokens = randomTokens(12, 0, st.config.vocabSize, 5);
    const a = await st.evaluate(tokens);
    const b = await gg.evaluate(tokens);
    const want = referenceLogits(loadReference(dir), tokens);
    for (let i = 0; i < tokens.length; i++) {
      expect(Array.from(b.logits[i]!)).toEqual(Array.from(a.logits[i]!));
      expect(relError(b.logits[i]!, want[i]!)).toBeLessThan(TOL_F32);
    }
  });
});

test('a file whose Q/K rows were not permuted gives other logits (so the comparison above can fail)', async () => {
  const dir = tinyModel({ seed: 11, arch: 'llama' });
  const file = path.join(path.dirname(dir), 'unpermuted.gguf');
  convertToGguf(dir, file, { permuteQK: false });
  const st = await loadModel(dir, { kvCacheType: 'f32', threads: 2 });
  const gg = await loadModel(file, { kvCacheType: 'f32', threads: 2 });
  try {
    const tokens = randomTokens(8, 0, st.config.vocabSize, 5);
    const a = await st.evaluate(tokens);
    const b = await gg.evaluate(tokens);
    // Position 0 has no rotation to get wrong; later positions do.
    expect(relError(b.logits[7]!, a.logits[7]!)).toBeGreaterThan(1e-3);
  } finally {
    await st.dispose();
    await gg.dispose();
  }
});

describe('the tokenizer from GGUF metadata', () => {
  let dir: string;
  let file: string;
  beforeAll(() => {
    dir = tinyModel({ seed: 3, vocabSize: 400 });
    file = path.join(path.dirname(dir), 'model.gguf');
    convertToGguf(dir, file);
  });

  test('encodes and decodes like tokenizer.json on many strings', async () => {
    const model = await loadModel(file, { threads: 1 });
    try {
      const hf = Tokenizer.fromDirectory(dir);
      const strings = [
        '',
        ' ',
        'Hello, world!',
        'Good software is tested often and carefully.',
        '  two  spaces  ',
        'tabs\tand\nnewlines\n\n',
        "it's we're they'll I'd",
        '12345 678 9',
        'ünïcödé ß 中文 日本語 🙂',
        '<|eot_id|> special <|begin_of_text|>',
        'a'.repeat(200),
        'mixed CASE words and_underscores-dashes',
        '\u0000\u0001 control',
        'x\r\ny',
      ];
      for (let i = 0; i < 40; i++)
        strings.push(Array.from({ length: 30 }, (_, k) => String.fromCharCode(32 + ((i * 31 + k * 17) % 95))).join(''));
      for (const s of strings) {
        for (const special of [true, false])
          expect(model.tokenize(s, { addSpecialTokens: special })).toEqual(hf.encode(s, special));
        const ids = hf.encode(s, true);
        for (const skip of [true, false])
          expect(model.detokenize(ids, { skipSpecialTokens: skip })).toEqual(hf.decode(ids, skip));
      }
      expect(model.tokenizer.size).toBe(hf.size);
      expect(model.tokenizer.bosTokenId).toBe(hf.bosTokenId);
      expect(model.tokenizer.eosToken).toBe(hf.eosToken);
    } finally {
      await model.dispose();
    }
  });

  test('the chat template comes from tokenizer.chat_template', async () => {
    const model = await loadModel(file, { threads: 1 });
    try {
      const hf = Tokenizer.fromDirectory(dir);
      const messages = [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi there' },
      ];
      expect(model.applyChatTemplate(messages)).toEqual(hf.applyChatTemplate(messages));
    } finally {
      await model.dispose();
    }
  });
});

// ---- malformed files ----

function tinySpec(extra: [string, GgufMetadataValue][] = []): GgufFileSpec {
  return {
    metadata: [['general.architecture', { type: 'string', value: 'llama' }], ...extra],
    tensors: [{ name: 'token_embd.weight', dims: [4, 2], type: 'F32', data: new Uint8Array(32) }],
  };
}

async function expectRefused(file: string, cls: new (...a: never[]) => Error, pattern: RegExp): Promise<void> {
  const err = await loadModel(file).then(
    (m) => (m.dispose(), undefined),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(cls);
  expect((err as Error).message).toMatch(pattern);
  expect((err as { file?: string }).file).toBe(file);
  expect(openedFiles().filter((f) => f === file)).toEqual([]);
}

describe('malformed GGUF files are refused with typed errors', () => {
  let d: string;
  beforeAll(() => {
    d = tmpDir();
  });
  const write = (name: string, bytes: Uint8Array) => {
    const f = path.join(d, name);
    fs.writeFileSync(f, bytes);
    return f;
  };

  test('no magic', async () => {
    await expectRefused(
      write('a.gguf', Buffer.from('NOPE0000000000000000000000')),
      ModelFormatError,
      /not a GGUF file/,
    );
  });
  test('an empty file', async () => {
    await expectRefused(write('b.gguf', new Uint8Array(0)), ModelFormatError, /runs past the end of the file/);
  });
  test('truncated at every length of its header', () => {
    const bytes = ggufBytes(tinySpec());
    for (let n = 0; n < bytes.length; n++) {
      const f = write(`t${n}.gguf`, bytes.subarray(0, n));
      expect(() => readGgufHeader(f)).toThrow(ModelFormatError);
    }
  });
  test('a version that is not 2 or 3 (a big-endian file is named as such)', async () => {
    const b = ggufBytes(tinySpec());
    b.writeUInt32LE(1, 4);
    await expectRefused(write('v1.gguf', b), ModelFormatError, /version 1 is not supported/);
    b.writeUInt32BE(3, 4);
    await expectRefused(write('be.gguf', b), ModelFormatError, /big-endian/);
  });
  test('a tensor count or metadata count beyond the limits', () => {
    const b = ggufBytes(tinySpec());
    b.writeBigUInt64LE(2n ** 40n, 8);
    expect(() => readGgufHeader(write('tc.gguf', b))).toThrow(/tensor count .* exceeds the limit/);
    const c = ggufBytes(tinySpec());
    c.writeBigUInt64LE(2n ** 40n, 16);
    expect(() => readGgufHeader(write('kc.gguf', c))).toThrow(/metadata count .* exceeds the limit/);
  });
  test('a string length past the end of the file names the key', () => {
    const b = ggufBytes(tinySpec());
    // The value of general.architecture: after magic, version, counts, key (8 + 20), type (4).
    b.writeBigUInt64LE(2n ** 50n, 24 + 8 + 20 + 4);
    expect(() => readGgufHeader(write('sl.gguf', b))).toThrow(
      /metadata 'general.architecture' is \d+ bytes long, more than the limit/,
    );
  });
  test('an array longer than the header can hold is refused before anything is allocated', () => {
    const spec = tinySpec([['tokenizer.ggml.scores', { type: 'f32', array: [1, 2, 3] }]]);
    const b = ggufBytes(spec);
    const at = b.indexOf(Buffer.from('tokenizer.ggml.scores')) + 'tokenizer.ggml.scores'.length + 8;
    b.writeBigUInt64LE(2n ** 22n - 1n, at); // within the element limit, far beyond the file
    expect(() => readGgufHeader(write('al.gguf', b))).toThrow(
      /'tokenizer.ggml.scores' declares \d+ elements, more than the header holds/,
    );
  });
  test('an array with more elements than the limit (2^22)', () => {
    const b = ggufBytes(tinySpec([['x.big', { type: 'u8', array: [1, 2] }]]));
    const at = b.indexOf(Buffer.from('x.big')) + 'x.big'.length + 8;
    b.writeBigUInt64LE(2n ** 22n + 1n, at);
    expect(() => readGgufHeader(write('big.gguf', b))).toThrow(
      /'x.big' has 4194305 elements, more than the limit of 4194304/,
    );
  });
  test("a key named __proto__ is an own property, not the metadata's prototype", () => {
    const h = readGgufHeader(
      write('proto.gguf', ggufBytes(tinySpec([['__proto__', { type: 'string', array: ['a', 'b'] }]]))),
    );
    // A plain object's prototype (from the addon's realm), whose own prototype is null; not the array.
    expect(Object.getPrototypeOf(Object.getPrototypeOf(h.metadata))).toBeNull();
    expect(Object.hasOwn(h.metadata, '__proto__')).toBe(true);
    expect(Object.getOwnPropertyDescriptor(h.metadata, '__proto__')!.value).toEqual(['a', 'b']);
  });
  test('an array of arrays', () => {
    const b = ggufBytes(tinySpec([['x.nested', { type: 'u8', array: [1] }]]));
    const at = b.indexOf(Buffer.from('x.nested')) + 'x.nested'.length + 4;
    b.writeUInt32LE(9, at);
    expect(() => readGgufHeader(write('aa.gguf', b))).toThrow(/'x.nested' is an array of arrays/);
  });
  test('a duplicate key, an unknown value type, a bad bool', () => {
    const dup = tinySpec([['general.architecture', { type: 'string', value: 'llama' }]]);
    expect(() => readGgufHeader(write('dk.gguf', ggufBytes(dup)))).toThrow(/'general.architecture' appears twice/);
    const b = ggufBytes(tinySpec([['x.flag', { type: 'bool', value: true }]]));
    const at = b.indexOf(Buffer.from('x.flag')) + 'x.flag'.length;
    b[at + 4] = 7;
    expect(() => readGgufHeader(write('bb.gguf', b))).toThrow(/'x.flag' is a bool with value 7/);
    b.writeUInt32LE(99, at);
    expect(() => readGgufHeader(write('ut.gguf', b))).toThrow(/'x.flag' has unknown value type 99/);
  });
  test('general.alignment that is not a power of two, or not a uint32', () => {
    expect(() => readGgufHeader(write('al3.gguf', ggufBytes({ ...tinySpec(), alignment: 48 })))).toThrow(
      /'general.alignment' is 48, not a power of two/,
    );
    const spec = tinySpec([['general.alignment', { type: 'u64', value: 32 }]]);
    expect(() => readGgufHeader(write('al4.gguf', ggufBytes(spec)))).toThrow(/'general.alignment' must be a uint32/);
  });
  test('a non-default alignment is honoured', () => {
    const f = write('al64.gguf', ggufBytes({ ...tinySpec(), alignment: 64 }));
    const h = readGgufHeader(f);
    expect(h.alignment).toBe(64);
    expect(h.tensors[0]!.offset % 64).toBe(0);
  });
  test('tensor offsets: misaligned, past the end, overlapping; dims and types', () => {
    const two: GgufFileSpec = {
      metadata: [['general.architecture', { type: 'string', value: 'llama' }]],
      tensors: [
        { name: 'a', dims: [8], type: 'F32', data: new Uint8Array(32) },
        { name: 'b', dims: [8], type: 'F32', data: new Uint8Array(32) },
      ],
    };
    const b = ggufBytes(two);
    // Tensor 'b': name (8 + 1), n_dims, dims[0], type, offset.
    const bInfo = b.indexOf(Buffer.from('b'), b.indexOf(Buffer.from('a')) + 1) + 1;
    const bOffset = bInfo + 4 + 8 + 4;
    b.writeBigUInt64LE(4n, bOffset);
    expect(() => readGgufHeader(write('mis.gguf', b))).toThrow(
      /tensor 'b' offset 4 is not a multiple of the alignment 32/,
    );
    b.writeBigUInt64LE(0n, bOffset);
    expect(() => readGgufHeader(write('ov.gguf', b))).toThrow(/tensors 'a' and 'b' overlap/);
    b.writeBigUInt64LE(1024n, bOffset);
    expect(() => readGgufHeader(write('pe.gguf', b))).toThrow(/tensor 'b' .* runs past the end of the data/);
    b.writeBigUInt64LE(32n, bOffset);
    b.writeUInt32LE(77, bOffset - 4);
    expect(() => readGgufHeader(write('ty.gguf', b))).toThrow(/tensor 'b' has unknown ggml type 77/);
    b.writeUInt32LE(8, bOffset - 4); // Q8_0 with 8 elements: not a whole block
    expect(() => readGgufHeader(write('bl.gguf', b))).toThrow(
      /tensor 'b' of type Q8_0 has a first dimension that is not a multiple of its block of 32/,
    );
    b.writeUInt32LE(5, bInfo);
    expect(() => readGgufHeader(write('nd.gguf', b))).toThrow(/tensor 'b' has 5 dimensions/);
  });
  test('an unsupported architecture, a missing key, a quantized tensor', async () => {
    const dir = tinyModel({ seed: 1 });
    const good = path.join(d, 'good.gguf');
    convertToGguf(dir, good);
    const spec = (patch: (s: GgufFileSpec) => void): string => {
      const s = specFromFile(good);
      patch(s);
      const f = path.join(d, `p${Math.random().toString(36).slice(2)}.gguf`);
      writeGguf(f, s);
      return f;
    };
    await expectRefused(
      spec((s) => (s.metadata.find(([k]) => k === 'general.architecture')![1] = { type: 'string', value: 'gemma' })),
      UnsupportedModelError,
      /GGUF architecture 'gemma' is not supported/,
    );
    await expectRefused(
      spec((s) => (s.metadata = s.metadata.filter(([k]) => k !== 'llama.block_count'))),
      ModelFormatError,
      /GGUF metadata 'llama.block_count' is missing/,
    );
    await expectRefused(
      spec((s) => (s.metadata.find(([k]) => k === 'llama.embedding_length')![1] = { type: 'string', value: '64' })),
      ModelFormatError,
      /GGUF metadata 'llama.embedding_length' must be an integer, got a string/,
    );
    await expectRefused(
      spec((s) =>
        s.tensors.splice(
          s.tensors.findIndex((t) => t.name === 'blk.1.ffn_up.weight'),
          1,
        ),
      ),
      ModelFormatError,
      /missing tensor 'model.layers.1.mlp.up_proj.weight'/,
    );
  });
  test('Q8_0 tensors load and compute as the same weights quantized on load; Q5_K is refused, naming it', async () => {
    const dir = tinyModel({ seed: 1, vocabSize: 320, intermediate: 256 }); // f32; ffn_down 256 wide: one Q4_K block a row
    const f32File = path.join(d, 'f32.gguf');
    convertToGguf(dir, f32File);
    const s = specFromFile(f32File);
    // What quantize-on-load turns into Q8_0: the decoder projections and the LM head (untied here).
    const quantized =
      /^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$|^output\.weight$/;
    let n = 0;
    for (const t of s.tensors) {
      if (!quantized.test(t.name)) continue;
      expect(t.type).toBe('F32');
      const src = new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
      t.type = 'Q8_0';
      t.data = q8Blocks(src);
      n++;
    }
    expect(n).toBe(2 * 7 + 1);
    const q8File = path.join(d, 'q8.gguf');
    writeGguf(q8File, s);
    const tokens = randomTokens(12, 3, 320, 5);
    const fromGguf = await loadModel(q8File, { kvCacheType: 'f32', threads: 2 });
    const onLoad = await loadModel(dir, { kvCacheType: 'f32', threads: 2, weights: 'q8_0' });
    const plain = await loadModel(f32File, { kvCacheType: 'f32', threads: 2 });
    try {
      const a = await fromGguf.evaluate(tokens);
      const b = await onLoad.evaluate(tokens);
      const c = await plain.evaluate(tokens);
      for (let p = 0; p < tokens.length; p++) {
        // llama.cpp's rounding in both: the same blocks, so the same logits up to f32 summation order.
        expect(relError(a.logits[p]!, b.logits[p]!)).toBeLessThan(1e-5);
        // ...and quantization really happened (Q8_0 against f32 differs by far more than that).
        expect(relError(a.logits[p]!, c.logits[p]!)).toBeGreaterThan(1e-4);
      }
    } finally {
      await fromGguf.dispose();
      await onLoad.dispose();
      await plain.dispose();
    }
    // A K-quant other than Q4_K and Q6_K (Q5_K, ggml type 13) is not computed: refused, naming the
    // tensor and the type.
    const k = specFromFile(f32File);
    const t = k.tensors.find((x) => x.name === 'blk.0.ffn_down.weight')!;
    const elements = t.dims.reduce((x, y) => x * y, 1);
    t.type = 'Q5_K';
    t.data = new Uint8Array((elements / 256) * 176);
    const kFile = path.join(d, 'q5k.gguf');
    writeGguf(kFile, k);
    await expectRefused(
      kFile,
      UnsupportedModelError,
      /tensor 'blk.0.ffn_down.weight' has ggml type Q5_K, which depthgate does not compute with \(.*Q4_K and Q6_K load\)/,
    );
  });
  test.each(['q4_k', 'q6_k'] as const)(
    'a %s GGUF (llama.cpp reference quantizer) computes as its dequantized weights and as quantizing on load',
    async (weights) => {
      // 256 wide, 2 layers (llama: Q/K rows permuted in the file), untied: Q4_K_M's layer 1 v and down are Q6_K.
      const dir = tinyModel({ seed: 2, hidden: 256, intermediate: 256, layers: 2, vocabSize: 320 });
      const kFile = path.join(d, `${weights}.gguf`);
      convertToGguf(dir, kFile, { weights, quantizeEmbedding: true });
      const spec = specFromFile(kFile);
      // The same K-quant file with token_embd in F32, to compare with quantization on load (which keeps it).
      const plainFile = path.join(d, `${weights}-plain.gguf`);
      convertToGguf(dir, plainFile);
      const spec2 = specFromFile(kFile);
      const embd = spec2.tensors.findIndex((x) => x.name === 'token_embd.weight');
      spec2.tensors[embd] = specFromFile(plainFile).tensors.find((x) => x.name === 'token_embd.weight')!;
      const kFile2 = path.join(d, `${weights}-embd-f32.gguf`);
      writeGguf(kFile2, spec2);
      const typeOf = (n: string) => spec.tensors.find((x) => x.name === n)!.type;
      const base = weights === 'q4_k' ? 'Q4_K' : 'Q6_K';
      expect(typeOf('token_embd.weight')).toBe(base);
      expect(typeOf('output.weight')).toBe('Q6_K');
      expect(typeOf('blk.0.attn_q.weight')).toBe(base);
      expect(typeOf('blk.0.attn_v.weight')).toBe(base);
      expect(typeOf('blk.1.attn_v.weight')).toBe('Q6_K');
      expect(typeOf('blk.1.ffn_down.weight')).toBe('Q6_K');
      expect(typeOf('blk.0.attn_norm.weight')).toBe('F32');
      // The same file with every K-quant tensor replaced by its dequantized values in F32.
      for (const t of spec.tensors) {
        if (t.type !== 'Q4_K' && t.type !== 'Q6_K') continue;
        const values = dequantizeKQuant(t.type, t.data);
        t.type = 'F32';
        t.data = new Uint8Array(values.buffer);
      }
      const deqFile = path.join(d, `${weights}-dequantized.gguf`);
      writeGguf(deqFile, spec);
      const tokens = randomTokens(12, 3, 320, 6);
      const fromK = await loadModel(kFile, { kvCacheType: 'f32', threads: 2 });
      const fromDeq = await loadModel(deqFile, { kvCacheType: 'f32', threads: 2 });
      const fromK2 = await loadModel(kFile2, { kvCacheType: 'f32', threads: 2 });
      const onLoad = await loadModel(dir, { kvCacheType: 'f32', threads: 2, weights });
      try {
        expect(fromK.info.dtype).toBe(weights === 'q4_k' ? 'F32+Q4_K+Q6_K' : 'F32+Q6_K');
        const a = await fromK.evaluate(tokens);
        const b = await fromDeq.evaluate(tokens);
        const c = await fromK2.evaluate(tokens);
        const e = await onLoad.evaluate(tokens);
        let vsDeq = 0;
        for (let p = 0; p < tokens.length; p++) {
          // Same weights; the K-quant kernels round the matmul inputs to int8 (256-wide blocks), the
          // F32 ones do not: that rounding is all that is left (measured 3.1e-2 and 3.3e-2).
          vsDeq = Math.max(vsDeq, relError(a.logits[p]!, b.logits[p]!));
          // The same blocks, written by the TypeScript port of llama.cpp's quantizer and by the
          // engine's own: the same logits up to f32 summation order.
          expect(relError(c.logits[p]!, e.logits[p]!)).toBeLessThan(1e-5);
        }
        console.log(`${weights} GGUF vs its dequantized weights in F32: ${vsDeq.toExponential(2)}`);
        expect(vsDeq).toBeLessThan(5e-2);
      } finally {
        await fromK.dispose();
        await fromDeq.dispose();
        await fromK2.dispose();
        await onLoad.dispose();
      }
    },
    120000,
  );
  test('a GGUF path that does not exist, or is a directory', async () => {
    await expectRefused(path.join(d, 'missing.gguf'), ModelFileError, /does not exist/);
    fs.mkdirSync(path.join(d, 'dir.gguf'));
    await expectRefused(path.join(d, 'dir.gguf'), ModelFileError, /not a regular file/);
  });
});

describe("convertToGguf's Q8_0 (convert_hf_to_gguf.py --outtype q8_0)", () => {
  const f32Of = (t: GgufTensor) =>
    new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
  test('every 2-D tensor is in llama.cpp Q8_0 blocks, norms stay F32, and it computes as the weights quantized on load', async () => {
    const dir = tinyModel({ seed: 3, vocabSize: 320, intermediate: 256 }); // f32, every row a multiple of 32
    const d = path.dirname(dir);
    const f32File = path.join(d, 'f32.gguf');
    const q8File = path.join(d, 'q8.gguf');
    convertToGguf(dir, f32File);
    convertToGguf(dir, q8File, { type: 'Q8_0' });
    const plain = specFromFile(f32File);
    const q8 = specFromFile(q8File);
    expect(q8.tensors.map((t) => t.name)).toEqual(plain.tensors.map((t) => t.name));
    let blocks = 0;
    for (const t of q8.tensors) {
      const p = plain.tensors.find((x) => x.name === t.name)!;
      expect(t.dims).toEqual(p.dims);
      if (p.dims.length === 1) {
        expect([t.name, t.type]).toEqual([t.name, 'F32']);
        expect(Buffer.from(t.data).equals(Buffer.from(p.data))).toBe(true);
        continue;
      }
      expect([t.name, t.type]).toEqual([t.name, 'Q8_0']);
      // the Q/K rows are permuted before quantizing; a block never spans rows, so the order does not matter
      expect(Buffer.from(t.data).equals(Buffer.from(q8Blocks(f32Of(p))))).toBe(true);
      blocks++;
    }
    expect(blocks).toBe(2 * 7 + 2); // projections, the embedding table and the LM head
    // Quantize-on-load keeps the embedding table as stored: with the f32 table put back, the file
    // holds exactly the blocks it computes with (the permuted Q/K rows included).
    const mixed = specFromFile(q8File);
    mixed.tensors.find((t) => t.name === 'token_embd.weight')!.type = 'F32';
    mixed.tensors.find((t) => t.name === 'token_embd.weight')!.data = plain.tensors.find(
      (t) => t.name === 'token_embd.weight',
    )!.data;
    const mixedFile = path.join(d, 'q8-f32-embedding.gguf');
    writeGguf(mixedFile, mixed);
    const tokens = randomTokens(12, 3, 320, 7);
    const fromGguf = await loadModel(q8File, { kvCacheType: 'f32', threads: 2 });
    const fromMixed = await loadModel(mixedFile, { kvCacheType: 'f32', threads: 2 });
    const onLoad = await loadModel(dir, { kvCacheType: 'f32', threads: 2, weights: 'q8_0' });
    const exact = await loadModel(f32File, { kvCacheType: 'f32', threads: 2 });
    try {
      const a = await fromGguf.evaluate(tokens);
      const m = await fromMixed.evaluate(tokens);
      const b = await onLoad.evaluate(tokens);
      const c = await exact.evaluate(tokens);
      for (let p = 0; p < tokens.length; p++) {
        expect(relError(m.logits[p]!, b.logits[p]!)).toBeLessThan(1e-5);
        // the whole Q8_0 file: 8-bit weights everywhere, near the f32 model but not equal to it
        const e = relError(a.logits[p]!, c.logits[p]!);
        expect(e).toBeLessThan(5e-2);
        expect(e).toBeGreaterThan(1e-4);
      }
    } finally {
      await fromGguf.dispose();
      await fromMixed.dispose();
      await onLoad.dispose();
      await exact.dispose();
    }
  });
  test('a tensor whose rows are not whole blocks of 32 is written as F16, as the converter falls back', () => {
    const dir = tinyModel({ seed: 4, vocabSize: 320, intermediate: 48 }); // ffn_down rows: 48 values
    const file = path.join(path.dirname(dir), 'q8.gguf');
    convertToGguf(dir, file, { type: 'Q8_0' });
    const types = new Map(readGgufHeader(file).tensors.map((t) => [t.name, t.type]));
    expect(types.get('blk.0.ffn_down.weight')).toBe('F16');
    expect(types.get('blk.0.ffn_up.weight')).toBe('Q8_0');
    expect(types.get('token_embd.weight')).toBe('Q8_0');
    expect(types.get('blk.0.attn_norm.weight')).toBe('F32');
  });
});

/** A writer spec holding what a GGUF file holds (metadata with their types, tensors with their bytes). */
function specFromFile(file: string): GgufFileSpec {
  const h = readGgufHeader(file);
  const bytes = fs.readFileSync(file);
  const metadata: [string, GgufMetadataValue][] = Object.entries(h.metadata).map(([k, v]) => {
    const type = h.metadataTypes[k]!;
    const scalar = (t: string) =>
      ({
        uint8: 'u8',
        int8: 'i8',
        uint16: 'u16',
        int16: 'i16',
        uint32: 'u32',
        int32: 'i32',
        float32: 'f32',
        bool: 'bool',
        string: 'string',
        uint64: 'u64',
        int64: 'i64',
        float64: 'f64',
      })[t] as GgufMetadataValue['type'];
    const m = /^array\[(.+)\]$/.exec(type);
    return [
      k,
      m
        ? { type: scalar(m[1]!), array: Array.from(v as ArrayLike<number>) }
        : { type: scalar(type), value: v as number },
    ];
  });
  // ggufBytes pads every tensor to the alignment, so the data section ends with the file.
  const last = h.tensors.reduce((a, t) => Math.max(a, t.offset + t.bytes), 0);
  const base = bytes.length - Math.ceil(last / h.alignment) * h.alignment;
  return {
    metadata: metadata.filter(([k]) => k !== 'general.alignment'),
    tensors: h.tensors.map((t) => ({
      name: t.name,
      dims: t.dims,
      type: t.type as GgufTensorType,
      data: bytes.subarray(base + t.offset, base + t.offset + t.bytes),
    })),
  };
}

test.each([
  ['flexidepth', { flexidepth: { layers: [1, 2], addonFile: 'flexidepth.safetensors' } }, 'flexidepth.safetensors'],
  [
    'skiplayer',
    { skiplayer: { mode: 'module' as const, addonFile: 'skiplayer.safetensors' } },
    'skiplayer.safetensors',
  ],
])(
  '%s add-on (safetensors) on a GGUF base gives the logits it gives on the safetensors base',
  async (policy, opts, addon) => {
    const dir = tinyModel({ seed: 13, layers: 3, ...opts });
    const file = path.join(dir, 'model.gguf');
    convertToGguf(dir, file);
    const addonPath = path.join(dir, addon); // a relative add-on path would be taken from the working directory
    const st = await loadModel(dir, { kvCacheType: 'f32', threads: 2, addons: [addonPath] });
    const gg = await loadModel(file, { kvCacheType: 'f32', threads: 2, addons: [addonPath] });
    try {
      const tokens = randomTokens(10, 0, st.config.vocabSize, 9);
      const a = await st.evaluate(tokens, { policy: { type: policy as 'flexidepth' } });
      const b = await gg.evaluate(tokens, { policy: { type: policy as 'flexidepth' } });
      for (let i = 0; i < tokens.length; i++) expect(Array.from(b.logits[i]!)).toEqual(Array.from(a.logits[i]!));
    } finally {
      await st.dispose();
      await gg.dispose();
    }
  },
);

test('Llama 3 RoPE scaling travels as rope_freqs.weight (as llama.cpp converts it) and matches the reference', async () => {
  const dir = tinyModel({ seed: 17, arch: 'llama', ropeScaling: 'llama3', ropeTheta: 500000 });
  const file = path.join(path.dirname(dir), 'model.gguf');
  convertToGguf(dir, file);
  expect(readGgufHeader(file).tensors.some((t) => t.name === 'rope_freqs.weight')).toBe(true);
  const gg = await loadModel(file, { kvCacheType: 'f32', threads: 2 });
  try {
    expect(gg.config.ropeType).toBe('default');
    const tokens = randomTokens(40, 0, gg.config.vocabSize, 2);
    const got = await gg.evaluate(tokens);
    const want = referenceLogits(loadReference(dir), tokens);
    for (let i = 0; i < tokens.length; i++) expect(relError(got.logits[i]!, want[i]!)).toBeLessThan(TOL_F32);
  } finally {
    await gg.dispose();
  }
});

test('the CLI runs a GGUF file: logits --json equal those of the model directory', () => {
  const dir = tinyModel({ seed: 19, arch: 'llama', dtype: 'bf16' });
  const file = path.join(path.dirname(dir), 'model.gguf');
  convertToGguf(dir, file);
  const cli = path.join(__dirname, '..', 'dist', 'cli.js');
  const run = (m: string) =>
    spawnSync(process.execPath, [cli, 'logits', m, '--tokens', '5,17,200,3', '--json', '--kv-cache', 'f32'], {
      encoding: 'utf8',
      timeout: 60000,
    });
  const a = run(dir);
  const b = run(file);
  expect(b.status).toBe(0);
  expect(JSON.parse(b.stdout)).toEqual(JSON.parse(a.stdout));
  const gen = spawnSync(process.execPath, [cli, 'generate', file, '--prompt', 'Once upon', '--max-tokens', '6'], {
    encoding: 'utf8',
    timeout: 60000,
  });
  const genDir = spawnSync(process.execPath, [cli, 'generate', dir, '--prompt', 'Once upon', '--max-tokens', '6'], {
    encoding: 'utf8',
    timeout: 60000,
  });
  expect(gen.status).toBe(0);
  expect(gen.stdout).toBe(genDir.stdout);
});

/** llama.cpp's quantize_row_q8_0_ref over rows of 32-blocks (f32 arithmetic, roundf, an f16 scale). */
function q8Blocks(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / 32) * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
    const dd = Math.fround(amax / 127);
    const id = dd !== 0 ? Math.fround(1 / dd) : 0;
    view.setUint16(b * 34, float32ToFloat16Bits(dd), true);
    for (let j = 0; j < 32; j++) {
      const v = Math.fround(x[b * 32 + j]! * id);
      view.setInt8(b * 34 + 2 + j, Math.sign(v) * Math.round(Math.abs(v)));
    }
  }
  return out;
}
