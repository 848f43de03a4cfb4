/**
 * Bad input: broken checkpoints (safetensors, sharding index, config.json, tokenizer), prompts that
 * do not fit, options of the wrong type, bad token ids and use after dispose. Every case must give
 * its typed error with a message that names the file (or option) and the reason, leave the process
 * alive, and — for load failures — leave nothing of the model directory mapped or open, after which
 * a good model still loads and runs.
 *
 * Broken checkpoints are made by writing a good tiny model and rewriting its files with node:fs.
 *
 * Regression tests for bugs this suite found (all fixed):
 *  - realm: errors made by the addon fail `instanceof Error` in another realm (jest, vm), so
 *    fromNative() recognises them by shape;
 *  - disposed: ERR_DEPTHGATE_DISPOSED from the addon maps to DisposedError;
 *  - overlap: an empty tensor between two overlapping tensors no longer hides the overlap.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vm from 'node:vm';
import {
  AbortError,
  BackendUnavailableError,
  ContextOverflowError,
  getBuildInfo,
  DepthgateError,
  DisposedError,
  InvalidOptionError,
  ModelFileError,
  ModelFormatError,
  UnsupportedModelError,
  loadModel,
  parsePolicy,
  type Model,
} from '../src';
import { ERROR_CODES, fromNative } from '../src/errors';
import { cleanup, openedFiles, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

interface StEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}
type StHeader = Record<string, unknown>;

/** The parts of a safetensors file: its JSON header (parsed) and its data section. */
function readSt(file: string): { header: StHeader; data: Buffer; headerLen: number } {
  const buf = fs.readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as StHeader;
  return { header, data: buf.subarray(8 + headerLen), headerLen };
}

/** Writes a safetensors file from a header (object or raw text, space-padded to 8 bytes) and data. */
function writeSt(file: string, header: StHeader | string, data: Buffer, headerLenOverride?: bigint): void {
  let text = typeof header === 'string' ? header : JSON.stringify(header);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const h = Buffer.from(text, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(headerLenOverride ?? BigInt(h.length));
  fs.writeFileSync(file, Buffer.concat([prefix, h, data]));
}

/** Edits the header in place (data unchanged). */
function editHeader(file: string, edit: (h: StHeader) => void): void {
  const { header, data } = readSt(file);
  edit(header);
  writeSt(file, header, data);
}

interface Tensor {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** Rebuilds a safetensors file from a list of tensors (edited by `edit`), with consecutive offsets. */
function rebuild(file: string, edit: (tensors: Tensor[]) => Tensor[]): void {
  const { header, data } = readSt(file);
  let tensors: Tensor[] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = v as StEntry;
    tensors.push({ name, dtype: e.dtype, shape: e.shape, bytes: data.subarray(e.data_offsets[0], e.data_offsets[1]) });
  }
  tensors = edit(tensors);
  const out: StHeader = { __metadata__: header.__metadata__ ?? { format: 'pt' } };
  let off = 0;
  for (const t of tensors) {
    out[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.bytes.length] };
    off += t.bytes.length;
  }
  writeSt(file, out, Buffer.concat(tensors.map((t) => t.bytes)));
}

function entry(h: StHeader, name: string): StEntry {
  const e = h[name] as StEntry | undefined;
  if (!e) throw new Error(`test bug: no tensor ${name}`);
  return e;
}

function editJson(file: string, edit: (o: Record<string, unknown>) => void): void {
  const o = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(o);
  fs.writeFileSync(file, JSON.stringify(o, null, 2));
}

const st = (dir: string): string => path.join(dir, 'model.safetensors');
const cfg = (dir: string): string => path.join(dir, 'config.json');
const indexFile = (dir: string): string => path.join(dir, 'model.safetensors.index.json');

/** Paths of the process's open or mapped files that lie inside `dir`. */
function leftOpen(dir: string): string[] {
  const roots = [path.resolve(dir), fs.existsSync(dir) ? fs.realpathSync(dir) : path.resolve(dir)];
  return openedFiles().filter((p) => roots.some((r) => p === r || p.startsWith(r + path.sep)));
}

let goodDir: string;
beforeAll(() => {
  goodDir = tinyModel({ seed: 3 });
});

/** A good model still loads and generates. */
async function goodModelWorks(): Promise<void> {
  const m = await loadModel(goodDir, { threads: 1 });
  try {
    const r = await m.generate({ tokens: [1, 2, 3] }, { maxTokens: 2, stopOnEos: false });
    expect(r.tokens).toHaveLength(2);
  } finally {
    await m.dispose();
  }
}

interface Expected {
  cls: abstract new (...args: never[]) => Error;
  message: RegExp;
  /** The error's `file`, when it must name one. */
  file?: string;
}

/**
 * Loads `dir` expecting the failure described, then checks nothing inside `dir` is left mapped
 * or open and that a good model still loads.
 */
async function expectLoadFailure(
  dir: string,
  want: Expected,
  options?: Parameters<typeof loadModel>[1],
): Promise<Error> {
  let err: unknown;
  let model: Model | undefined;
  try {
    model = await loadModel(dir, { threads: 1, ...options });
  } catch (e) {
    err = e;
  }
  if (model) {
    await model.dispose();
    throw new Error(`loadModel(${dir}) succeeded; expected ${want.cls.name} matching ${want.message}`);
  }
  expect(err).toBeInstanceOf(want.cls);
  const e = err as DepthgateError;
  expect(e.message).toMatch(want.message);
  expect(typeof e.code).toBe('string');
  if (want.file !== undefined) {
    expect(e.file).toBe(want.file);
    expect(e.message).toContain(want.file);
  }
  expect(leftOpen(dir)).toEqual([]);
  await goodModelWorks();
  return e;
}

// ---------------------------------------------------------------------------------------------
// model.safetensors: truncation and header length
// ---------------------------------------------------------------------------------------------

describe('truncated model.safetensors', () => {
  test('cut in the data section', async () => {
    const dir = tinyModel();
    const buf = fs.readFileSync(st(dir));
    fs.writeFileSync(st(dir), buf.subarray(0, buf.length - 1000));
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /past the end of the data|truncated/,
      file: st(dir),
    });
  });

  test('cut inside the header', async () => {
    const dir = tinyModel();
    const buf = fs.readFileSync(st(dir));
    const hlen = Number(buf.readBigUInt64LE(0));
    fs.writeFileSync(st(dir), buf.subarray(0, 8 + Math.floor(hlen / 2)));
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /header length \d+ runs past the end of the file/,
      file: st(dir),
    });
  });

  test('shorter than 8 bytes', async () => {
    const dir = tinyModel();
    fs.writeFileSync(st(dir), Buffer.from([1, 2, 3, 4, 5]));
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /truncated.*5 bytes/, file: st(dir) });
  });

  test('empty file', async () => {
    const dir = tinyModel();
    fs.writeFileSync(st(dir), Buffer.alloc(0));
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /truncated.*0 bytes/, file: st(dir) });
  });
});

