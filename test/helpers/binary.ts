// An independent decoder of lowbit's BiLLM "binary" layout, written from docs/formats.md only (no lib code),
// and random binary tensors for kernel tests.
import { rng } from './random';

export interface BinaryTensors {
  block: number;
  salient: Uint8Array; // [ceil(in/8)]
  codes: Int32Array; // [out, ceil(in/16)] the 2 bits of weight (o, i) at bits 2(i%16), 2(i%16)+1 of word (o, i/16)
  scales: Uint16Array; // [out, ceil(in/block), 8] fp16: α1 μ1 α2 μ2 αc μc αs μs
}

function half(h: number): number {
  const s = h >> 15 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + m / 1024);
}

/**
 * w[o, i]: salient column → (±α1 + μ1) + (±α2 + μ2); else sparse (second bit 1) → ±αs + μs, concentrated → ±αc + μc;
 * ±α is +α where the bit is 1. Each + is one fp32 rounding (a double sum of two floats rounds correctly).
 */
export function decodeBinary(t: BinaryTensors, out: number, inF: number): Float32Array {
  const wpr = Math.ceil(inF / 16);
  const nb = Math.ceil(inF / t.block);
  const f = Math.fround;
  const w = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      const s = (k: number) => half(t.scales[(o * nb + Math.floor(i / t.block)) * 8 + k]);
      const bit0 = (t.codes[o * wpr + (i >> 4)] >>> (2 * (i & 15))) & 1;
      const bit1 = (t.codes[o * wpr + (i >> 4)] >>> (2 * (i & 15) + 1)) & 1;
      const pm = (bit: number, a: number) => (bit ? a : -a);
      let v: number;
      if ((t.salient[i >> 3] >> (i & 7)) & 1) v = f(f(pm(bit0, s(0)) + s(1)) + f(pm(bit1, s(2)) + s(3)));
      else if (bit1) v = f(pm(bit0, s(6)) + s(7));
      else v = f(pm(bit0, s(4)) + s(5));
      w[o * inF + i] = v;
    }
  }
  return w;
}

/** Random codes and salient bits (padding bits 0), α in about [2^-9, 2^-4), μ of either sign and smaller. */
export function randomBinary(out: number, inF: number, block: number, seed: number): BinaryTensors {
  const r = rng(seed);
  const wpr = Math.ceil(inF / 16);
  const nb = Math.ceil(inF / block);
  const salient = new Uint8Array(Math.ceil(inF / 8));
  for (let i = 0; i < inF; i++) if (r() < 0.15) salient[i >> 3] |= 1 << (i & 7);
  const codes = new Int32Array(out * wpr);
  for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) codes[o * wpr + (i >> 4)] |= Math.floor(r() * 4) << (2 * (i & 15));
  const scales = new Uint16Array(out * nb * 8);
  const h = (e0: number, e1: number, signed: boolean) => ((signed && r() < 0.5 ? 1 : 0) << 15) | ((e0 + Math.floor(r() * (e1 - e0))) << 10) | Math.floor(r() * 1024);
  for (let k = 0; k < scales.length; k++) scales[k] = k % 2 === 0 ? h(6, 11, false) : h(3, 8, true);
  return { block, salient, codes, scales };
}
