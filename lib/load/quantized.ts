// Import of quantized checkpoints: config.json's quantization_config (quant_method gptq | awq | lowbit), as
// lowbit writes it and as AutoGPTQ / GPTQModel (v1 "gptq" and "gptq_v2" checkpoint_format) and AutoAWQ (GEMM)
// write it. Each integer-packed linear becomes a QuantizedTensor (for the packed kernels; widths without a
// kernel also get their fp32 dequantization), each BiLLM one its binary tensors. Every error names the file
// and tensor at fault.
import * as path from 'path';
import { awqShapes, unpackAwq } from '../export/awq-format';
import { GptqCheckpointFormat, gptqShapes, unpackGptq } from '../export/gptq-format';
import { binaryShapes } from '../export/lowbit-format';
import { dequantize, fromF16Bits, streamWords, unpackAlongInput } from '../export/pack';
import { addon } from '../native/addon';
import type { BinaryTensor, QuantizedTensor } from '../quant/weights';
import { defaultSpec, Method, METHODS, QuantSpec } from '../quant/spec';
import { LowbitError } from './errors';
import type { CheckpointReader, DType, Tensor } from './safetensors';
import type { QuantizationState } from './types';

export interface QuantConfig {
  quantMethod: 'gptq' | 'awq' | 'lowbit';
  bits: number;
  /** -1: one group per output channel. */
  groupSize: number;
  sym: boolean;
  descAct: boolean;
  checkpointFormat: GptqCheckpointFormat;
  /** lowbit: the method and activation bits. */
  method?: Method;
  abits: number;
  /** config.json path, for messages. */
  file: string;
}

type Json = Record<string, unknown>;

/** quantization_config of a parsed config.json, validated; undefined for an unquantized model. */
export function readQuantConfig(raw: Json, dir: string): QuantConfig | undefined {
  const file = path.join(dir, 'config.json');
  const qc = raw.quantization_config as Json | undefined;
  if (qc === undefined || qc === null) return undefined;
  const bad = (m: string) => new LowbitError('BAD_CONFIG', `${file}: quantization_config.${m}`);
  if (typeof qc !== 'object' || Array.isArray(qc)) throw new LowbitError('BAD_CONFIG', `${file}: quantization_config must be an object`);
  const qm = qc.quant_method;
  if (qm !== 'gptq' && qm !== 'awq' && qm !== 'lowbit') {
    throw new LowbitError('UNSUPPORTED', `${file}: quantization_config.quant_method ${JSON.stringify(qm)} is not supported (gptq, awq, lowbit)`);
  }
  const bits = qc.bits ?? qc.w_bit;
  if (!Number.isInteger(bits) || (bits as number) < 1 || (bits as number) > 8) throw bad(`bits must be an integer 1..8, got ${JSON.stringify(bits)}`);
  const gs = qc.group_size ?? qc.q_group_size ?? -1;
  if (!Number.isInteger(gs) || (gs !== -1 && (gs as number) < 1)) throw bad(`group_size must be -1 or a positive integer, got ${JSON.stringify(gs)}`);
  const b = bits as number;
  if (qm === 'gptq' && ![2, 3, 4, 8].includes(b)) throw new LowbitError('UNSUPPORTED', `${file}: GPTQ checkpoints with ${b} bits are not supported (2, 3, 4, 8)`);
  if (qm === 'awq') {
    if (b !== 4) throw new LowbitError('UNSUPPORTED', `${file}: AWQ checkpoints with ${b} bits are not supported (AWQ GEMM is 4-bit only)`);
    const v = String(qc.version ?? 'gemm').toLowerCase();
    if (v !== 'gemm') throw new LowbitError('UNSUPPORTED', `${file}: AWQ version ${JSON.stringify(qc.version)} is not supported (only "gemm")`);
    if (qc.zero_point === false) throw new LowbitError('UNSUPPORTED', `${file}: AWQ without zero_point is not supported`);
    if (gs === -1) throw bad('group_size -1 is not valid for AWQ');
  }
  const cf = (qc.checkpoint_format ?? 'gptq') as string;
  if (qm === 'gptq' && cf !== 'gptq' && cf !== 'gptq_v2') {
    throw new LowbitError('UNSUPPORTED', `${file}: GPTQ checkpoint_format ${JSON.stringify(cf)} is not supported (gptq, gptq_v2)`);
  }
  if (qc.lm_head === true) throw new LowbitError('UNSUPPORTED', `${file}: quantized lm_head (quantization_config.lm_head: true) is not supported`);
  let method: Method | undefined;
  if (qm === 'lowbit') {
    if (qc.version !== 1 && qc.version !== 2) throw new LowbitError('UNSUPPORTED', `${file}: lowbit format version ${JSON.stringify(qc.version)} is not supported (1, 2)`);
    if (!METHODS.includes(qc.method as Method)) throw bad(`method must be one of ${METHODS.join(', ')}, got ${JSON.stringify(qc.method)}`);
    method = qc.method as Method;
  }
  const abits = qc.abits ?? 0;
  if (!Number.isInteger(abits) || (abits as number) < 0 || (abits as number) > 16) throw bad(`abits must be 0..16, got ${JSON.stringify(abits)}`);
  return {
    quantMethod: qm,
    bits: b,
    groupSize: gs as number,
    sym: qm === 'awq' ? false : qc.sym !== false,
    descAct: qc.desc_act === true,
    checkpointFormat: cf as GptqCheckpointFormat,
    method,
    abits: abits as number,
    file,
  };
}

