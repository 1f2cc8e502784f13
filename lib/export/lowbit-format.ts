// lowbit's own checkpoint layout (quantization_config.quant_method "lowbit"), for what GPTQ/AWQ files cannot
// hold. docs/formats.md is the specification; per linear, one of:
//   uint      {p}.qweight I32 [ceil(in·bits/32), out] (the GPTQ bit stream, any bits 1..8), {p}.qzeros U8 [ngroups, out]
//             (zeros as they are), {p}.scales F32 [ngroups, out], {p}.g_idx I32 [in]: exact fp32 scales
//   int8      {p}.qweight I8 [out, in] = q − 2^(bits−1) (symmetric absmax, SmoothQuant), {p}.scales F32 [out]
//   codebook  {p}.codes I32 [out, ceil(in·cbits/32)] (a cbits-bit code per weight, stream along the input),
//             {p}.codebook F32 [out, nblocks, 2^cbits]: w[o, i] = codebook[o, i / block, code[o, i]] (BiLLM)
//   dense     {p}.weight F32 [out, in]
import { LowbitError } from '../load/errors';
import type { TensorToWrite } from '../load/safetensors';
import type { Linear } from '../load/types';
import { isF32Array } from '../native/addon';
import type { QuantSpec } from '../quant/spec';
import { toF32 } from '../quant/weights';
import { groupIndex, numGroups, packAlongInput, packStream, streamValue, streamWords } from './pack';

export type LowbitKind = 'uint' | 'int8' | 'codebook' | 'dense';
export const LOWBIT_FORMAT_VERSION = 1;
/** BiLLM gives at most 4 values per row and block for salient columns and 4 for the rest. */
export const MAX_CODEBOOK_BITS = 3;

function isAbsmaxSym(lin: Linear): boolean {
  const q = lin.quantized;
  if (!q || q.groupSize > 0 || !q.sym) return false;
  const mid = 1 << (q.bits - 1);
  return q.zeros.every((z) => z === mid);
}

export interface Codebook {
  cbits: number;
  block: number;
  codes: Int32Array; // [out, streamWords(in, cbits)]
  codebook: Float32Array; // [out, nblocks, 2^cbits]
}

/** Exact codebook form of w [out, in]: per row and block of columns, its distinct values; undefined if any has > 2^maxBits. */
export function buildCodebook(w: Float32Array, out: number, inF: number, block: number, maxBits = MAX_CODEBOOK_BITS): Codebook | undefined {
  const nb = Math.ceil(inF / block);
  const bitsOf = new Uint32Array(w.buffer, w.byteOffset, w.length);
  const maps: Map<number, number>[] = [];
  let most = 1;
  for (let r = 0; r < out; r++) {
    for (let b = 0; b < nb; b++) {
      const m = new Map<number, number>();
      for (let i = b * block; i < Math.min(inF, (b + 1) * block); i++) {
        const k = bitsOf[r * inF + i];
        if (!m.has(k)) m.set(k, m.size);
      }
      if (m.size > 1 << maxBits) return undefined;
      most = Math.max(most, m.size);
      maps.push(m);
    }
  }
  const cbits = Math.max(1, Math.ceil(Math.log2(most)));
  const ncode = 1 << cbits;
  const wpr = streamWords(inF, cbits);
  const codes = new Int32Array(out * wpr);
  const codebook = new Float32Array(out * nb * ncode);
  const cbBits = new Uint32Array(codebook.buffer);
  for (let r = 0; r < out; r++) {
    for (let b = 0; b < nb; b++) for (const [k, idx] of maps[r * nb + b]) cbBits[(r * nb + b) * ncode + idx] = k;
    packStream(codes, r * wpr, 1, inF, cbits, (i) => maps[r * nb + Math.floor(i / block)].get(bitsOf[r * inF + i])!);
  }
  return { cbits, block, codes, codebook };
}

export function decodeCodebook(c: Codebook, out: number, inF: number): Float32Array {
  const nb = Math.ceil(inF / c.block);
  const ncode = 1 << c.cbits;
  const wpr = streamWords(inF, c.cbits);
  const w = new Float32Array(out * inF);
  for (let r = 0; r < out; r++) {
    for (let i = 0; i < inF; i++) {
      w[r * inF + i] = c.codebook[(r * nb + Math.floor(i / c.block)) * ncode + streamValue(c.codes, r * wpr, 1, i, c.cbits)];
    }
  }
  return w;
}

/** The tensors of one linear in lowbit's layout, and which kind it took. */
export function lowbitLinearTensors(prefix: string, lin: Linear, spec: QuantSpec): { tensors: Record<string, TensorToWrite>; kind: LowbitKind } {
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
  const w = isF32Array(lin.weight) ? lin.weight : toF32(lin.weight);
  if (spec.method === 'billm') {
    const c = buildCodebook(w, out, inF, spec.groupSize > 0 ? spec.groupSize : inF);
    if (c) {
      return {
        kind: 'codebook',
        tensors: {
          [`${prefix}.codes`]: { dtype: 'I32', shape: [out, streamWords(inF, c.cbits)], data: c.codes },
          [`${prefix}.codebook`]: { dtype: 'F32', shape: [out, Math.ceil(inF / c.block), 1 << c.cbits], data: c.codebook },
        },
      };
    }
  }
  return { kind: 'dense', tensors: { [`${prefix}.weight`]: { dtype: 'F32', shape: [out, inF], data: w } } };
}