describe('header length', () => {
  test('past the end of the file', async () => {
    const dir = tinyModel();
    const buf = fs.readFileSync(st(dir));
    buf.writeBigUInt64LE(BigInt(buf.length - 7), 0);
    fs.writeFileSync(st(dir), buf);
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /header length \d+ runs past the end of the file/,
      file: st(dir),
    });
  });

  test.each([
    ['2^63', 2n ** 63n],
    ['2^63 + 12345', 2n ** 63n + 12345n],
    ['2^64 - 1', 2n ** 64n - 1n],
  ])('absurdly large (%s)', async (_n, len) => {
    const dir = tinyModel();
    const buf = fs.readFileSync(st(dir));
    buf.writeBigUInt64LE(len, 0);
    fs.writeFileSync(st(dir), buf);
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: new RegExp(`header length ${len} runs past the end`),
      file: st(dir),
    });
  });
});

// ---------------------------------------------------------------------------------------------
// model.safetensors: header content
// ---------------------------------------------------------------------------------------------

describe('safetensors header', () => {
  test.each([
    ['plain text', 'this is not json at all'],
    ['unterminated object', '{"model.norm.weight": {"dtype": "F32"'],
    ['trailing garbage', '{"__metadata__": {"format": "pt"}} xyz'],
  ])('not JSON (%s)', async (_what, text) => {
    const dir = tinyModel();
    const { data } = readSt(st(dir));
    writeSt(st(dir), text, data);
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /invalid safetensors header/, file: st(dir) });
  });

  test.each([0, 1])('header length %i (empty header)', async (len) => {
    const dir = tinyModel();
    const buf = fs.readFileSync(st(dir));
    buf.writeBigUInt64LE(BigInt(len), 0);
    fs.writeFileSync(st(dir), buf);
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /header is empty/, file: st(dir) });
  });

  test('__metadata__ with a non-string value', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      h.__metadata__ = { format: 'pt', total: 5 };
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /__metadata__ value 'total' is not a string/,
      file: st(dir),
    });
  });

  test.each([
    ['an array', '[1, 2, 3]'],
    ['a string', '"hello"'],
    ['a number', '12345678'],
  ])('JSON but not an object (%s)', async (_what, text) => {
    const dir = tinyModel();
    const { data } = readSt(st(dir));
    writeSt(st(dir), text, data);
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /invalid safetensors header: header is not a JSON object/,
      file: st(dir),
    });
  });

  test.each([
    ['dtype', /tensor 'model\.norm\.weight' has no dtype/],
    ['shape', /tensor 'model\.norm\.weight' has no shape/],
    ['data_offsets', /tensor 'model\.norm\.weight' has no data_offsets/],
  ])('tensor entry missing %s', async (key, message) => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      delete (entry(h, 'model.norm.weight') as unknown as Record<string, unknown>)[key];
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message, file: st(dir) });
  });

  test('data_offsets out of range', async () => {
    const dir = tinyModel();
    const { data } = readSt(st(dir));
    editHeader(st(dir), (h) => {
      const e = entry(h, 'model.norm.weight');
      const n = e.data_offsets[1] - e.data_offsets[0];
      e.data_offsets = [data.length, data.length + n];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' data_offsets end \d+ is past the end of the data/,
      file: st(dir),
    });
  });

  test('data_offsets begin > end', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      const e = entry(h, 'model.norm.weight');
      e.data_offsets = [e.data_offsets[1], e.data_offsets[0]];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' has data_offsets with begin > end/,
      file: st(dir),
    });
  });

  test('data_offsets negative', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      const e = entry(h, 'model.norm.weight');
      e.data_offsets = [-256, 0];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' has invalid data_offsets/,
      file: st(dir),
    });
  });

  test('two tensors overlapping', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      const a = entry(h, 'model.layers.0.input_layernorm.weight');
      const b = entry(h, 'model.layers.1.input_layernorm.weight');
      b.data_offsets = [a.data_offsets[0], a.data_offsets[1]];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensors '.*input_layernorm\.weight' and '.*input_layernorm\.weight' overlap/,
      file: st(dir),
    });
  });

  test('two tensors partly overlapping', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      const a = entry(h, 'model.layers.0.input_layernorm.weight');
      const b = entry(h, 'model.layers.1.input_layernorm.weight');
      b.data_offsets = [a.data_offsets[0] + 8, a.data_offsets[1] + 8];
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /overlap/, file: st(dir) });
  });

  // Regression (overlap): the overlap check in native/safetensors.cc used to compare
  // each tensor only with its predecessor in offset order and skip pairs where either was empty,
  // so an empty tensor sorted between two overlapping ones hides the overlap.
  test('two tensors overlapping, with an empty tensor between them', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      // b (256 bytes) lies wholly inside a (80 KiB); an empty tensor, of a name the loader ignores,
      // starts inside a just before b.
      const a = entry(h, 'model.embed_tokens.weight');
      const b = entry(h, 'model.norm.weight');
      const a0 = a.data_offsets[0];
      h['model.layers.0.self_attn.rotary_emb.inv_freq'] = { dtype: 'F32', shape: [0], data_offsets: [a0 + 4, a0 + 4] };
      b.data_offsets = [a0 + 8, a0 + 8 + 256];
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /overlap/, file: st(dir) });
  });

  test('unknown dtype Q4', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      entry(h, 'model.norm.weight').dtype = 'Q4';
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' has unknown dtype 'Q4'/,
      file: st(dir),
    });
  });

  test.each(['I64', 'F64', 'U8', 'F8_E4M3'])('safetensors dtype %s that depthgate does not support', async (dtype) => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      entry(h, 'model.norm.weight').dtype = dtype;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: new RegExp(`tensor 'model\\.norm\\.weight' has dtype ${dtype}, which depthgate does not support`),
      file: st(dir),
    });
  });

  test('shape that does not match the byte count', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      entry(h, 'model.norm.weight').shape = [65];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' shape needs 260 bytes but data_offsets cover 256/,
      file: st(dir),
    });
  });

  test.each([
    ['negative', [-64]],
    ['fractional', [64.5]],
    ['a string', ['64']],
  ])('shape dimension %s', async (_what, shape) => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      (entry(h, 'model.norm.weight') as unknown as { shape: unknown }).shape = shape;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' has an invalid shape dimension/,
      file: st(dir),
    });
  });

  test('shape whose element count overflows', async () => {
    const dir = tinyModel();
    editHeader(st(dir), (h) => {
      entry(h, 'model.norm.weight').shape = [2 ** 39, 2 ** 39, 2 ** 39];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' is too large/,
      file: st(dir),
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Tensor set against config.json
// ---------------------------------------------------------------------------------------------

describe('tensors against the config', () => {
  test('a missing tensor', async () => {
    const dir = tinyModel();
    rebuild(st(dir), (ts) => ts.filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight'));
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'/,
      file: st(dir),
    });
  });

  test('an extra tensor', async () => {
    const dir = tinyModel();
    rebuild(st(dir), (ts) => [
      ...ts,
      { name: 'model.layers.0.foo.weight', dtype: 'F32', shape: [4, 4], bytes: Buffer.alloc(64) },
    ]);
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /unexpected tensor 'model\.layers\.0\.foo\.weight' that config\.json does not account for/,
      file: st(dir),
    });
  });

  test('a tensor with the wrong shape for the config', async () => {
    const dir = tinyModel();
    rebuild(st(dir), (ts) =>
      ts.map((t) => (t.name === 'model.layers.0.self_attn.k_proj.weight' ? { ...t, shape: [64, 32] } : t)),
    );
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message:
        /tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[64, 32\], expected \[32, 64\] from config\.json/,
      file: st(dir),
    });
  });

  test('a tensor with too few elements for the config', async () => {
    const dir = tinyModel();
    rebuild(st(dir), (ts) =>
      ts.map((t) => (t.name === 'model.norm.weight' ? { ...t, shape: [32], bytes: t.bytes.subarray(0, 128) } : t)),
    );
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' has shape \[32\], expected \[64\]/,
      file: st(dir),
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints
// ---------------------------------------------------------------------------------------------

function shardOf(dir: string, tensor: string): string {
  const idx = JSON.parse(fs.readFileSync(indexFile(dir), 'utf8')) as { weight_map: Record<string, string> };
  return idx.weight_map[tensor]!;
}

describe('sharded checkpoint', () => {
  test('the good sharded model loads', async () => {
    const dir = tinyModel({ shards: 3 });
    const m = await loadModel(dir, { threads: 1 });
    expect(m.info.files).toHaveLength(3);
    await m.dispose();
    expect(leftOpen(dir)).toEqual([]);
  });

  test('a shard listed in the index is missing', async () => {
    const dir = tinyModel({ shards: 3 });
    const missing = path.join(dir, 'model-00002-of-00003.safetensors');
    fs.rmSync(missing);
    await expectLoadFailure(dir, {
      cls: ModelFileError,
      message: /shard listed in model\.safetensors\.index\.json is missing/,
      file: missing,
    });
  });

  test('the index lists a tensor in the wrong shard', async () => {
    const dir = tinyModel({ shards: 3 });
    const t = 'model.norm.weight';
    const real = shardOf(dir, t);
    const wrong =
      real === 'model-00001-of-00003.safetensors'
        ? 'model-00002-of-00003.safetensors'
        : 'model-00001-of-00003.safetensors';
    editJson(indexFile(dir), (o) => {
      (o.weight_map as Record<string, string>)[t] = wrong;
    });
    const e = await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message:
        /the index puts tensor 'model\.norm\.weight' in .*model-0000\d-of-00003\.safetensors but it is in .*model-0000\d-of-00003\.safetensors/,
      file: indexFile(dir),
    });
    expect(e.message).toContain(wrong);
    expect(e.message).toContain(real);
  });

  test('the index does not list a tensor that a shard holds', async () => {
    const dir = tinyModel({ shards: 3 });
    editJson(indexFile(dir), (o) => {
      delete (o.weight_map as Record<string, string>)['model.norm.weight'];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.norm\.weight' in .* is not listed in the index/,
      file: indexFile(dir),
    });
  });

  test('the index lists a tensor that no shard holds', async () => {
    const dir = tinyModel({ shards: 3 });
    editJson(indexFile(dir), (o) => {
      (o.weight_map as Record<string, string>)['model.layers.0.ghost.weight'] = 'model-00001-of-00003.safetensors';
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message:
        /tensor 'model\.layers\.0\.ghost\.weight' is listed in the index but missing from .*model-00001-of-00003\.safetensors/,
      file: indexFile(dir),
    });
  });

  test('a tensor missing from its shard (and from the index)', async () => {
    const dir = tinyModel({ shards: 3 });
    const t = 'model.layers.1.mlp.up_proj.weight';
    const shard = path.join(dir, shardOf(dir, t));
    rebuild(shard, (ts) => ts.filter((x) => x.name !== t));
    editJson(indexFile(dir), (o) => {
      delete (o.weight_map as Record<string, string>)[t];
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'/,
    });
  });

  test('a tensor in two shards', async () => {
    const dir = tinyModel({ shards: 3 });
    const t = 'model.norm.weight';
    const real = path.join(dir, shardOf(dir, t));
    const { header, data } = readSt(real);
    const e = entry(header, t);
    const bytes = data.subarray(e.data_offsets[0], e.data_offsets[1]);
    const other = path.join(
      dir,
      path.basename(real) === 'model-00001-of-00003.safetensors'
        ? 'model-00002-of-00003.safetensors'
        : 'model-00001-of-00003.safetensors',
    );
    rebuild(other, (ts) => [...ts, { name: t, dtype: e.dtype, shape: e.shape, bytes }]);
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /tensor 'model\.norm\.weight' appears in both/ });
  });

  test('a corrupt shard', async () => {
    const dir = tinyModel({ shards: 3 });
    const shard = path.join(dir, 'model-00003-of-00003.safetensors');
    const buf = fs.readFileSync(shard);
    fs.writeFileSync(shard, buf.subarray(0, buf.length - 100));
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /past the end of the data/, file: shard });
  });

  test('index not JSON', async () => {
    const dir = tinyModel({ shards: 3 });
    fs.writeFileSync(indexFile(dir), '{"metadata": {"total_size": 1}, "weight_map": {');
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /model\.safetensors\.index\.json is not valid JSON/,
      file: indexFile(dir),
    });
  });

  test('index without weight_map', async () => {
    const dir = tinyModel({ shards: 3 });
    fs.writeFileSync(indexFile(dir), '{"metadata": {}}');
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /'weight_map' is missing/, file: indexFile(dir) });
  });

  test.each([
    ['../', (f: string) => `../${f}`],
    ['sub/../../', (f: string) => `sub/../../${f}`],
    ['absolute', (f: string) => `/tmp/${f}`],
  ])("index weight_map entry with a '%s' path", async (_what, mk) => {
    const dir = tinyModel({ shards: 3 });
    // A real file really is there, so only the path check can refuse it.
    fs.copyFileSync(
      path.join(dir, 'model-00001-of-00003.safetensors'),
      path.join(dir, '..', 'model-00001-of-00003.safetensors'),
    );
    editJson(indexFile(dir), (o) => {
      (o.weight_map as Record<string, string>)['model.embed_tokens.weight'] = mk('model-00001-of-00003.safetensors');
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /weight_map entry 'model\.embed_tokens\.weight' points outside the model directory/,
      file: indexFile(dir),
    });
    expect(leftOpen(path.dirname(dir))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

describe('config.json', () => {
  test('missing', async () => {
    const dir = tinyModel();
    fs.rmSync(cfg(dir));
    await expectLoadFailure(dir, { cls: ModelFileError, message: /config\.json is missing/, file: cfg(dir) });
  });

  test('not JSON', async () => {
    const dir = tinyModel();
    fs.writeFileSync(cfg(dir), '{"architectures": ["LlamaForCausalLM"], hidden_size: 64}');
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /config\.json is not valid JSON/, file: cfg(dir) });
  });

  test('JSON but not an object', async () => {
    const dir = tinyModel();
    fs.writeFileSync(cfg(dir), '["LlamaForCausalLM"]');
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /config\.json must hold a JSON object/,
      file: cfg(dir),
    });
  });

  test('architectures missing', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      delete o.architectures;
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /'architectures' is missing/, file: cfg(dir) });
  });

  test('architecture unsupported (GPT2LMHeadModel)', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.architectures = ['GPT2LMHeadModel'];
    });
    await expectLoadFailure(dir, {
      cls: UnsupportedModelError,
      message: /architecture 'GPT2LMHeadModel' is not supported/,
      file: cfg(dir),
    });
  });

  test('hidden_size not divisible by num_attention_heads (no head_dim)', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      delete o.head_dim;
      o.num_attention_heads = 6;
      o.num_key_value_heads = 2;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /'hidden_size' \(64\) must be divisible by num_attention_heads \(6\)/,
      file: cfg(dir),
    });
  });

  test('num_attention_heads not a multiple of num_key_value_heads', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.num_key_value_heads = 3;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /'num_attention_heads' \(4\) must be a multiple of num_key_value_heads \(3\)/,
      file: cfg(dir),
    });
  });

  test('odd head_dim', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.head_dim = 15;
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /'head_dim' must be even/, file: cfg(dir) });
  });

  test.each([
    ['hidden_size', -64, /'hidden_size' must be at least 1, got -64/],
    ['num_hidden_layers', 0, /'num_hidden_layers' must be at least 1, got 0/],
    ['intermediate_size', 127.5, /'intermediate_size' must be an integer, got 127\.5/],
    ['vocab_size', '320', /'vocab_size' must be an integer, got "320"/],
    ['num_attention_heads', 0, /'num_attention_heads' must be at least 1, got 0/],
    ['num_key_value_heads', -2, /'num_key_value_heads' must be at least 1, got -2/],
    ['head_dim', '16', /'head_dim' must be an integer, got "16"/],
    ['hidden_size', 2 ** 40, /'hidden_size' is too large/],
  ])('dimension %s = %p', async (key, value, message) => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o[key] = value;
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message, file: cfg(dir) });
  });

  test('required dimension missing', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      delete o.intermediate_size;
    });
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /'intermediate_size' is missing/, file: cfg(dir) });
  });

  test('rope_scaling of an unsupported type (yarn)', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.rope_scaling = { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 64 };
    });
    await expectLoadFailure(dir, {
      cls: UnsupportedModelError,
      message: /rope_scaling type 'yarn' is not supported/,
      file: cfg(dir),
    });
  });

  test('rope_scaling linear without factor', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.rope_scaling = { rope_type: 'linear' };
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /rope_scaling\.factor' is missing/,
      file: cfg(dir),
    });
  });

  test('hidden_act gelu', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.hidden_act = 'gelu';
    });
    await expectLoadFailure(dir, {
      cls: UnsupportedModelError,
      message: /hidden_act 'gelu' is not supported/,
      file: cfg(dir),
    });
  });

  test('intermediate_size that disagrees with the tensors', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.intermediate_size = 96;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message:
        /tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[128, 64\], expected \[96, 64\] from config\.json/,
      file: st(dir),
    });
  });

  test('num_hidden_layers that disagrees with the tensors (too many)', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.num_hidden_layers = 3;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /missing tensor 'model\.layers\.2\./,
      file: st(dir),
    });
  });

  test('num_hidden_layers that disagrees with the tensors (too few)', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.num_hidden_layers = 1;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /unexpected tensor 'model\.layers\.1\./,
      file: st(dir),
    });
  });

  test('vocab_size that disagrees with the tensors', async () => {
    const dir = tinyModel();
    editJson(cfg(dir), (o) => {
      o.vocab_size = 330;
    });
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tensor 'model\.embed_tokens\.weight' has shape \[320, 64\], expected \[330, 64\]/,
      file: st(dir),
    });
  });

  test('generation_config.json not JSON', async () => {
    const dir = tinyModel();
    const gen = path.join(dir, 'generation_config.json');
    fs.writeFileSync(gen, 'nope');
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /generation_config\.json is not valid JSON/,
      file: gen,
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

describe('tokenizer', () => {
  test('tokenizer.json missing', async () => {
    const dir = tinyModel();
    const f = path.join(dir, 'tokenizer.json');
    fs.rmSync(f);
    await expectLoadFailure(dir, { cls: ModelFileError, message: /tokenizer\.json is missing/, file: f });
  });

  test('tokenizer.json not JSON', async () => {
    const dir = tinyModel();
    const f = path.join(dir, 'tokenizer.json');
    fs.writeFileSync(f, fs.readFileSync(f, 'utf8').slice(0, 500));
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /tokenizer\.json is not valid JSON/, file: f });
  });

  test('tokenizer.json JSON but not an object', async () => {
    const dir = tinyModel();
    const f = path.join(dir, 'tokenizer.json');
    fs.writeFileSync(f, '[]');
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tokenizer\.json must hold a JSON object/,
      file: f,
    });
  });

  test('tokenizer.json an object without a model', async () => {
    const dir = tinyModel();
    const f = path.join(dir, 'tokenizer.json');
    fs.writeFileSync(f, '{}');
    await expectLoadFailure(dir, { cls: ModelFormatError, message: /tokenizer\.json could not be loaded/, file: f });
  });

  test('tokenizer_config.json not JSON', async () => {
    const dir = tinyModel();
    const f = path.join(dir, 'tokenizer_config.json');
    fs.writeFileSync(f, '{,}');
    await expectLoadFailure(dir, {
      cls: ModelFormatError,
      message: /tokenizer_config\.json is not valid JSON/,
      file: f,
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Missing directory
// ---------------------------------------------------------------------------------------------

describe('model directory', () => {
  test('does not exist', async () => {
    const dir = path.join(tmpDir(), 'no-such-model');
    const e = await expectLoadFailure(dir, { cls: ModelFileError, message: /is missing|does not exist|no such/i });
    expect(e.message).toContain(dir);
  });

  test('exists but holds no weights', async () => {
    const dir = tinyModel();
    fs.rmSync(st(dir));
    await expectLoadFailure(dir, {
      cls: ModelFileError,
      message: /no model\.safetensors or model\.safetensors\.index\.json found/,
      file: dir,
    });
  });

  test('model.safetensors is a directory', async () => {
    const dir = tinyModel();
    fs.rmSync(st(dir));
    fs.mkdirSync(st(dir));
    await expectLoadFailure(dir, { cls: ModelFileError, message: /not a regular file/, file: st(dir) });
  });
});

// ---------------------------------------------------------------------------------------------
// Context overflow
// ---------------------------------------------------------------------------------------------

describe('context overflow', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(goodDir, { threads: 1, contextSize: 8 });
  });
  afterAll(async () => model?.dispose());

  const prompt20 = Array.from({ length: 20 }, (_, i) => 10 + i);

  test('generate with a 20-token prompt in an 8-token context', async () => {
    const e = await model.generate({ tokens: prompt20 }, { maxTokens: 4 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ContextOverflowError);
    expect((e as Error).message).toMatch(/prompt is 20 tokens.*contextSize 8/);
    // The model still works for a short prompt.
    const r = await model.generate({ tokens: [10, 11, 12] }, { maxTokens: 3, stopOnEos: false });
    expect(r.tokens.length).toBeGreaterThan(0);
    expect(r.usage.promptTokens).toBe(3);
  });

  test('generate with a long text prompt', async () => {
    const text = 'the quick brown fox jumps over the lazy dog again and again and again';
    expect(model.tokenize(text).length).toBeGreaterThan(8);
    await expect(model.generate(text, { maxTokens: 2 })).rejects.toBeInstanceOf(ContextOverflowError);
    const r = await model.generate({ tokens: [5] }, { maxTokens: 2, stopOnEos: false });
    expect(r.tokens).toHaveLength(2);
  });

  test('stream with a prompt that does not fit', async () => {
    const s = model.stream({ tokens: prompt20 });
    const e = await (async () => {
      for await (const _ of s) {
        // nothing expected
      }
    })().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ContextOverflowError);
    await expect(s.result).rejects.toBeInstanceOf(ContextOverflowError);
  });

  test('sequence evaluate of 5 tokens in a 4-token context', async () => {
    const seq = model.createSequence({ contextSize: 4 });
    try {
      const e = await seq.evaluate([1, 2, 3, 4, 5]).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ContextOverflowError);
      expect((e as Error).message).toMatch(/5 tokens.*4 of its 4 context positions/);
      expect(seq.tokens).toEqual([]);
      // The sequence is still usable.
      const r = await seq.evaluate([1, 2, 3]);
      expect(r.logits).toHaveLength(3);
      await expect(seq.evaluate([4, 5])).rejects.toBeInstanceOf(ContextOverflowError);
      const r2 = await seq.evaluate([4]);
      expect(r2.logits).toHaveLength(1);
      await expect(seq.evaluate([5])).rejects.toBeInstanceOf(ContextOverflowError);
    } finally {
      seq.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

async function expectOption(p: Promise<unknown> | (() => unknown), option: string, message?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(InvalidOptionError);
  const e = err as InvalidOptionError;
  expect(e.option).toBe(option);
  expect(e.code).toBe('ERR_DEPTHGATE_INVALID_OPTION');
  expect(e.message).toContain(`'${option}'`);
  if (message) expect(e.message).toMatch(message);
}

describe('load options', () => {
  test.each<[string, Record<string, unknown>, string, RegExp]>([
    ['threads: "x"', { threads: 'x' }, 'threads', /must be an integer, got "x"/],
    ['threads: 0', { threads: 0 }, 'threads', /between 1 and/],
    ['threads: 1.5', { threads: 1.5 }, 'threads', /integer/],
    ['contextSize: 1.5', { contextSize: 1.5 }, 'contextSize', /must be an integer, got 1\.5/],
    ['contextSize: 0', { contextSize: 0 }, 'contextSize', /between 1 and/],
    ['bogus: 1', { bogus: 1 }, 'bogus', /not a known option/],
    ['backend: "gpu"', { backend: 'gpu' }, 'backend', /'auto', 'cpu' or 'cuda'/],
    ['prefault: "yes"', { prefault: 'yes' }, 'prefault', /true or false/],
    ['onProgress: 5', { onProgress: 5 }, 'onProgress', /function/],
    ['signal: {}', { signal: {} }, 'signal', /AbortSignal/],
  ])('%s', async (_name, opts, option, message) => {
    await expectOption(loadModel(goodDir, opts as never), option, message);
    expect(leftOpen(goodDir)).toEqual([]);
  });

  // Only meaningful where no GPU is usable; on a GPU machine jest reports it as skipped.
  const gpuHere = getBuildInfo().cuda.available;
  if (gpuHere) console.log('skipping "backend \'cuda\' with no usable GPU": a GPU is available here');
  (gpuHere ? test.skip : test)(
    "backend 'cuda' with no usable GPU is a BackendUnavailableError with the reason",
    async () => {
      const err = await loadModel(goodDir, { backend: 'cuda' }).catch((e) => e);
      expect(err).toBeInstanceOf(BackendUnavailableError);
      expect(err.code).toBe('ERR_DEPTHGATE_BACKEND_UNAVAILABLE');
      expect(err.message).toMatch(/backend 'cuda' is not available: \S/);
      const auto = await loadModel(goodDir, { backend: 'auto', threads: 1 });
      expect(auto.info.backend).toBe('cpu');
      await auto.dispose();
      expect(leftOpen(goodDir)).toEqual([]);
    },
  );

  test('DEPTHGATE_BACKEND chooses the default backend and is validated', async () => {
    const saved = process.env.DEPTHGATE_BACKEND;
    try {
      process.env.DEPTHGATE_BACKEND = 'cuda';
      if (!getBuildInfo().cuda.available)
        await expect(loadModel(goodDir)).rejects.toBeInstanceOf(BackendUnavailableError);
      process.env.DEPTHGATE_BACKEND = 'tpu';
      await expectOption(loadModel(goodDir), 'DEPTHGATE_BACKEND', /auto, cpu or cuda/);
      process.env.DEPTHGATE_BACKEND = 'cpu';
      const m = await loadModel(goodDir, { threads: 1 });
      expect(m.info.backend).toBe('cpu');
      await m.dispose();
    } finally {
      if (saved === undefined) delete process.env.DEPTHGATE_BACKEND;
      else process.env.DEPTHGATE_BACKEND = saved;
    }
  });

  test('an already aborted signal', async () => {
    const dir = tinyModel();
    await expectLoadFailure(dir, { cls: AbortError, message: /aborted/ }, { signal: AbortSignal.abort() });
  });

  test('options not an object', async () => {
    await expectOption(loadModel(goodDir, 'fast' as never), 'options', /must be an object/);
  });

  test('loadModel(123)', async () => {
    await expectOption(loadModel(123 as never), 'modelDir', /non-empty path/);
  });

  test("loadModel('')", async () => {
    await expectOption(loadModel(''), 'modelDir', /non-empty path/);
  });
});

describe('generate options and inputs', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(goodDir, { threads: 1, contextSize: 64 });
  });
  afterAll(async () => model?.dispose());

  test.each<[string, Record<string, unknown>, string]>([
    ['maxTokens: -1', { maxTokens: -1 }, 'maxTokens'],
    ['maxTokens: 0', { maxTokens: 0 }, 'maxTokens'],
    ['maxTokens: 1.5', { maxTokens: 1.5 }, 'maxTokens'],
    ['maxTokens: "3"', { maxTokens: '3' }, 'maxTokens'],
    ['temperature: -1', { temperature: -1 }, 'temperature'],
    ['temperature: NaN', { temperature: NaN }, 'temperature'],
    ['temperature: Infinity', { temperature: Infinity }, 'temperature'],
    ['temperature: "hot"', { temperature: 'hot' }, 'temperature'],
    ['topK: -1', { topK: -1 }, 'topK'],
    ['topK: 2.5', { topK: 2.5 }, 'topK'],
    ['topP: 0', { topP: 0 }, 'topP'],
    ['topP: 1.5', { topP: 1.5 }, 'topP'],
    ['seed: -1', { seed: -1 }, 'seed'],
    ['seed: "x"', { seed: 'x' }, 'seed'],
    ['stop: "abc"', { stop: 'abc' }, 'stop'],
    ['stop: [""]', { stop: [''] }, 'stop'],
    ['stop: [1]', { stop: [1] }, 'stop'],
    ['stopOnEos: 1', { stopOnEos: 1 }, 'stopOnEos'],
    ['stopOnAbort: "no"', { stopOnAbort: 'no' }, 'stopOnAbort'],
    ['signal: {}', { signal: {} }, 'signal'],
    ['onToken: 5', { onToken: 5 }, 'onToken'],
    ['unknownKey: true', { unknownKey: true }, 'unknownKey'],
  ])('%s', async (_name, opts, option) => {
    await expectOption(model.generate('hello', opts as never), option);
    await expectOption(() => model.stream('hello', opts as never), option);
    const seq = model.createSequence();
    try {
      await expectOption(seq.generate('hello', opts as never), option);
      expect(seq.tokens).toEqual([]);
    } finally {
      seq.dispose();
    }
  });

  test('options not an object', async () => {
    await expectOption(model.generate('hello', 5 as never), 'options', /must be an object/);
  });

  test('createSequence options', async () => {
    await expectOption(() => model.createSequence({ contextSize: 0 }), 'contextSize');
    await expectOption(() => model.createSequence({ contextSize: 2.5 }), 'contextSize');
    await expectOption(() => model.createSequence({ size: 4 } as never), 'size');
  });

  test('token id outside the vocabulary in generate({tokens: [vocabSize]})', async () => {
    const v = model.config.vocabSize;
    await expectOption(
      model.generate({ tokens: [v] }, { maxTokens: 1 }),
      'input',
      new RegExp(`token id ${v} is outside the vocabulary`),
    );
    await expectOption(
      model.generate({ tokens: [1, 2, v + 1000] }, { maxTokens: 1 }),
      'input',
      /outside the vocabulary/,
    );
  });

  test.each<[string, number[]]>([
    ['-1', [-1]],
    ['1.5', [1.5]],
    ['NaN', [NaN]],
    ['vocabSize', [320]],
  ])('evaluate([%s])', async (_n, tokens) => {
    await expectOption(model.evaluate(tokens), 'input', /outside the vocabulary/);
    const seq = model.createSequence({ contextSize: 8 });
    try {
      await expectOption(seq.evaluate([3, ...tokens]), 'input', /outside the vocabulary/);
      expect(seq.tokens).toEqual([]);
      const r = await seq.evaluate([3]);
      expect(r.logits).toHaveLength(1);
    } finally {
      seq.dispose();
    }
  });

  test('an already aborted signal', async () => {
    await expect(
      model.generate({ tokens: [1, 2] }, { maxTokens: 2, signal: AbortSignal.abort() }),
    ).rejects.toBeInstanceOf(AbortError);
    const r = await model.generate(
      { tokens: [1, 2] },
      { maxTokens: 2, signal: AbortSignal.abort(), stopOnAbort: true },
    );
    expect(r.finishReason).toBe('abort');
  });

  test('an onToken callback that throws', async () => {
    const boom = new Error('boom');
    await expect(
      model.generate(
        { tokens: [1, 2] },
        {
          maxTokens: 4,
          stopOnEos: false,
          onToken: () => {
            throw boom;
          },
        },
      ),
    ).rejects.toBe(boom);
  });

  test('empty input', async () => {
    await expectOption(model.generate({ tokens: [] }, { maxTokens: 1 }), 'input', /empty/);
    await expectOption(model.generate(42 as never), 'input');
  });

  test('the model still generates after all of the above', async () => {
    const r = await model.generate(
      { tokens: [1, 2, 3] },
      { maxTokens: 4, stopOnEos: false, temperature: 0.7, topK: 5, topP: 0.9, seed: 1 },
    );
    expect(r.tokens).toHaveLength(4);
  });
});

// ---------------------------------------------------------------------------------------------
// Numbers against the engine's types, policies the engine refuses, the CLI's --policy syntax
// ---------------------------------------------------------------------------------------------

describe('numeric options fit the native types they are stored in', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(goodDir, { threads: 1, contextSize: 64 });
  });
  afterAll(async () => model?.dispose());

  test.each<[string, Record<string, unknown>, string]>([
    // topK is an int32 natively: 2^32 + 1 used to sample exactly like topK 1.
    ['topK: 2^32 + 1', { topK: 2 ** 32 + 1, temperature: 1 }, 'topK'],
    ['topK: 2^31', { topK: 2 ** 31, temperature: 1 }, 'topK'],
    ['policy d3 start: 2^31', { policy: { type: 'd3', alpha: 0.5, start: 2 ** 31 } }, 'policy.start'],
    ['policy d3 start: 3e9', { policy: { type: 'd3', alpha: 0.5, start: 3e9 } }, 'policy.start'],
    ['seed: 2^53', { seed: 2 ** 53 }, 'seed'],
  ])('%s is refused in TypeScript', async (_name, opts, option) => {
    await expectOption(model.generate('hello', opts as never), option);
  });

  test('the largest values of those types are accepted', async () => {
    const r = await model.generate('hello', {
      maxTokens: 2,
      temperature: 1,
      topK: 2 ** 31 - 1,
      seed: 2 ** 53 - 1,
      policy: { type: 'd3', alpha: 0.5, start: 2 ** 31 - 1 },
    });
    expect(r.tokens).toHaveLength(2);
    await expectOption(loadModel(goodDir, { contextSize: 2 ** 31 }), 'contextSize');
    await expectOption(() => model.createSequence({ contextSize: 2 ** 31 }), 'contextSize');
  });

  test('policy errors only the engine can judge come back typed, naming the option', async () => {
    // Bypass the TypeScript checks and ask the engine itself.
    const nm = (model as unknown as { live(): import('../src/binding').NativeModel }).live();
    const seq = nm.createSequence(8, 0);
    const ask = (policy: unknown) =>
      nm
        .forward([{ sequence: seq, tokens: Int32Array.from([1]), logits: 'none' }], policy as never)
        .then(() => null, fromNative);
    for (const [policy, option, message] of [
      [{ type: 'd3', alpha: 0.5, start: -1 }, 'policy.start', /must be >= 0 for the d3 policy/],
      [{ type: 'd3', alpha: 2 }, 'policy.alpha', /must be in \(0, 1\]/],
      [{ type: 'static', skipLayers: [99] }, 'policy.skipLayers', /has layer 99 but the model has layers 0\.\.1/],
      [{ type: 'flexidepth' }, 'policy', /no FlexiDepth router weights/],
      [{ type: 'skiplayer' }, 'policy', /no SkipLayer router weights/],
    ] as const) {
      const err = await ask(policy);
      expect(err).toBeInstanceOf(InvalidOptionError);
      expect((err as InvalidOptionError).option).toBe(option);
      expect((err as InvalidOptionError).code).toBe('ERR_DEPTHGATE_INVALID_OPTION');
      expect((err as Error).message).toMatch(message);
    }
    seq.dispose();
  });

  test('a learned policy without routers is refused before anything runs, naming the option', async () => {
    await expectOption(
      model.generate('hello', { policy: { type: 'flexidepth' } }),
      'policy',
      /no FlexiDepth router weights/,
    );
    await expectOption(
      model.evaluate([1, 2], { policy: { type: 'skiplayer' } }),
      'policy',
      /no SkipLayer router weights/,
    );
  });
});

