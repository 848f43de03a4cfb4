/**
 * llama.cpp's reference quantizers for Q8_0 and Q4_0 (quantize_row_q8_0_ref / quantize_row_q4_0_ref
 * in ggml-quants.c), written again here for tests, with f32 arithmetic modelled by Math.fround:
 * what a weight means after the engine quantized it on load, in float64.
 */
import { roundF16, type ReferenceModel } from './reference';

export type BlockFormat = 'q8_0' | 'q4_0';

/** C's roundf: halves away from zero. */
const roundAway = (v: number): number => Math.sign(v) * Math.round(Math.abs(v));

/** The values of `row` (a multiple of 32 long) after quantizing to `format` and decoding. */
export function quantizeDequantize(row: Float64Array, format: BlockFormat): Float64Array {
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
 * An activation row as a quantized matmul of the engine sees it (native/cpu/matmul_quant.cc): in
 * f32, then per block of 32 d = max|x| / 127 and q = rint(x * (127 / max|x|)), ties to even.
 */
export function quantizeActivation(row: Float64Array): Float64Array {
  const out = new Float64Array(row.length);
  for (let b = 0; b < row.length; b += 32) {
    const x = Array.from(row.subarray(b, b + 32), Math.fround);
    const amax = Math.max(...x.map(Math.abs));
    const d = Math.fround(amax / 127);
    const inv = amax !== 0 ? Math.fround(127 / amax) : 0;
    for (let j = 0; j < 32; j++) out[b + j] = d * roundEven(Math.fround(x[j]! * inv));
  }
  return out;
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
 * The reference model as the engine holds it after loadModel(dir, { weights: format }): every
 * layer's q, k, v, o, gate, up and down in `format`, the LM head in Q8_0 (tied models get an
 * lm_head of their own, the embedding table keeps its values), everything else unchanged.
 */
export function quantizedReference(model: ReferenceModel, format: BlockFormat): ReferenceModel {
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
  for (const n of names) {
    const t = model.tensors.get(n)!;
    tensors.set(n, { shape: t.shape, data: quantizeMatrix(t.data, t.shape[1]!, format) });
  }
  const head = model.tensors.get(model.config.tied ? 'model.embed_tokens.weight' : 'lm_head.weight')!;
  tensors.set('lm_head.weight', { shape: head.shape, data: quantizeMatrix(head.data, head.shape[1]!, 'q8_0') });
  return { ...model, tensors, config: { ...model.config, tied: false } };
}
