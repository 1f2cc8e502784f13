// Bit packing shared by the checkpoint formats, fp16 conversion, and the one dequantization routine
// (QuantizedTensor → dense fp32) the loader uses until packed kernels consume QuantizedTensor directly.
//
// Every packed layout here is a little-endian bit stream in 32-bit words: value k of a run occupies bits
// [k·bits, (k+1)·bits) of the stream, LSB first, a value crossing a word boundary continuing in the next
// word's low bits. For 2/4/8 bits that is "32/bits values per int32, LSB first"; for 3 bits it is exactly
// AutoGPTQ's 32-values-in-3-words layout (value 10 straddles words 0/1, value 21 words 1/2).
import { f16ToF32 } from '../load/model';
import type { QuantizedTensor } from '../quant/weights';

// ---------------------------------------------------------------------------------------------- fp16

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** IEEE binary16 bits of x, round to nearest even (as torch's .half()); overflow → ±Inf. */
export function f32ToF16Bits(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    mant |= 0x800000;
    const shift = 14 - e; // 24-bit significand → subnormal 10-bit field
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry into the exponent is still correct (→ Inf at the top)
  return sign | h;
}

export function toF16Bits(a: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f32ToF16Bits(a[i]);
  return out;
}

export function fromF16Bits(a: Uint16Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f16ToF32(a[i]);
  return out;
}

/** The values an fp16 round trip gives (what a GPTQ/AWQ reader sees for fp32 scales). */
export function roundF16(a: ArrayLike<number>): Float32Array {
  return fromF16Bits(toF16Bits(a));
}

// ------------------------------------------------------------------------------------- bit streams

/** Words of a stream of n values of `bits` bits. */
export function streamWords(n: number, bits: number): number {
  return Math.ceil((n * bits) / 32);
}

/**
 * Writes n values (get(k) ∈ [0, 2^bits)) as a bit stream whose word w is dst[base + w·stride]
 * (dst must be zeroed there).
 */
export function packStream(dst: Int32Array, base: number, stride: number, n: number, bits: number, get: (k: number) => number): void {
  const mask = (1 << bits) - 1;
  for (let k = 0; k < n; k++) {
    const v = get(k) & mask;
    const pos = k * bits;
    const w = pos >>> 5;
    const sh = pos & 31;
    dst[base + w * stride] |= v << sh;
    if (sh + bits > 32) dst[base + (w + 1) * stride] |= v >>> (32 - sh);
  }
}

/** Reads value k of a stream laid out as packStream writes it. */
export function streamValue(src: Int32Array, base: number, stride: number, k: number, bits: number): number {
  const mask = (1 << bits) - 1;
  const pos = k * bits;
  const w = pos >>> 5;
  const sh = pos & 31;
  let v = src[base + w * stride] >>> sh;
  if (sh + bits > 32) v |= src[base + (w + 1) * stride] << (32 - sh);
  return v & mask;
}

/** Packs q [rows, cols] (row-major) along cols into [streamWords(cols), rows] int32: GPTQ's qweight layout. */
export function packAlongInput(q: Uint8Array, rows: number, cols: number, bits: number): Int32Array {
  const out = new Int32Array(streamWords(cols, bits) * rows);
  for (let r = 0; r < rows; r++) packStream(out, r, rows, cols, bits, (k) => q[r * cols + k]);
  return out;
}

export function unpackAlongInput(p: Int32Array, rows: number, cols: number, bits: number): Uint8Array {
  const q = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) q[r * cols + k] = streamValue(p, r, rows, k, bits);
  return q;
}

/** Packs v [n, m] (row-major) along m into [n, streamWords(m)] int32: GPTQ's qzeros layout. */
export function packAlongRows(n: number, m: number, bits: number, get: (i: number, j: number) => number): Int32Array {
  const wpr = streamWords(m, bits);
  const out = new Int32Array(n * wpr);
  for (let i = 0; i < n; i++) packStream(out, i * wpr, 1, m, bits, (j) => get(i, j));
  return out;
}

export function unpackAlongRows(p: Int32Array, n: number, m: number, bits: number): Uint8Array {
  const wpr = streamWords(m, bits);
  const out = new Uint8Array(n * m);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) out[i * m + j] = streamValue(p, i * wpr, 1, j, bits);
  return out;
}

// ---------------------------------------------------------------------------------- QuantizedTensor

export function numGroups(q: Pick<QuantizedTensor, 'groupSize'>, inFeatures: number): number {
  return q.groupSize > 0 ? Math.ceil(inFeatures / q.groupSize) : 1;
}

/** The group of each input column: g_idx when present, else column / groupSize. */
export function groupIndex(q: QuantizedTensor, inFeatures: number): Int32Array {
  if (q.gIdx) return q.gIdx;
  const g = new Int32Array(inFeatures);
  if (q.groupSize > 0) for (let j = 0; j < inFeatures; j++) g[j] = Math.floor(j / q.groupSize);
  return g;
}

/** True when g_idx is the plain column / groupSize map (no act-order permutation of groups). */
export function isTrivialGIdx(q: QuantizedTensor, inFeatures: number): boolean {
  if (!q.gIdx) return true;
  for (let j = 0; j < inFeatures; j++) if (q.gIdx[j] !== (q.groupSize > 0 ? Math.floor(j / q.groupSize) : 0)) return false;
  return true;
}

/**
 * w[o, i] = scale[o, g(i)] · (q[o, i] − zero[o, g(i)]) in fp32, exactly as the quantizers compute their
 * fake-quantized weights (one fp32 rounding of the product). `inFeatures` defaults to gIdx.length.
 */
export function dequantize(q: QuantizedTensor, inFeatures = q.gIdx?.length): Float32Array {
  if (inFeatures === undefined) throw new Error('dequantize: a QuantizedTensor without gIdx needs inFeatures');
  const rows = q.qweight.length / inFeatures;
  const ng = q.scales.length / rows;
  const g = groupIndex(q, inFeatures);
  const w = new Float32Array(rows * inFeatures);
  for (let r = 0; r < rows; r++) {
    const so = r * ng;
    const ro = r * inFeatures;
    for (let j = 0; j < inFeatures; j++) {
      const k = so + g[j];
      w[ro + j] = Math.fround(q.scales[k] * (q.qweight[ro + j] - q.zeros[k]));
    }
  }
  return w;
}

/** A copy of q with fp16-rounded scales: what a GPTQ/AWQ checkpoint stores. */
export function withF16Scales(q: QuantizedTensor): QuantizedTensor {
  return { ...q, scales: roundF16(q.scales) };
}
