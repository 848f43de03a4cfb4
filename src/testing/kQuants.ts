/**
 * llama.cpp's K-quant formats Q4_K and Q6_K (ggml-common.h block_q4_K / block_q6_K) for tests:
 * the reference quantizers (quantize_row_q4_K_ref / quantize_row_q6_K_ref in ggml-quants.c:
 * make_qkx2_quants and make_qx_quants) written again in TypeScript with f32 arithmetic modelled
 * step by step (Math.fround after every operation, ties-to-even rounding for nearest_int), and the
 * decoders. The engine has its own C++ implementation (native/cpu/kquant.cc); the tests check the
 * two write the same bytes. Layouts:
 *  * Q4_K, 144 bytes per 256 weights: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins of 8
 *    sub-blocks of 32, 128 bytes of nibbles (bytes 32c + l: weight 64c + l low, 64c + 32 + l high);
 *    weight = d * sc * q - dmin * m.
 *  * Q6_K, 210 bytes per 256 weights: ql[128] low 4 bits, qh[64] high 2 bits, int8 scales[16] (one
 *    per 16 weights), f16 d; weight = d * scale * (q - 32).
 */
import { float32ToFloat16Bits } from './floatBits';

const f = Math.fround;
const F01 = f(0.1);
const GROUP_EPS = f(1e-15);

// The hot paths use no Math.max / min / floor / abs: under jest's vm context they run about 100x
// slower than these comparisons (Math.fround does not).

/** nearest_int of an f32 value: to nearest, ties to even (clamped first, as the engine's is). */
function rint(v: number): number {
  const c = v > 4e6 ? 4e6 : v < -4e6 ? -4e6 : v;
  const t = c | 0; // truncation toward zero; |c| <= 4e6
  const fl = c < t ? t - 1 : t;
  const diff = c - fl;
  return diff > 0.5 ? fl + 1 : diff < 0.5 ? fl : (fl & 1) === 0 ? fl : fl + 1;
}
const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);
const abs = (v: number) => (v < 0 ? -v : v);

/** The value of IEEE binary16 bits. */
export function float16Value(h: number): number {
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const s = h & 0x8000 ? -1 : 1;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
/** An f32 stored as f16 and read back. */
const viaF16 = (v: number): [number, number] => {
  const h = float32ToFloat16Bits(v);
  return [h, float16Value(h)];
};

/** make_qkx2_quants(32, 15, x, w, L, &min, Laux, -1, 0.1, 20, false): [scale, -min]. */
function fitScaleMin(x: number[], w: number[], L: Uint8Array): [number, number] {
  const n = 32;
  const nmax = 15;
  let lo = x[0]!;
  let hi = x[0]!;
  let sumW = w[0]!;
  let sumX = f(w[0]! * x[0]!);
  for (let i = 1; i < n; i++) {
    if (x[i]! < lo) lo = x[i]!;
    if (x[i]! > hi) hi = x[i]!;
    sumW = f(sumW + w[i]!);
    sumX = f(sumX + f(w[i]! * x[i]!));
  }
  if (lo > 0) lo = 0;
  if (hi === lo) {
    L.fill(0);
    return [0, -lo];
  }
  let iscale = f(nmax / f(hi - lo));
  let scale = f(1 / iscale);
  let best = 0;
  for (let i = 0; i < n; i++) {
    L[i] = clamp(rint(f(iscale * f(x[i]! - lo))), 0, nmax);
    const diff = f(f(f(scale * L[i]!) + lo) - x[i]!);
    best = f(best + f(w[i]! * f(diff * diff)));
  }
  const cand = new Uint8Array(n);
  for (let s = 0; s <= 20; s++) {
    iscale = f(f(f(-1 + f(F01 * s)) + nmax) / f(hi - lo));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(rint(f(iscale * f(x[i]! - lo))), 0, nmax);
      cand[i] = l;
      const wl = f(w[i]! * l);
      sumL = f(sumL + wl);
      sumL2 = f(sumL2 + f(wl * l));
      sumXL = f(sumXL + f(wl * x[i]!));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (!(D > 0)) continue;
    let cs = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
    let cm = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
    if (cm > 0) {
      cm = 0;
      cs = f(sumXL / sumL2);
    }
    let err = 0;
    for (let i = 0; i < n; i++) {
      const diff = f(f(f(cs * cand[i]!) + cm) - x[i]!);
      err = f(err + f(w[i]! * f(diff * diff)));
    }
    if (err < best) {
      L.set(cand);
      best = err;
      scale = cs;
      lo = cm;
    }
  }
  return [scale, -lo];
}

/** make_qx_quants(16, 32, x, L, 1, NULL): the scale; L gets codes + 32 (0 for an all-zero group). */
function fitSymmetric(x: number[], L: Int8Array): number {
  const n = 16;
  const nmax = 32;
  let max = 0;
  let amax = 0;
  for (const v of x)
    if (abs(v) > amax) {
      amax = abs(v);
      max = v;
    }
  if (amax < GROUP_EPS) {
    L.fill(0);
    return 0;
  }
  const code = (iscale: number, i: number) => clamp(rint(f(iscale * x[i]!)), -nmax, nmax - 1);
  let iscale = f(-nmax / max);
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const l = code(iscale, i);
    L[i] = l + nmax;
    const w = f(x[i]! * x[i]!);
    sumLX = f(sumLX + f(f(w * x[i]!) * l));
    sumL2 = f(sumL2 + f(f(w * l) * l));
  }
  let scale = sumL2 !== 0 ? f(sumLX / sumL2) : 0;
  let best = f(scale * sumLX);
  for (let s = -9; s <= 9; s++) {
    if (s === 0) continue;
    iscale = f(-f(nmax + f(F01 * s)) / max);
    sumLX = 0;
    sumL2 = 0;
    for (let i = 0; i < n; i++) {
      const l = code(iscale, i);
      const w = f(x[i]! * x[i]!);
      sumLX = f(sumLX + f(f(w * x[i]!) * l));
      sumL2 = f(sumL2 + f(f(w * l) * l));
    }
    if (sumL2 > 0 && f(sumLX * sumLX) > f(best * sumL2)) {
      for (let i = 0; i < n; i++) L[i] = code(iscale, i) + nmax;
      scale = f(sumLX / sumL2);
      best = f(scale * sumLX);
    }
  }
  return scale;
}

