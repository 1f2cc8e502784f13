// lowbit's own checkpoint layout (quantization_config.quant_method "lowbit"), for what GPTQ/AWQ files cannot
// hold. docs/formats.md is the specification; per linear, one of:
//   uint      {p}.qweight I32 [ceil(in·bits/32), out] (the GPTQ bit stream, any bits 1..8), {p}.qzeros U8 [ngroups, out]
//             (zeros as they are), {p}.scales F32 [ngroups, out], {p}.g_idx I32 [in]: exact fp32 scales
//   int8      {p}.qweight I8 [out, in] = q − 2^(bits−1) (symmetric absmax, SmoothQuant), {p}.scales F32 [out]
//   binary    {p}.salient U8 [ceil(in/8)], {p}.codes I32 [out, ceil(in/16)], {p}.scales F16 [out, nblocks, 8]
//             (BiLLM: salient-column bitmap, a 2-bit code per weight (the two bit planes interleaved),
//             α1 μ1 α2 μ2 αc μc αs μs per row and block)
//   dense     {p}.weight F32 [out, in]
import { LowbitError } from '../load/errors';
import type { TensorToWrite } from '../load/safetensors';
import type { Linear } from '../load/types';
import { isF32Array } from '../native/addon';
import type { QuantSpec } from '../quant/spec';
import { toF32, type QuantizedLinear } from '../quant/weights';
import { groupIndex, numGroups, packAlongInput, streamWords } from './pack';

export type LowbitKind = 'uint' | 'int8' | 'binary' | 'dense';
/** Version 2 replaced version 1's BiLLM "codebook" layout (a 3-bit code per weight) by "binary". */
export const LOWBIT_FORMAT_VERSION = 2;
export const BINARY_SCALES = 8;

function isAbsmaxSym(lin: Linear): boolean {
  const q = lin.quantized;
  if (!q || q.groupSize > 0 || !q.sym) return false;
  const mid = 1 << (q.bits - 1);
  return q.zeros.every((z) => z === mid);
}

/** The binary layout's tensor shapes for a [out, inF] weight in blocks of `block` columns. */
export function binaryShapes(out: number, inF: number, block: number): { salient: number[]; codes: number[]; scales: number[] } {
  return { salient: [Math.ceil(inF / 8)], codes: [out, Math.ceil(inF / 16)], scales: [out, Math.ceil(inF / block), BINARY_SCALES] };
}

/** The tensors of one linear in lowbit's layout, and which kind it took. */
export function lowbitLinearTensors(prefix: string, lin: QuantizedLinear, spec: QuantSpec): { tensors: Record<string, TensorToWrite>; kind: LowbitKind } {
  const out = lin.outFeatures;
  const inF = lin.inFeatures;
  const q = lin.quantized;
  if (q && (spec.method === 'smoothquant' || spec.method === 'naive') && isAbsmaxSym(lin)) {
    const mid = 1 << (q.bits - 1);
    const qi = new Int8Array(out * inF);
    for (let k = 0; k < qi.length; k++) qi[k] = q.qweight[k] - mid;
    return {
      kind: 'int8',
      tensors: {
        [`${prefix}.qweight`]: { dtype: 'I8', shape: [out, inF], data: qi },
        [`${prefix}.scales`]: { dtype: 'F32', shape: [out], data: Float32Array.from(q.scales) },
      },
    };
  }
  if (q) {
    const ng = numGroups(q, inF);
    const maxq = (1 << q.bits) - 1;
    if (q.scales.length !== out * ng) throw new LowbitError('BAD_ARGUMENT', `${prefix}: ${q.scales.length} scales, expected ${out}×${ng}`);
    const zeros = new Uint8Array(ng * out);
    const scales = new Float32Array(ng * out);
    for (let o = 0; o < out; o++) {
      for (let g = 0; g < ng; g++) {
        const z = q.zeros[o * ng + g];
        if (!(Number.isInteger(z) && z >= 0 && z <= maxq)) throw new LowbitError('BAD_ARGUMENT', `${prefix}: zero point ${z} is not an integer in [0, ${maxq}]`);
        zeros[g * out + o] = z;
        scales[g * out + o] = q.scales[o * ng + g];
      }
    }
    return {
      kind: 'uint',
      tensors: {
        [`${prefix}.qweight`]: { dtype: 'I32', shape: [streamWords(inF, q.bits), out], data: packAlongInput(q.qweight, out, inF, q.bits) },
        [`${prefix}.qzeros`]: { dtype: 'U8', shape: [ng, out], data: zeros },
        [`${prefix}.scales`]: { dtype: 'F32', shape: [ng, out], data: scales },
        [`${prefix}.g_idx`]: { dtype: 'I32', shape: [inF], data: Int32Array.from(groupIndex(q, inF)) },
      },
    };
  }
  if (lin.binary) {
    const b = lin.binary;
    const sh = binaryShapes(out, inF, b.block);
    return {
      kind: 'binary',
      tensors: {
        [`${prefix}.salient`]: { dtype: 'U8', shape: sh.salient, data: b.salient },
        [`${prefix}.codes`]: { dtype: 'I32', shape: sh.codes, data: b.codes },
        [`${prefix}.scales`]: { dtype: 'F16', shape: sh.scales, data: b.scales },
      },
    };
  }
  const w = isF32Array(lin.weight) ? lin.weight : toF32(lin.weight);
  return { kind: 'dense', tensors: { [`${prefix}.weight`]: { dtype: 'F32', shape: [out, inF], data: w } } };
}
