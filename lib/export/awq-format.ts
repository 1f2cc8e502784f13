// AutoAWQ's GEMM checkpoint layout (4-bit only), per linear:
//   {prefix}.qweight  I32 [in, out/8]        8 output columns per word, nibble s holding column 8c + ORDER[s]
//   {prefix}.qzeros   I32 [ngroups, out/8]   the same order; zeros stored as they are (no −1)
//   {prefix}.scales   F16 [ngroups, out]
// w[o, i] = scales[i / group, o] · (q[i, o] − zero[i / group, o]). No g_idx: groups are contiguous columns.
import { LowbitError } from '../load/errors';
import type { TensorToWrite } from '../load/safetensors';
import type { QuantizedTensor } from '../quant/weights';
import { isTrivialGIdx, toF16Bits } from './pack';

export const AWQ_ORDER: readonly number[] = [0, 2, 4, 6, 1, 3, 5, 7];

export interface AwqTensors {
  qweight: Int32Array;
  qzeros: Int32Array;
  scales: Uint16Array;
}

export function awqUnfit(q: QuantizedTensor, out: number, inF: number): string | undefined {
  if (q.bits !== 4) return `AWQ GEMM checkpoints hold 4-bit weights only, not ${q.bits}-bit`;
  if (q.groupSize <= 0) return 'AWQ checkpoints need a group size (per-channel weights are not supported by AWQ readers)';
  if (inF % q.groupSize) return `group size ${q.groupSize} does not divide in_features ${inF}`;
  if (out % 8) return `out_features ${out} is not a multiple of 8`;
  if (!isTrivialGIdx(q, inF)) return 'act-order (desc_act) GPTQ weights permute groups with g_idx, which AWQ checkpoints cannot store; export --format gptq or quantize with no-act-order';
  for (const z of q.zeros) if (!(Number.isInteger(z) && z >= 0 && z <= 15)) return `zero point ${z} is not an integer in [0, 15]`;
  return undefined;
}

export function packAwq(q: QuantizedTensor, out: number, inF: number): AwqTensors {
  const why = awqUnfit(q, out, inF);
  if (why) throw new LowbitError('BAD_ARGUMENT', `cannot pack as AWQ: ${why}`);
  const ng = inF / q.groupSize;
  const wpr = out / 8;
  const qweight = new Int32Array(inF * wpr);
  const qzeros = new Int32Array(ng * wpr);
  const scales = new Float32Array(ng * out);
  for (let c = 0; c < wpr; c++) {
    for (let s = 0; s < 8; s++) {
      const o = c * 8 + AWQ_ORDER[s];
      for (let i = 0; i < inF; i++) qweight[i * wpr + c] |= q.qweight[o * inF + i] << (4 * s);
      for (let g = 0; g < ng; g++) {
        qzeros[g * wpr + c] |= q.zeros[o * ng + g] << (4 * s);
        scales[g * out + o] = q.scales[o * ng + g];
      }
    }
  }
  return { qweight, qzeros, scales: toF16Bits(scales) };
}

export function unpackAwq(t: { qweight: Int32Array; qzeros: Int32Array; scales: Float32Array }, out: number, inF: number, groupSize: number): QuantizedTensor {
  const ng = inF / groupSize;
  const wpr = out / 8;
  const qweight = new Uint8Array(out * inF);
  const scales = new Float32Array(out * ng);
  const zeros = new Float32Array(out * ng);
  for (let c = 0; c < wpr; c++) {
    for (let s = 0; s < 8; s++) {
      const o = c * 8 + AWQ_ORDER[s];
      for (let i = 0; i < inF; i++) qweight[o * inF + i] = (t.qweight[i * wpr + c] >>> (4 * s)) & 15;
      for (let g = 0; g < ng; g++) {
        zeros[o * ng + g] = (t.qzeros[g * wpr + c] >>> (4 * s)) & 15;
        scales[o * ng + g] = t.scales[g * out + o];
      }
    }
  }
  const gIdx = new Int32Array(inF);
  for (let i = 0; i < inF; i++) gIdx[i] = Math.floor(i / groupSize);
  return { bits: 4, groupSize, sym: false, qweight, scales, zeros, gIdx };
}

export function awqShapes(out: number, inF: number, ngroups: number): Record<'qweight' | 'qzeros' | 'scales', number[]> {
  return { qweight: [inF, out / 8], qzeros: [ngroups, out / 8], scales: [ngroups, out] };
}

export function awqLinearTensors(prefix: string, q: QuantizedTensor, out: number, inF: number): Record<string, TensorToWrite> {
  const p = packAwq(q, out, inF);
  const s = awqShapes(out, inF, inF / q.groupSize);
  return {
    [`${prefix}.qweight`]: { dtype: 'I32', shape: s.qweight, data: p.qweight },
    [`${prefix}.qzeros`]: { dtype: 'I32', shape: s.qzeros, data: p.qzeros },
    [`${prefix}.scales`]: { dtype: 'F16', shape: s.scales, data: p.scales },
  };
}
