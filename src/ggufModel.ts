/**
 * What loadModel needs of a GGUF file (`loadModel('model.gguf')`): the config and the tokenizer
 * from its metadata, and the file itself as the one weight file. The native loader maps its
 * tensors under their Hugging Face names (native/gguf_model.cc), so add-on files (FlexiDepth,
 * SkipLayer routers in safetensors) bind to a GGUF base exactly as to a safetensors one.
 */
import type { ModelConfig } from './config';
import { ggufModelConfig, readGgufHeader } from './ggufConfig';
import { ggufTokenizer } from './ggufTokenizer';
import { statRegularFile } from './modelFiles';
import type { Tokenizer } from './tokenizer';

/** True for a path loadModel opens as a GGUF file. */
export function isGgufPath(p: string): boolean {
  return p.toLowerCase().endsWith('.gguf');
}

/** A GGUF file as a model source: its config and tokenizer from the metadata, and the file as the weights. */
export function openGgufModel(file: string): { config: ModelConfig; tokenizer: Tokenizer; files: string[] } {
  statRegularFile(file, 'GGUF file');
  const header = readGgufHeader(file);
  const config = ggufModelConfig(header, file);
  const tokenizer = ggufTokenizer(header, file, config.bosTokenId);
  return { config, tokenizer, files: [file] };
}
