/**
 * llama.cpp's reference quantizers for Q8_0 and Q4_0 (quantize_row_q8_0_ref / quantize_row_q4_0_ref
 * in ggml-quants.c), written again here for tests, with f32 arithmetic modelled by Math.fround,
 * and for Q4_K / Q6_K those of src/testing/kQuants.ts: what a weight means after the engine
 * quantized it on load, in float64.
 */
import { dequantizeKQuant, quantizeKQuant, useMoreBits } from '../../src/testing/kQuants';
import { roundF16, type ReferenceModel } from './reference';

/** A `weights` load option other than 'stored'. */
export type WeightsOption = 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';
/** The formats one matrix can be in. */
export type BlockFormat = 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

/** C's roundf: halves away from zero. */
const roundAway = (v: number): number => Math.sign(v) * Math.round(Math.abs(v));

/** The values of `row` (a multiple of 32 long) after quantizing to `format` and decoding. */
export function quantizeDequantize(row: Float64Array, format: BlockFormat): Float64Array {
  if (format === 'q4_k' || format === 'q6_k') {
    const type = format === 'q4_k' ? 'Q4_K' : 'Q6_K';
    return Float64Array.from(dequantizeKQuant(type, quantizeKQuant(type, row)));
  }
  const out = new Float64Array(row.length);
  for (let b = 0; b < row.length; b += 32) {
    const x = Array.from(row.subarray(b, b + 32), Math.fround);
    if (format === 'q8_0') {
      const amax = Math.max(...x.map(Math.abs));
      const d = Math.fround(amax / 127);
      const id = d !== 0 ? Math.fround(1 / d) : 0;
      const dStored = roundF16(d);
      for (let j = 0; j < 32; j++) out[b + j] = dStored * roundAway(Math.fround(x[j]! * id));
    } else {
      let amax = 0;
      let max = 0;
      for (const v of x)
        if (amax < Math.abs(v)) {
          amax = Math.abs(v);
          max = v;
        }
      const d = Math.fround(max / -8);
      const id = d !== 0 ? Math.fround(1 / d) : 0;
      const dStored = roundF16(d);
      for (let j = 0; j < 32; j++) {
        const q = Math.min(15, Math.trunc(Math.fround(Math.fround(x[j]! * id) + 8.5)));
        out[b + j] = dStored * (q - 8);
      }
    }
  }
  return out;
}

/**
 * An activation row as a quantized matmul of the engine sees it (native/cpu/matmul_quant.cc, and
 * with block 256 matmul_kquant.cc): in f32, then per block d = max|x| / 127 and
 * q = rint(x * (127 / max|x|)), ties to even.
 */
export function quantizeActivation(row: Float64Array, block = 32): Float64Array {
  const out = new Float64Array(row.length);
  for (let b = 0; b < row.length; b += block) {
    const x = Array.from(row.subarray(b, b + block), Math.fround);
    const amax = x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const d = Math.fround(amax / 127);
    const inv = amax !== 0 ? Math.fround(127 / amax) : 0;
    for (let j = 0; j < block; j++) out[b + j] = d * roundEven(Math.fround(x[j]! * inv));
  }
  return out;
}

/**
 * The activation rounding of every matmul of a model loaded with `weights`: 256-wide blocks for
 * a K-quant option where the width allows (every matrix reading a row of that width is a K-quant
 * then), 32-wide otherwise (the Q8_0 fallback, or the 32-wide formats).
 */
export function activationRounding(weights: WeightsOption): (row: Float64Array) => Float64Array {
  const k = weights === 'q4_k' || weights === 'q6_k';
  return (row) => quantizeActivation(row, k && row.length % 256 === 0 ? 256 : 32);
}

function roundEven(v: number): number {
  const f = Math.floor(v);
  const diff = v - f;
  return diff > 0.5 ? f + 1 : diff < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

function quantizeMatrix(data: Float64Array, cols: number, format: BlockFormat): Float64Array {
  const out = new Float64Array(data.length);
  for (let r = 0; r < data.length; r += cols) out.set(quantizeDequantize(data.subarray(r, r + cols), format), r);
  return out;
}

/**
 * The format loadModel(dir, { weights }) gives each matrix (native/quantize_model.cc): 'q8_0' /
 * 'q4_0' every projection, the LM head Q8_0; 'q4_k' llama.cpp's Q4_K_M mix (Q4_K, v and down Q6_K
 * on the layers useMoreBits picks, the LM head Q6_K); 'q6_k' all Q6_K; a K-quant matrix not 256k
 * wide is Q8_0 instead.
 */
export function formatOf(weights: WeightsOption, name: string, cols: number, layers: number): BlockFormat {
  const k = weights === 'q4_k' || weights === 'q6_k';
  let f: BlockFormat = weights;
  if (name === 'lm_head.weight') f = k ? 'q6_k' : 'q8_0';
  else if (weights === 'q4_k') {
    const m = /^model\.layers\.(\d+)\.(self_attn\.v_proj|mlp\.down_proj)\.weight$/.exec(name);
    if (m && useMoreBits(Number(m[1]), layers)) f = 'q6_k';
  }
  return (f === 'q4_k' || f === 'q6_k') && cols % 256 !== 0 ? 'q8_0' : f;
}

/**
 * The reference model as the engine holds it after loadModel(dir, { weights }): every layer's q,
 * k, v, o, gate, up and down and the LM head in the format formatOf gives them (tied models get an
 * lm_head of their own, the embedding table keeps its values), everything else unchanged.
 */
export function quantizedReference(model: ReferenceModel, weights: WeightsOption): ReferenceModel {
  const tensors = new Map(model.tensors);
  const names: string[] = [];
  for (let l = 0; l < model.config.layers; l++)
    for (const n of [
      'self_attn.q_proj',
      'self_attn.k_proj',
      'self_attn.v_proj',
      'self_attn.o_proj',
      'mlp.gate_proj',
      'mlp.up_proj',
      'mlp.down_proj',
    ])
      names.push(`model.layers.${l}.${n}.weight`);
  const layers = model.config.layers;
  for (const n of names) {
    const t = model.tensors.get(n)!;
    const format = formatOf(weights, n, t.shape[1]!, layers);
    tensors.set(n, { shape: t.shape, data: quantizeMatrix(t.data, t.shape[1]!, format) });
  }
  const head = model.tensors.get(model.config.tied ? 'model.embed_tokens.weight' : 'lm_head.weight')!;
  const headFormat = formatOf(weights, 'lm_head.weight', head.shape[1]!, layers);
  tensors.set('lm_head.weight', { shape: head.shape, data: quantizeMatrix(head.data, head.shape[1]!, headFormat) });
  return { ...model, tensors, config: { ...model.config, tied: false } };
}
