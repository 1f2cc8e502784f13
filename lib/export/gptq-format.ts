// The GPTQ checkpoint layout that AutoGPTQ / GPTQModel write and transformers / vLLM read, per linear:
//   {prefix}.qweight  I32 [in·bits/32, out]   integers packed along the input dimension (pack.ts bit stream)
//   {prefix}.qzeros   I32 [ngroups, out·bits/32] zero points packed along the output dimension; the v1
//                     ("gptq") checkpoint_format stores (zero − 1) & maxq, "gptq_v2" stores zero itself
//   {prefix}.scales   F16 [ngroups, out]
//   {prefix}.g_idx    I32 [in]   group of each input column (act-order permutes it)
// w[o, i] = scales[g, o] · (q[i, o] − zero[g, o]) with g = g_idx[i].
//
// The v1 convention cannot hold a zero of 0: it is stored as (0 − 1) & maxq = maxq. lowbit's reader adds 1
// modulo 2^bits, so every zero in [0, maxq] round-trips. AutoGPTQ's kernels and GPTQModel's v1→v2
// conversion add 1 without the modulo (GPTQModel adds 0x11111111-style constants to the packed words, so the
// carry also corrupts the neighbouring field): for them such a group dequantizes with zero 2^bits. packGptq
// counts those groups so the exporter can warn; "gptq_v2" has no such hole (GPTQModel reads it natively).
import { LowbitError } from '../load/errors';
import type { TensorToWrite } from '../load/safetensors';
import type { QuantizedTensor } from '../quant/weights';
import { groupIndex, numGroups, packAlongInput, packAlongRows, streamWords, toF16Bits, unpackAlongInput, unpackAlongRows } from './pack';

export type GptqCheckpointFormat = 'gptq' | 'gptq_v2';
export const GPTQ_BITS: readonly number[] = [2, 3, 4, 8];

export interface GptqTensors {
  qweight: Int32Array;
  qzeros: Int32Array;
  scales: Uint16Array; // fp16 bits
  gIdx: Int32Array;
}

/** Why q cannot be written in the GPTQ layout, or undefined when it can. */
export function gptqUnfit(q: QuantizedTensor, out: number, inF: number): string | undefined {
  if (!GPTQ_BITS.includes(q.bits)) return `GPTQ checkpoints hold 2, 3, 4 or 8 bits, not ${q.bits}`;
  if ((inF * q.bits) % 32) return `in_features ${inF} × ${q.bits} bits is not a whole number of int32 words`;
  if ((out * q.bits) % 32) return `out_features ${out} × ${q.bits} bits is not a whole number of int32 words`;
  if (q.groupSize > 0 && inF % q.groupSize) return `group size ${q.groupSize} does not divide in_features ${inF}`;
  const maxq = (1 << q.bits) - 1;
  for (const z of q.zeros) if (!(Number.isInteger(z) && z >= 0 && z <= maxq)) return `zero point ${z} is not an integer in [0, ${maxq}]`;
  return undefined;
}

export function packGptq(q: QuantizedTensor, out: number, inF: number, fmt: GptqCheckpointFormat = 'gptq'): GptqTensors & { zeroZeroGroups: number } {
  const why = gptqUnfit(q, out, inF);
  if (why) throw new LowbitError('BAD_ARGUMENT', `cannot pack as GPTQ: ${why}`);
  const ng = numGroups(q, inF);
  const maxq = (1 << q.bits) - 1;
  const off = fmt === 'gptq' ? 1 : 0;
  let zeroZeroGroups = 0;
  if (off) for (const z of q.zeros) if (z === 0) zeroZeroGroups++;
  // QuantizedTensor keeps scales/zeros [out, ngroups]; the file has [ngroups, out].
  const scalesT = new Float32Array(ng * out);
  for (let o = 0; o < out; o++) for (let g = 0; g < ng; g++) scalesT[g * out + o] = q.scales[o * ng + g];
  return {
    qweight: packAlongInput(q.qweight, out, inF, q.bits),
    qzeros: packAlongRows(ng, out, q.bits, (g, o) => (q.zeros[o * ng + g] - off) & maxq),
    scales: toF16Bits(scalesT),
    gIdx: Int32Array.from(groupIndex(q, inF)),
    zeroZeroGroups,
  };
}

/** Inverse of packGptq (scales already decoded to fp32). Shapes must have been checked by the caller. */
export function unpackGptq(
  t: { qweight: Int32Array; qzeros: Int32Array; scales: Float32Array; gIdx: Int32Array },
  out: number,
  inF: number,
  bits: number,
  groupSize: number,
  sym: boolean,
  fmt: GptqCheckpointFormat = 'gptq',
): QuantizedTensor {
  const ng = t.scales.length / out;
  const maxq = (1 << bits) - 1;
  const off = fmt === 'gptq' ? 1 : 0;
  const zT = unpackAlongRows(t.qzeros, ng, out, bits);
  const scales = new Float32Array(out * ng);
  const zeros = new Float32Array(out * ng);
  for (let g = 0; g < ng; g++) {
    for (let o = 0; o < out; o++) {
      scales[o * ng + g] = t.scales[g * out + o];
      zeros[o * ng + g] = (zT[g * out + o] + off) & maxq;
    }
  }
  return { bits, groupSize, sym, qweight: unpackAlongInput(t.qweight, out, inF, bits), scales, zeros, gIdx: t.gIdx };
}

export function gptqShapes(out: number, inF: number, bits: number, ngroups: number): Record<'qweight' | 'qzeros' | 'scales' | 'g_idx', number[]> {
  return { qweight: [streamWords(inF, bits), out], qzeros: [ngroups, streamWords(out, bits)], scales: [ngroups, out], g_idx: [inF] };
}

export function gptqLinearTensors(prefix: string, q: QuantizedTensor, out: number, inF: number, fmt: GptqCheckpointFormat): { tensors: Record<string, TensorToWrite>; zeroZeroGroups: number } {
  const p = packGptq(q, out, inF, fmt);
  const s = gptqShapes(out, inF, q.bits, numGroups(q, inF));
  return {
    tensors: {
      [`${prefix}.qweight`]: { dtype: 'I32', shape: s.qweight, data: p.qweight },
      [`${prefix}.qzeros`]: { dtype: 'I32', shape: s.qzeros, data: p.qzeros },
      [`${prefix}.scales`]: { dtype: 'F16', shape: s.scales, data: p.scales },
      [`${prefix}.g_idx`]: { dtype: 'I32', shape: s.g_idx, data: p.gIdx },
    },
    zeroZeroGroups: p.zeroZeroGroups,
  };
}