/** Q4_K's scale and min of sub-block j from the 12 packed bytes (get_scale_min_k4). */
function scaleMin(s: Uint8Array, j: number): [number, number] {
  if (j < 4) return [s[j]! & 63, s[j + 4]! & 63];
  return [(s[j + 4]! & 0x0f) | ((s[j - 4]! >> 6) << 4), (s[j + 4]! >> 4) | ((s[j]! >> 6) << 4)];
}

/** Finite f32 values of x (non-finite coded as 0, as the engine's quantizer does). */
function cleanBlock(x: ArrayLike<number>, from: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < 256; i++) {
    const v = f(x[from + i]!);
    out.push(Number.isFinite(v) ? v : 0);
  }
  return out;
}

function quantizeBlockQ4K(x: number[], blk: Uint8Array): void {
  const L = new Uint8Array(256);
  const scales: number[] = [];
  const mins: number[] = [];
  let maxScale = 0;
  let maxMin = 0;
  for (let j = 0; j < 8; j++) {
    const xs = x.slice(32 * j, 32 * j + 32);
    let sumX2 = 0;
    for (const v of xs) sumX2 = f(sumX2 + f(v * v));
    const avX = f(Math.sqrt(f(sumX2 / 32)));
    const w = xs.map((v) => f(avX + abs(v)));
    const [sc, mn] = fitScaleMin(xs, w, L.subarray(32 * j, 32 * j + 32));
    scales.push(sc);
    mins.push(mn);
    if (sc > maxScale) maxScale = sc;
    if (mn > maxMin) maxMin = mn;
  }
  const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
  const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
  const s = blk.subarray(4, 16);
  for (let j = 0; j < 8; j++) {
    const ls = Math.min(63, rint(f(invScale * scales[j]!)) & 0xff);
    const lm = Math.min(63, rint(f(invMin * mins[j]!)) & 0xff);
    if (j < 4) {
      s[j] = ls;
      s[j + 4] = lm;
    } else {
      s[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
      s[j - 4] = s[j - 4]! | ((ls >> 4) << 6);
      s[j] = s[j]! | ((lm >> 4) << 6);
    }
  }
  const [dh, d] = viaF16(f(maxScale / 63));
  const [mh, dmin] = viaF16(f(maxMin / 63));
  blk[0] = dh & 0xff;
  blk[1] = dh >> 8;
  blk[2] = mh & 0xff;
  blk[3] = mh >> 8;
  for (let j = 0; j < 8; j++) {
    const [sc, m] = scaleMin(s, j);
    const dj = f(d * sc);
    if (dj === 0) continue;
    const mj = f(dmin * m);
    for (let i = 0; i < 32; i++) L[32 * j + i] = clamp(rint(f(f(x[32 * j + i]! + mj) / dj)), 0, 15);
  }
  for (let c = 0; c < 4; c++)
    for (let l = 0; l < 32; l++) blk[16 + 32 * c + l] = L[64 * c + l]! | (L[64 * c + 32 + l]! << 4);
}

function quantizeBlockQ6K(x: number[], blk: Uint8Array): void {
  const L = new Int8Array(256);
  const scales: number[] = [];
  let maxScale = 0;
  let maxAbs = 0;
  for (let b = 0; b < 16; b++) {
    const sc = fitSymmetric(x.slice(16 * b, 16 * b + 16), L.subarray(16 * b, 16 * b + 16));
    scales.push(sc);
    if (abs(sc) > maxAbs) {
      maxAbs = abs(sc);
      maxScale = sc;
    }
  }
  blk.fill(0);
  if (maxAbs < GROUP_EPS) return;
  const iscale = f(-128 / maxScale);
  const [dh, d] = viaF16(f(1 / iscale));
  blk[208] = dh & 0xff;
  blk[209] = dh >> 8;
  const sc = new Int8Array(blk.buffer, blk.byteOffset + 192, 16);
  for (let b = 0; b < 16; b++) sc[b] = clamp(rint(f(iscale * scales[b]!)), -128, 127);
  for (let b = 0; b < 16; b++) {
    const db = f(d * sc[b]!);
    if (db === 0) continue;
    for (let i = 0; i < 16; i++) L[16 * b + i] = clamp(rint(f(x[16 * b + i]! / db)), -32, 31) + 32;
  }
  for (let h = 0; h < 2; h++) {
    const o = 128 * h;
    for (let l = 0; l < 32; l++) {
      blk[64 * h + l] = (L[o + l]! & 0x0f) | ((L[o + l + 64]! & 0x0f) << 4);
      blk[64 * h + 32 + l] = (L[o + l + 32]! & 0x0f) | ((L[o + l + 96]! & 0x0f) << 4);
      blk[128 + 32 * h + l] =
        (L[o + l]! >> 4) | ((L[o + l + 32]! >> 4) << 2) | ((L[o + l + 64]! >> 4) << 4) | ((L[o + l + 96]! >> 4) << 6);
    }
  }
}

/** The block format a K-quant tensor is written in. */
export type KQuantType = 'Q4_K' | 'Q6_K';
/** Bytes of one 256-weight super-block. */
export const KQUANT_BLOCK_BYTES: Record<KQuantType, number> = { Q4_K: 144, Q6_K: 210 };

/** Quantizes `x` (a multiple of 256 long; rows back to back) as llama.cpp's reference quantizer does. */
export function quantizeKQuant(type: KQuantType, x: ArrayLike<number>): Uint8Array {
  if (x.length % 256 !== 0) throw new RangeError(`quantizeKQuant: ${x.length} values are not whole blocks of 256`);
  const bb = KQUANT_BLOCK_BYTES[type];
  const out = new Uint8Array((x.length / 256) * bb);
  for (let b = 0; b < x.length / 256; b++) {
    const blk = out.subarray(b * bb, (b + 1) * bb);
    if (type === 'Q4_K') quantizeBlockQ4K(cleanBlock(x, b * 256), blk);
    else quantizeBlockQ6K(cleanBlock(x, b * 256), blk);
  }
  return out;
}

/** The f32 values of K-quant blocks, as llama.cpp's dequantize_row_q4_K / _q6_K compute them. */
export function dequantizeKQuant(type: KQuantType, bytes: Uint8Array): Float32Array {
  const bb = KQUANT_BLOCK_BYTES[type];
  const n = bytes.length / bb;
  const out = new Float32Array(n * 256);
  for (let b = 0; b < n; b++) {
    const blk = bytes.subarray(b * bb, (b + 1) * bb);
    const y = out.subarray(b * 256, (b + 1) * 256);
    if (type === 'Q4_K') {
      const d = float16Value(blk[0]! | (blk[1]! << 8));
      const dmin = float16Value(blk[2]! | (blk[3]! << 8));
      const s = blk.subarray(4, 16);
      for (let j = 0; j < 8; j++) {
        const [sc, m] = scaleMin(s, j);
        const dj = f(d * sc);
        const mj = f(dmin * m);
        const c = j >> 1;
        for (let l = 0; l < 32; l++) {
          const byte = blk[16 + 32 * c + l]!;
          y[32 * j + l] = f(f(dj * (j & 1 ? byte >> 4 : byte & 0x0f)) - mj);
        }
      }
    } else {
      const d = float16Value(blk[208]! | (blk[209]! << 8));
      const sc = new Int8Array(blk.buffer, blk.byteOffset + 192, 16);
      for (let i = 0; i < 256; i++) {
        const h = i >> 7;
        const g = (i >> 5) & 3;
        const l = i & 31;
        const lo = blk[64 * h + 32 * (g & 1) + l]!;
        const q = ((g < 2 ? lo : lo >> 4) & 0x0f) | (((blk[128 + 32 * h + l]! >> (2 * g)) & 3) << 4);
        y[i] = f(f(d * sc[i >> 4]!) * (q - 32));
      }
    }
  }
  return out;
}

/** llama.cpp's use_more_bits (llama-quant.cpp): the layers whose attn_v and ffn_down Q4_K_M keeps in Q6_K. */
export function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.trunc(layers / 8);
  return layer < eighth || layer >= Math.trunc((7 * layers) / 8) || (layer - eighth) % 3 === 2;
}