/** The QuantizationState a quantized checkpoint implies (lowbit's own record wins when present). */
export function quantizationStateOf(qc: QuantConfig, lowbitRecord?: { settings?: QuantSpec; abits?: number }): QuantizationState {
  if (lowbitRecord?.settings) return { spec: lowbitRecord.settings, actBits: qc.abits || Number(lowbitRecord.abits ?? 0) };
  const spec = defaultSpec(qc.method ?? (qc.quantMethod === 'awq' ? 'awq' : 'gptq'));
  Object.assign(spec, { wbits: qc.bits, groupSize: qc.groupSize, sym: qc.sym, actOrder: qc.descAct, abits: qc.abits });
  return { spec, actBits: qc.abits };
}

function shapeStr(s: number[]): string {
  return `[${s.join(', ')}]`;
}

function expect(t: Tensor, dtypes: DType[], shape: number[], hint = ''): void {
  if (!dtypes.includes(t.dtype)) throw new LowbitError('BAD_DTYPE', `${t.file}: tensor "${t.name}" is ${t.dtype}, expected ${dtypes.join(' or ')}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new LowbitError('SHAPE_MISMATCH', `${t.file}: tensor "${t.name}" has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}${hint}`);
  }
}

function floats(t: Tensor): Float32Array {
  if (t.dtype === 'F32') return Float32Array.from(t.data as Float32Array);
  if (t.dtype === 'F16') return fromF16Bits(t.data as Uint16Array);
  const src = t.data as Uint16Array;
  const out = new Float32Array(src.length);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) u[i] = src[i] << 16;
  return out;
}

function checkGIdx(t: Tensor, ngroups: number): Int32Array {
  const g = Int32Array.from(t.data as Int32Array);
  for (let i = 0; i < g.length; i++) {
    if (g[i] < 0 || g[i] >= ngroups) {
      throw new LowbitError('BAD_CHECKPOINT', `${t.file}: tensor "${t.name}"[${i}] = ${g[i]} is out of range: there are ${ngroups} groups`);
    }
  }
  return g;
}

function bitsHint(rows: number, inF: number, bits: number, qc: QuantConfig): string {
  const implied = (rows * 32) / inF;
  return Number.isInteger(implied) && implied !== bits
    ? ` (it holds ${implied}-bit values, but ${qc.file} quantization_config.bits is ${bits})`
    : ` for ${bits}-bit values (${qc.file} quantization_config.bits)`;
}

function ngroupsOf(qc: QuantConfig, inF: number, base: string, file: string): number {
  if (qc.groupSize > 0 && inF % qc.groupSize) {
    throw new LowbitError('BAD_CHECKPOINT', `${file}: "${base}": group_size ${qc.groupSize} (${qc.file}) does not divide in_features ${inF}`);
  }
  return qc.groupSize > 0 ? inF / qc.groupSize : 1;
}

/** Bit widths the packed CPU kernels run (native/cpu/packed.h). */
export const PACKED_BITS = [2, 3, 4, 8];

export interface LoadedLinear {
  /** Dense fp32 weights, only where no packed kernel runs this linear (1/5/6/7 bits). */
  weight?: Float32Array;
  quantized?: QuantizedTensor;
  /** BiLLM: the stored tensors themselves (views of the mapped file), for the 1-bit kernels. */
  binary?: BinaryTensor;
}

/** The lowbit "binary" layout of linear `base`: shapes, dtypes and finite scales checked. */
function loadBinary(ckpt: CheckpointReader, base: string, out: number, inF: number, qc: QuantConfig): BinaryTensor {
  const block = qc.groupSize > 0 ? qc.groupSize : inF;
  const sh = binaryShapes(out, inF, block);
  const sal = ckpt.get(`${base}.salient`);
  expect(sal, ['U8'], sh.salient);
  const codes = ckpt.get(`${base}.codes`);
  expect(codes, ['I32'], sh.codes);
  const sc = ckpt.get(`${base}.scales`);
  expect(sc, ['F16'], sh.scales, ` (block ${block}: ${qc.file} quantization_config.group_size)`);
  const scales = sc.data as Uint16Array;
  for (let i = 0; i < scales.length; i++) {
    if ((scales[i] & 0x7c00) === 0x7c00) throw new LowbitError('BAD_CHECKPOINT', `${sc.file}: tensor "${sc.name}"[${i}] is not finite (fp16 bits 0x${scales[i].toString(16)})`);
  }
  return { block, salient: sal.data as Uint8Array, codes: codes.data as Int32Array, scales };
}

/** The linear `base` of a quantized checkpoint, or undefined when it is stored as a plain `.weight`. */
export function loadQuantizedLinear(ckpt: CheckpointReader, base: string, out: number, inF: number, qc: QuantConfig): LoadedLinear | undefined {
  if (qc.quantMethod === 'lowbit') {
    if (ckpt.has(`${base}.codebook`)) {
      throw new LowbitError('UNSUPPORTED', `${ckpt.get(`${base}.codebook`).file}: "${base}" uses lowbit format version 1's BiLLM codebook layout, which is no longer read: quantize the model again`);
    }
    if (ckpt.has(`${base}.codes`)) return { binary: loadBinary(ckpt, base, out, inF, qc) };
  }
  if (!ckpt.has(`${base}.qweight`)) return undefined;
  const qw = ckpt.get(`${base}.qweight`);
  let q: QuantizedTensor;
  if (qc.quantMethod === 'gptq') {
    const ng = ngroupsOf(qc, inF, base, qw.file);
    const s = gptqShapes(out, inF, qc.bits, ng);
    expect(qw, ['I32'], s.qweight, bitsHint(qw.shape[0], inF, qc.bits, qc));
    const sc = ckpt.get(`${base}.scales`);
    expect(sc, ['F16', 'BF16', 'F32'], s.scales);
    const qz = ckpt.get(`${base}.qzeros`);
    expect(qz, ['I32'], s.qzeros);
    let gIdx: Int32Array;
    if (ckpt.has(`${base}.g_idx`)) {
      const gt = ckpt.get(`${base}.g_idx`);
      expect(gt, ['I32'], s.g_idx);
      gIdx = checkGIdx(gt, ng);
    } else {
      gIdx = new Int32Array(inF);
      if (qc.groupSize > 0) for (let i = 0; i < inF; i++) gIdx[i] = Math.floor(i / qc.groupSize);
    }
    q = unpackGptq({ qweight: qw.data as Int32Array, qzeros: qz.data as Int32Array, scales: floats(sc), gIdx }, out, inF, qc.bits, qc.groupSize, qc.sym, qc.checkpointFormat);
  } else if (qc.quantMethod === 'awq') {
    const ng = ngroupsOf(qc, inF, base, qw.file);
    if (out % 8) throw new LowbitError('SHAPE_MISMATCH', `${qw.file}: "${base}": out_features ${out} is not a multiple of 8, as AWQ packing needs`);
    const s = awqShapes(out, inF, ng);
    expect(qw, ['I32'], s.qweight, qw.shape[1] !== out / 8 && qw.shape[0] * 8 === inF ? ' (this looks like a GPTQ layout: quant_method should be "gptq")' : ' (AWQ GEMM: [in, out/8])');
    const sc = ckpt.get(`${base}.scales`);
    expect(sc, ['F16', 'BF16', 'F32'], s.scales);
    const qz = ckpt.get(`${base}.qzeros`);
    expect(qz, ['I32'], s.qzeros);
    q = unpackAwq({ qweight: qw.data as Int32Array, qzeros: qz.data as Int32Array, scales: floats(sc) }, out, inF, qc.groupSize);
  } else if (qw.dtype === 'I8') {
    // lowbit int8: symmetric per-channel (SmoothQuant)
    expect(qw, ['I8'], [out, inF]);
    const sc = ckpt.get(`${base}.scales`);
    expect(sc, ['F32'], [out]);
    const mid = 1 << (qc.bits - 1);
    const src = qw.data as Int8Array;
    const qweight = new Uint8Array(src.length);
    for (let k = 0; k < src.length; k++) {
      if (Math.abs(src[k]) >= mid) throw new LowbitError('BAD_CHECKPOINT', `${qw.file}: tensor "${qw.name}"[${k}] = ${src[k]} is outside ±${mid - 1} for ${qc.bits}-bit weights (${qc.file})`);
      qweight[k] = src[k] + mid;
    }
    q = { bits: qc.bits, groupSize: -1, sym: true, qweight, scales: Float32Array.from(sc.data as Float32Array), zeros: new Float32Array(out).fill(mid) };
  } else {
    // lowbit uint: GPTQ bit stream, plain U8 zeros, fp32 scales
    const ng = ngroupsOf(qc, inF, base, qw.file);
    expect(qw, ['I32'], [streamWords(inF, qc.bits), out], bitsHint(qw.shape[0], inF, qc.bits, qc));
    const sc = ckpt.get(`${base}.scales`);
    expect(sc, ['F32'], [ng, out]);
    const qz = ckpt.get(`${base}.qzeros`);
    expect(qz, ['U8'], [ng, out]);
    const gt = ckpt.get(`${base}.g_idx`);
    expect(gt, ['I32'], [inF]);
    const maxq = (1 << qc.bits) - 1;
    const scales = new Float32Array(out * ng);
    const zeros = new Float32Array(out * ng);
    const zsrc = qz.data as Uint8Array;
    const ssrc = sc.data as Float32Array;
    for (let g = 0; g < ng; g++) {
      for (let o = 0; o < out; o++) {
        const z = zsrc[g * out + o];
        if (z > maxq) throw new LowbitError('BAD_CHECKPOINT', `${qz.file}: tensor "${qz.name}"[${g}, ${o}] = ${z} exceeds ${maxq} for ${qc.bits}-bit weights`);
        zeros[o * ng + g] = z;
        scales[o * ng + g] = ssrc[g * out + o];
      }
    }
    q = { bits: qc.bits, groupSize: qc.groupSize, sym: qc.sym, qweight: unpackAlongInput(qw.data as Int32Array, out, inF, qc.bits), scales, zeros, gIdx: checkGIdx(gt, ng) };
  }
  // Everything was copied out of the file (unpacked integers, fp32 scales): its pages can leave the RSS.
  for (const k of ['qweight', 'qzeros', 'scales', 'g_idx']) if (ckpt.has(`${base}.${k}`)) addon.adviseMapped(ckpt.get(`${base}.${k}`).data, 'dontneed');
  // Packable widths run from the packed kernels and are never expanded; other widths are dequantized.
  return PACKED_BITS.includes(q.bits) ? { quantized: q } : { weight: dequantize(q, inF), quantized: q };
}
