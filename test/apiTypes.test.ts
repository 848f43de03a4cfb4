// What the shipped types promise a TypeScript user, checked by compiling against dist/*.d.ts as the
// package ships them, and the one behaviour those docs describe: a stream runs as it is read.
import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';
import { loadModel } from '../src';
import { cleanup, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

const dist = path.join(__dirname, '..', 'dist');

/** Diagnostics of compiling `source` under --strict (and the extra options) with depthgate mapped to dist/. */
function compile(source: string, extra: ts.CompilerOptions = {}): string[] {
  const file = path.join(tmpDir(), 'user.ts');
  fs.writeFileSync(file, source);
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.Node16,
    moduleResolution: ts.ModuleResolutionKind.Node16,
    lib: ['lib.es2023.d.ts', 'lib.esnext.disposable.d.ts'],
    types: ['node'],
    typeRoots: [path.join(__dirname, '..', 'node_modules', '@types')],
    baseUrl: dist,
    paths: { depthgate: [path.join(dist, 'index.d.ts')] },
    skipLibCheck: true,
    ...extra,
  };
  const program = ts.createProgram([file], options);
  return ts
    .getPreEmitDiagnostics(program)
    .map((d) => `${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
}

test('every option accepts undefined under exactOptionalPropertyTypes; roles are a union that takes others', () => {
  const source = `
import type { LoadOptions, GenerateOptions, EvaluateOptions, PerplexityOptions, ServerOptions, Policy, ChatMessage, ChatSessionOptions, Model } from 'depthgate';
const load: LoadOptions = { threads: undefined, contextSize: undefined, addons: undefined, backend: undefined, signal: undefined, onProgress: undefined, memoryLimit: undefined, prefault: undefined, kvCacheType: undefined };
const gen: GenerateOptions = { maxTokens: undefined, temperature: undefined, topK: undefined, topP: undefined, seed: undefined, stop: undefined, stopOnEos: undefined, signal: undefined, stopOnAbort: undefined, onToken: undefined, policy: undefined };
const ev: EvaluateOptions = { policy: undefined, signal: undefined, generatedFrom: undefined };
const ppl: PerplexityOptions = { policy: undefined, window: undefined, context: undefined, maxTokens: undefined };
const srv: ServerOptions = { parallel: undefined, contextSize: undefined, policy: undefined, apiKey: undefined, onRequest: undefined };
const d3: Policy = { type: 'd3', alpha: 0.9, start: undefined, minLayers: undefined };
const roles: ChatMessage[] = [{ role: 'system', content: '' }, { role: 'user', content: '' }, { role: 'assistant', content: '' }, { role: 'tool', content: '' }];
declare const model: Model;
const session: Omit<ChatSessionOptions, 'sequence'> = { systemPrompt: undefined };
model.createSequence({ contextSize: undefined });
model.tokenize('x', { addSpecialTokens: undefined });
void [load, gen, ev, ppl, srv, d3, roles, session];
`;
  expect(compile(source, { exactOptionalPropertyTypes: true })).toEqual([]);
});

test('the shipped declarations are complete: no name in them refers to a stripped internal', () => {
  // With skipLibCheck a dangling name silently becomes any (a union typed by a stripped constant did).
  const diagnostics = compile(
    `import type * as D from 'depthgate';\nimport type * as T from 'depthgate/testing';\nexport type X = [D.Model, T.TinyModelOptions];\n`,
    {
      skipLibCheck: false,
      paths: {
        depthgate: [path.join(dist, 'index.d.ts')],
        'depthgate/testing': [path.join(dist, 'testing', 'index.d.ts')],
      },
    },
  );
  expect(diagnostics.filter((d) => !/node_modules/.test(d))).toEqual([]);
  // And the options are typed: a wrong type is an error, not any.
  expect(
    compile(
      `import type { GenerateOptions } from 'depthgate';\nexport const g: GenerateOptions = { maxTokens: 'many' };\n`,
    ),
  ).toEqual([expect.stringMatching(/^2322: Type 'string' is not assignable to type 'number'/)]);
});

test('a mistyped error code does not compile', () => {
  const diagnostics = compile(`
import { DepthgateError } from 'depthgate';
declare const e: DepthgateError;
if (e.code === 'ERR_DEPTHGATE_ABORTED') console.log('ok');
if (e.code === 'ERR_DEPTHGATE_ABORT') console.log('typo');
`);
  expect(diagnostics).toEqual([expect.stringMatching(/^2367: .*"ERR_DEPTHGATE_ABORT"/)]);
});

test('a stream runs as it is read: result waits for the reading, then settles', async () => {
  const model = await loadModel(tinyModel({ seed: 41, layers: 2 }), { threads: 1 });
  try {
    const stream = model.stream('Once', { maxTokens: 4, stopOnEos: false });
    let settled = false;
    void stream.result.then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(settled).toBe(false);
    let n = 0;
    for await (const _ of stream) n++;
    expect((await stream.result).tokens).toHaveLength(4);
    expect(n).toBeGreaterThan(0);
  } finally {
    await model.dispose();
  }
});