describe("the CLI's --policy syntax", () => {
  test.each([
    ['flexidepth:threshold=', 'policy.threshold', /needs a value/],
    ['d3:alpha=', 'policy.alpha', /needs a value/],
    ['d3:alpha=0x1', 'policy.alpha', /'0x1' is not a number/],
    ['d3:alpha=0.5,start= ', 'policy.start', /needs a value/],
    ['d3:alpha=Infinity', 'policy.alpha', /is not a number/],
    ['static:skip=', 'policy.skip', /needs a value/],
    ['static:skip=1++2', 'policy.skip', /not layer numbers joined with \+/],
    ['static:skip=1.5', 'policy.skip', /not layer numbers/],
  ])('%s is an InvalidOptionError', async (text, option, message) => {
    await expectOption(() => parsePolicy(text, 4), option, message);
  });

  test('good values still parse', () => {
    expect(parsePolicy('flexidepth:threshold=0.25', 4)).toEqual({ type: 'flexidepth', threshold: 0.25 });
    expect(parsePolicy('d3:alpha=.5,start=2,min=3', 4)).toEqual({ type: 'd3', alpha: 0.5, start: 2, minLayers: 3 });
    expect(parsePolicy('static:skip=1+3,attn=2', 4)).toEqual({
      type: 'static',
      skipLayers: [1, 3],
      skipAttention: [2],
    });
  });
});

