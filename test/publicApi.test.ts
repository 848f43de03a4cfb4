/**
 * The shipped type declarations hold the documented API and nothing else: the exports of the two
 * entry points (`depthgate` and `depthgate/testing`) and the public members of every exported
 * class, read with the TypeScript compiler from dist/*.d.ts as the package ships them (built with
 * stripInternal, so members marked @internal are gone). A change to this surface is a change to
 * the package's semver contract: update EXPECTED together with the README's API section.
 */
import * as path from 'node:path';
import ts from 'typescript';

const dist = path.join(__dirname, '..', 'dist');

/** Exports of an entry point; for classes, their public instance members (symbols as [Symbol.x]). */
function surface(entry: string): Record<string, string[]> {
  const file = path.join(dist, entry);
  const program = ts.createProgram([file], { noEmit: true, skipLibCheck: true });
  const checker = program.getTypeChecker();
  const mod = checker.getSymbolAtLocation(program.getSourceFile(file)!)!;
  const out: Record<string, string[]> = {};
  for (const exported of checker.getExportsOfModule(mod)) {
    const s = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
    const members: string[] = [];
    if (s.flags & ts.SymbolFlags.Class) {
      for (const p of checker.getPropertiesOfType(checker.getDeclaredTypeOfSymbol(s))) {
        const d = p.valueDeclaration ?? p.declarations?.[0];
        if (d && ts.getCombinedModifierFlags(d) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) continue;
        const name = p.getName();
        members.push(name.startsWith('__@') ? `[Symbol.${name.slice(3).split('@')[0]}]` : name);
      }
    }
    out[exported.getName()] = members.sort();
  }
  return out;
}

const errorMembers = ['code', 'file', 'message', 'name', 'stack'];

const EXPECTED_MAIN: Record<string, string[]> = {
  getBuildInfo: [],
  loadModel: [],
  Model: [
    '[Symbol.asyncDispose]',
    'applyChatTemplate',
    'config',
    'contextSize',
    'createSequence',
    'defaultPolicy',
    'detokenize',
    'dir',
    'dispose',
    'disposed',
    'evaluate',
    'generate',
    'info',
    'stream',
    'tokenize',
    'tokenizer',
  ],
  Sequence: [
    '[Symbol.asyncDispose]',
    '[Symbol.dispose]',
    'contextSize',
    'dispose',
    'disposed',
    'evaluate',
    'generate',
    'model',
    'reset',
    'stream',
    'tokens',
  ],
  ChatSession: ['getHistory', 'prompt', 'sequence', 'setHistory', 'stream'],
  GenerationStream: ['[Symbol.asyncDispose]', '[Symbol.asyncIterator]', '[Symbol.dispose]', 'cancel', 'result'],
  Tokenizer: [
    'addBosToken',
    'applyChatTemplate',
    'bosToken',
    'bosTokenId',
    'chatTemplate',
    'decode',
    'encode',
    'eosToken',
    'isSpecial',
    'minTokens',
    'size',
  ],
  DepthgateServer: ['close', 'httpServer', 'listen', 'modelId', 'ready', 'stats'],
  createServer: [],
  validatePolicy: [],
  parsePolicy: [],
  formatPolicy: [],
  d3Depth: [],
  d3LayerSet: [],
  SUPPORTED_ARCHITECTURES: [],
  readModelConfig: [],
  FLEXIDEPTH_ARCHITECTURE: [],
  defaultModelDir: [],
  defaultModelSetup: [],
  DEFAULT_ADDON: [],
  measurePerplexity: [],
  depthColor: [],
  renderDepthAnsi: [],
  depthLegendAnsi: [],
  renderDepthViewAnsi: [],
  renderDepthHtml: [],
  cudaStatus: [],
  resolveBackend: [],
  // types
  GenerateInput: [],
  ModelInfo: [],
  EvaluateResult: [],
  EvaluateOptions: [],
  GenerateOptions: [],
  GenerateResult: [],
  LoadOptions: [],
  TokenChunk: [],
  DepthStats: [],
  SamplingOptions: [],
  GenerationDefaults: [],
  ResolvedSampling: [],
  Policy: [],
  NonePolicy: [],
  StaticPolicy: [],
  FlexiDepthPolicy: [],
  SkipLayerPolicy: [],
  D3Policy: [],
  SkipPolicy: [],
  SpeculativePolicy: [],
  SpeculativeStats: [],
  ChatMessage: [],
  ModelConfig: [],
  Architecture: [],
  DefaultPolicy: [],
  PerplexityOptions: [],
  PerplexityResult: [],
  DepthSpan: [],
  DepthViewInput: [],
  CudaStatus: [],
  GpuInfo: [],
  ServerState: [],
  ServerStats: [],
  ServerOptions: [],
  RequestRecord: [],
  ErrorBody: [],
  BuildInfo: [],
  DepthgateErrorCode: [],
  ChatRole: [],
  ChatSessionOptions: [],
  DepthAnsiOptions: [],
  // errors
  DepthgateError: errorMembers,
  ModelFormatError: errorMembers,
  ModelFileError: errorMembers,
  UnsupportedModelError: errorMembers,
  InvalidOptionError: [...errorMembers, 'option'].sort(),
  ContextOverflowError: errorMembers,
  OutOfMemoryError: errorMembers,
  DisposedError: errorMembers,
  AbortError: errorMembers,
  BackendUnavailableError: [...errorMembers, 'backend', 'reason'].sort(),
  NativeLoadError: [...errorMembers, 'attempts'].sort(),
  BusyError: errorMembers,
};

const EXPECTED_TESTING: Record<string, string[]> = {
  writeTinyModel: [],
  FLEXIDEPTH_ROUTER_GAIN: [],
  SKIPLAYER_ROUTER_GAIN: [],
  TINY_CHAT_TEMPLATE: [],
  bytesToUnicode: [],
  float32Bits: [],
  float32ToFloat16Bits: [],
  float32ToBfloat16Bits: [],
  TinyArch: [],
  TinyDtype: [],
  TinyRopeScaling: [],
  TinyModelOptions: [],
  TinyFlexiDepthOptions: [],
  TinySkipLayerOptions: [],
  TinyModelSpecialTokens: [],
  TinyModelInfo: [],
  writeGguf: [],
  ggufBytes: [],
  GGUF_VALUE_TYPES: [],
  GGML_TYPES: [],
  GgufFileSpec: [],
  GgufTensor: [],
  GgufTensorType: [],
  GgufMetadataValue: [],
  GgufScalarType: [],
  convertToGguf: [],
  ggufTensorName: [],
  GGUF_TOKEN_TYPE: [],
  GgufConvertOptions: [],
};

test('depthgate exports exactly the documented API, with no internal member', () => {
  const got = surface('index.d.ts');
  expect(Object.keys(got).sort()).toEqual(Object.keys(EXPECTED_MAIN).sort());
  for (const [name, members] of Object.entries(EXPECTED_MAIN))
    expect([name, got[name]]).toEqual([name, [...members].sort()]);
  // The binding's types and the test fixtures are not part of it.
  expect(Object.keys(got).filter((k) => /^Native(?!LoadError)|Tiny|writeTinyModel/.test(k))).toEqual([]);
});

test('depthgate/testing exports the fixtures, and only them', () => {
  const got = surface('testing/index.d.ts');
  expect(got).toEqual(Object.fromEntries(Object.entries(EXPECTED_TESTING).map(([k, v]) => [k, [...v].sort()])));
});
