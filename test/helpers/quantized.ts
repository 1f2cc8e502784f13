// Random quantized weights for the packed-kernel tests (CPU and CUDA): integers, group scales and zeros, and an
// act-order group map (a random column order cut into groups).
import type { QuantizedTensor } from '../../lib/quant/weights';

/** xorshift32 in [0, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

export function randomQuantized(bits: number, rows: number, cols: number, groupSize: number, actOrder: boolean, seed: number): QuantizedTensor {
  const r = rng(seed);
  const g = groupSize < 0 ? cols : groupSize;
  const ng = cols / g;
  const maxq = (1 << bits) - 1;
  const q: QuantizedTensor = {
    bits,
    groupSize,
    sym: false,
    qweight: Uint8Array.from({ length: rows * cols }, () => Math.floor(r() * (maxq + 1))),
    scales: Float32Array.from({ length: rows * ng }, () => 0.005 + r() * 0.05),
    zeros: Float32Array.from({ length: rows * ng }, () => Math.floor(r() * (maxq + 1))),
  };
  if (actOrder) {
    const order = Array.from({ length: cols }, (_, i) => i);
    for (let i = cols - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    q.gIdx = new Int32Array(cols);
    order.forEach((c, pos) => (q.gIdx![c] = Math.floor(pos / g)));
  }
  return q;
}

/** 8-bit per-channel symmetric weights (zero 128), the W8A8-packable grid. */
export function int8Weights(rows: number, cols: number, seed: number): QuantizedTensor {
  const r = rng(seed);
  return {
    bits: 8,
    groupSize: -1,
    sym: true,
    qweight: Uint8Array.from({ length: rows * cols }, () => 1 + Math.floor(r() * 255)),
    scales: Float32Array.from({ length: rows }, () => 0.001 + r() * 0.01),
    zeros: new Float32Array(rows).fill(128),
  };
}

/**
 * P of the CUDA packed layout (native/cuda/qlayout.h): the largest power of two with max |scale|·P ≤ 2^15, computed
 * as the repack does (32768 / max |s| in fp32, then its power-of-two floor).
 */
export function deviceScaleFactor(scales: Float32Array): number {
  const maxs = scales.reduce((m, s) => Math.max(m, Math.abs(s)), 0);
  if (maxs === 0) return 1;
  const v = Math.fround(32768 / maxs);
  let e = Math.floor(Math.log2(v));
  if (2 ** e > v) e--;
  if (2 ** (e + 1) <= v) e++;
  return 2 ** e;
}