describe('load progress', () => {
  test.each([
    ['every time', () => true],
    ['only at 1 (after the weights are in)', (f: number) => f === 1],
  ])(
    'an onProgress that throws %s rejects the load with that error, and frees what the load took',
    async (_when, throwsAt) => {
      const dir = tinyModel({ seed: 3 });
      const boom = new Error('progress boom');
      const err = await loadModel(dir, {
        threads: 1,
        onProgress: (f) => {
          if (throwsAt(f)) throw boom;
        },
      }).then(
        (m) => m.dispose().then(() => null),
        (e: unknown) => e,
      );
      expect(err).toBe(boom);
      expect(leftOpen(dir)).toEqual([]);
      await goodModelWorks();
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Use after dispose
// ---------------------------------------------------------------------------------------------

describe('use after dispose', () => {
  test('model.generate after model.dispose()', async () => {
    const model = await loadModel(goodDir, { threads: 1 });
    await model.dispose();
    expect(model.disposed).toBe(true);
    await expect(model.generate('hello', { maxTokens: 1 })).rejects.toBeInstanceOf(DisposedError);
    await expect(model.evaluate([1, 2])).rejects.toBeInstanceOf(DisposedError);
    expect(() => model.createSequence()).toThrow(DisposedError);
    expect(() => model.stream('hello')).toThrow(DisposedError);
    expect(() => model.info).toThrow(DisposedError);
    const e = await model.generate('hello').catch((x: unknown) => x);
    expect((e as DisposedError).code).toBe('ERR_DEPTHGATE_DISPOSED');
    expect((e as Error).message).toMatch(/model has been disposed/);
    // dispose() twice is fine.
    await expect(model.dispose()).resolves.toBeUndefined();
    expect(leftOpen(goodDir)).toEqual([]);
  });

  test('sequence.evaluate after sequence.dispose()', async () => {
    const model = await loadModel(goodDir, { threads: 1 });
    try {
      const seq = model.createSequence({ contextSize: 16 });
      await seq.evaluate([1, 2]);
      seq.dispose();
      expect(seq.disposed).toBe(true);
      const e = await seq.evaluate([3]).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(DisposedError);
      expect((e as Error).message).toMatch(/sequence has been disposed/);
      await expect(seq.generate('hi', { maxTokens: 1 })).rejects.toBeInstanceOf(DisposedError);
      expect(() => seq.reset()).toThrow(DisposedError);
      // dispose() twice is fine.
      expect(() => seq.dispose()).not.toThrow();
      // The model is unaffected.
      const r = await model.generate({ tokens: [1, 2] }, { maxTokens: 2, stopOnEos: false });
      expect(r.tokens).toHaveLength(2);
    } finally {
      await model.dispose();
    }
  });

  // Regression (disposed): the error used to be a bare DepthgateError with code
  // ERR_DEPTHGATE_DISPOSED, because fromNative() did not map that code to DisposedError.
  test('a sequence disposed while it generates', async () => {
    const model = await loadModel(goodDir, { threads: 1 });
    try {
      const seq = model.createSequence({ contextSize: 32 });
      const e = await seq
        .generate(
          { tokens: [1, 2, 3] },
          { maxTokens: 10, stopOnEos: false, onToken: (c) => c.index === 1 && seq.dispose() },
        )
        .catch((x: unknown) => x);
      expect((e as DepthgateError).code).toBe('ERR_DEPTHGATE_DISPOSED');
      expect((e as Error).message).toMatch(/sequence has been disposed/);
      expect(e).toBeInstanceOf(DisposedError);
      const r = await model.generate({ tokens: [1, 2] }, { maxTokens: 2, stopOnEos: false });
      expect(r.tokens).toHaveLength(2);
    } finally {
      await model.dispose();
    }
  });

  test('a sequence after its model was disposed', async () => {
    const model = await loadModel(goodDir, { threads: 1 });
    const seq = model.createSequence({ contextSize: 16 });
    await model.dispose();
    expect(seq.disposed).toBe(true);
    await expect(seq.evaluate([1])).rejects.toBeInstanceOf(DisposedError);
    expect(() => seq.dispose()).not.toThrow();
    expect(leftOpen(goodDir)).toEqual([]);
  });

  test('dispose while a generation is queued', async () => {
    const model = await loadModel(goodDir, { threads: 1 });
    expect.assertions(2);
    const p = model.generate({ tokens: [1, 2, 3] }, { maxTokens: 50, stopOnEos: false });
    // dispose() in the same tick: the generation has not started its first pass, so it cannot
    // finish first and must reject.
    const d = model.dispose();
    await expect(p).rejects.toBeInstanceOf(DisposedError);
    await d;
    expect(leftOpen(goodDir)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// Regression (realm): fromNative() on an error from another realm
// ---------------------------------------------------------------------------------------------

describe('fromNative', () => {
  const foreign = (code: string, file?: string): unknown =>
    vm.runInNewContext('(() => { const e = new Error(msg); e.code = code; if (file) e.file = file; return e; })()', {
      msg: 'header is empty',
      code,
      file,
    });

  test('same-realm native-style error is mapped', () => {
    const e = Object.assign(new Error('header is empty'), {
      code: 'ERR_DEPTHGATE_MODEL_FORMAT',
      file: '/m/model.safetensors',
    });
    const m = fromNative(e);
    expect(m).toBeInstanceOf(ModelFormatError);
    expect((m as ModelFormatError).file).toBe('/m/model.safetensors');
  });

  // Regression (realm): with any vm context `instanceof Error` is false.
  test('an error from another realm keeps its code, class and file', () => {
    const m = fromNative(foreign('ERR_DEPTHGATE_MODEL_FORMAT', '/m/model.safetensors'));
    expect((m as DepthgateError).code).toBe('ERR_DEPTHGATE_MODEL_FORMAT');
    expect(m).toBeInstanceOf(ModelFormatError);
    expect((m as ModelFormatError).file).toBe('/m/model.safetensors');
    expect(m.message).toBe('/m/model.safetensors: header is empty');
  });

  test('every code the addon or the CUDA library can raise becomes a documented code and class', () => {
    const root = path.join(__dirname, '..');
    const sources: string[] = [];
    const walk = (d: string) => {
      for (const f of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, f.name);
        if (f.isDirectory()) walk(p);
        else if (/\.(cc|h|cu|cuh)$/.test(f.name)) sources.push(fs.readFileSync(p, 'utf8'));
      }
    };
    walk(path.join(root, 'native'));
    walk(path.join(root, 'cuda'));
    const nativeCodes = [...new Set(sources.join('\n').match(/ERR_DEPTHGATE_[A-Z_]+/g) ?? [])].sort();
    expect(nativeCodes).toContain('ERR_DEPTHGATE_INVALID_ARGUMENT');
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('### Errors'), readme.indexOf('## Models'));
    const documented = new Set(table.match(/ERR_DEPTHGATE_[A-Z_]+/g) ?? []);
    for (const code of [...nativeCodes, 'ERR_DEPTHGATE_SOMETHING_NEW']) {
      const m = fromNative(Object.assign(new Error('x'), { code })) as DepthgateError;
      expect(m).toBeInstanceOf(DepthgateError);
      expect([code, documented.has(m.code)]).toEqual([code, true]);
    }
    // A malformed call from this package to the addon is an internal error, said as such.
    const internal = fromNative(
      Object.assign(new Error('request.tokens must be an Int32Array'), { code: 'ERR_DEPTHGATE_INVALID_ARGUMENT' }),
    );
    expect((internal as DepthgateError).code).toBe('ERR_DEPTHGATE_INTERNAL');
    expect(internal.message).toMatch(/internal error \(a bug in depthgate\)/);
    expect(fromNative(Object.assign(new Error('x'), { code: 'ERR_DEPTHGATE_UNSUPPORTED' }))).toBeInstanceOf(
      UnsupportedModelError,
    );
    expect(fromNative(Object.assign(new Error('x'), { code: 'ERR_DEPTHGATE_BACKEND_UNAVAILABLE' }))).toBeInstanceOf(
      BackendUnavailableError,
    );
    const opt = fromNative(
      Object.assign(new Error('must be >= 0'), { code: 'ERR_DEPTHGATE_INVALID_OPTION', option: 'policy.start' }),
    );
    expect(opt).toBeInstanceOf(InvalidOptionError);
    expect((opt as InvalidOptionError).option).toBe('policy.start');
    // Every class's own code is documented too, and the table is exactly the DepthgateErrorCode union.
    for (const code of ['ERR_DEPTHGATE_BUSY', 'ERR_DEPTHGATE_NATIVE_LOAD', 'ERR_DEPTHGATE_INTERNAL'])
      expect(documented.has(code)).toBe(true);
    expect([...documented].sort()).toEqual([...ERROR_CODES].sort());
  });

  // Regression (disposed): ERR_DEPTHGATE_DISPOSED used to become a bare DepthgateError.
  test('ERR_DEPTHGATE_DISPOSED becomes DisposedError', () => {
    const m = fromNative(
      Object.assign(new Error('the sequence has been disposed'), { code: 'ERR_DEPTHGATE_DISPOSED' }),
    );
    expect((m as DepthgateError).code).toBe('ERR_DEPTHGATE_DISPOSED');
    expect(m).toBeInstanceOf(DisposedError);
  });
});
