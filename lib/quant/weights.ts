// Weight plumbing shared by the quantizers: fp32 copies of (read-only, memory-mapped) checkpoint weights,
// column scaling, and installing a quantized result on a linear.
import { dequantize } from '../export/pack';
import { f16ToF32 } from '../load/model';
import type { Linear } from '../load/types';
import { isF32Array, Weight } from '../native/addon';

/** An fp32 copy of a weight; a Float32Array already owned by lowbit is returned as is. */
export function toF32(w: Weight): Float32Array {
  if (isF32Array(w)) return w;
  if (w.dtype === 'F32') return w.data as Float32Array;
  const src = w.data as Uint16Array;
  const out = new Float32Array(src.length);
  if (w.dtype === 'BF16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < src.length; i++) u[i] = src[i] << 16;
  } else {
    for (let i = 0; i < src.length; i++) out[i] = f16ToF32(src[i]);
  }
  return out;
}

/** W[:, j] *= s[j] for W [rows, cols]; returns a new array. */
export function scaleColumns(w: Float32Array, cols: number, s: ArrayLike<number>, divide = false): Float32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length; i += cols) {
    for (let j = 0; j < cols; j++) out[i + j] = divide ? w[i + j] / s[j] : w[i + j] * s[j];
  }
  return out;
}

/** What a packed export needs besides the dequantized weights: integers in [0, 2^bits), per-group scales/zeros. */
export interface QuantizedTensor {
  bits: number;
  groupSize: number; // -1: one group per output channel
  sym: boolean;
  qweight: Uint8Array; // [out, in]
  scales: Float32Array; // [out, ngroups]
  zeros: Float32Array; // [out, ngroups]
  gIdx?: Int32Array; // [in] group of each input column (act-order)
}

/**
 * BiLLM's binarized weight [rows, cols] as it is stored (lowbit format "binary", docs/formats.md) and run
 * by the 1-bit kernels (native/cpu/binary.h): per column a salient bit, per weight a 2-bit code, per row
 * and block 8 fp16 scales (α1 μ1 α2 μ2 αc μc αs μs).
 */
export interface BinaryTensor {
  block: number;
  salient: Uint8Array; // [ceil(cols/8)] bit c%8 of byte c/8
  codes: Int32Array; // [rows, ceil(cols/16)] bits 2(c%16), 2(c%16)+1 of word c/16: first sign, second bit
  scales: Uint16Array; // [rows, ceil(cols/block), 8] fp16 bits
}

export interface QuantizedLinear extends Linear {
  quantized?: QuantizedTensor;
  binary?: BinaryTensor;
}

/**
 * Installs q with `lin.weight` as a getter that dequantizes it on each access (scale·(q − zero) rounded to fp32:
 * bit for bit what the GPU solver computed), for results whose fp32 weight is not worth carrying: the layer is
 * packed right after and the weight dropped. Assigning `lin.weight` replaces the getter with the value.
 */
export function installDequantizedOnAccess(lin: QuantizedLinear, q: QuantizedTensor): void {
  lin.quantized = q;
  lin.binary = undefined;
  Object.defineProperty(lin, 'weight', {
    configurable: true,
    enumerable: true,
    get: (): Float32Array => dequantize(q, lin.inFeatures),
    set: (v: Float32Array | undefined) => Object.defineProperty(lin, 'weight', { value: v, writable: true, enumerable: true, configurable: true }),
  });
}

export function install(lin: QuantizedLinear, weight: Float32Array, q?: QuantizedTensor, binary?: BinaryTensor): void {
  lin.weight = weight;
  lin.quantized = q;
  lin.binary = binary;
}
