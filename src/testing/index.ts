/**
 * depthgate/testing: tiny, deterministic Hugging Face checkpoints for tests and benchmarks (the
 * project's own suite uses them; so can yours). Not part of the main entry: a test fixture is not
 * the library's API, and this subpath may change in a minor release.
 *
 * ```ts
 * import { writeTinyModel } from 'depthgate/testing';
 * writeTinyModel('/tmp/tiny', { arch: 'llama', layers: 2, dtype: 'bf16' });
 * ```
 */
export { writeTinyModel, FLEXIDEPTH_ROUTER_GAIN, SKIPLAYER_ROUTER_GAIN } from './tinyModel';
export type {
  TinyArch,
  TinyDtype,
  TinyRopeScaling,
  TinyModelOptions,
  TinyFlexiDepthOptions,
  TinySkipLayerOptions,
  TinyModelSpecialTokens,
  TinyModelInfo,
} from './tinyModelOptions';
export { TINY_CHAT_TEMPLATE, bytesToUnicode } from './bpeTokenizer';
export { float32Bits, float32ToFloat16Bits, float32ToBfloat16Bits } from './floatBits';
export { writeGguf, ggufBytes, GGUF_VALUE_TYPES, GGML_TYPES } from './ggufWriter';
export type { GgufFileSpec, GgufTensor, GgufTensorType, GgufMetadataValue, GgufScalarType } from './ggufWriter';
export { convertToGguf, ggufTensorName, GGUF_TOKEN_TYPE } from './ggufConvert';
export type { GgufConvertOptions } from './ggufConvert';
