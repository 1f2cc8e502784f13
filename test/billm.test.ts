import { billmQuantize, BillmOptions, BillmResult } from '../lib/quant/billm';

import { decodeBinary } from './helpers/binary';
import { gauss } from './helpers/random';

const ROWS = 96;
const COLS = 256;
const N = 768;

interface Problem {
  X: Float64Array; // [N, COLS]
  W: Float32Array; // [ROWS, COLS]
  H64: Float64Array; // 2/N XᵀX
  H: Float32Array;
}

function makeProblem(seed: number): Problem {
  const g = gauss(seed);
  // Correlated activations: 8 shared latent factors + noise, a few large-magnitude channels.
  const F = 8;
  const mix = Float64Array.from({ length: F * COLS }, () => 0.7 * g());
  const chanScale = new Float64Array(COLS).fill(1);
  for (const c of [5, 77, 130, 201]) chanScale[c] = 12;
  const X = new Float64Array(N * COLS);
  const z = new Float64Array(F);
  for (let t = 0; t < N; ++t) {
    for (let f = 0; f < F; ++f) z[f] = g();
    for (let c = 0; c < COLS; ++c) {
      let v = g();
      for (let f = 0; f < F; ++f) v += z[f] * mix[f * COLS + c];
      X[t * COLS + c] = v * chanScale[c];
    }
  }
  // Bell-shaped weights with a few outlier columns.
  const W = new Float32Array(ROWS * COLS);
  const outCols = new Set([3, 40, 41, 150, 222]);
  for (let r = 0; r < ROWS; ++r)
    for (let c = 0; c < COLS; ++c) W[r * COLS + c] = 0.02 * g() * (outCols.has(c) ? 6 : 1);
  const H64 = new Float64Array(COLS * COLS);
  for (let t = 0; t < N; ++t) {
    const row = X.subarray(t * COLS, (t + 1) * COLS);
    for (let i = 0; i < COLS; ++i) {
      const xi = row[i];
      for (let j = i; j < COLS; ++j) H64[i * COLS + j] += xi * row[j];
    }
  }
  for (let i = 0; i < COLS; ++i)
    for (let j = i; j < COLS; ++j) {
      const v = (2 / N) * H64[i * COLS + j];
      H64[i * COLS + j] = v;
      H64[j * COLS + i] = v;
    }
  return { X, W, H64, H: Float32Array.from(H64) };
}

/** ‖XWᵀ − XQᵀ‖² = Σ_rows N/2 · dᵣ H dᵣᵀ, with H = 2/N XᵀX (float64). */
function outputError(p: Problem, Q: Float32Array): number {
  let total = 0;
  const d = new Float64Array(COLS);
  for (let r = 0; r < ROWS; ++r) {
    for (let c = 0; c < COLS; ++c) d[c] = p.W[r * COLS + c] - Q[r * COLS + c];
    for (let i = 0; i < COLS; ++i) {
      let s = 0;
      const hi = i * COLS;
      for (let j = 0; j < COLS; ++j) s += p.H64[hi + j] * d[j];
      total += d[i] * s;
    }
  }
  return (total * N) / 2;
}

/** Plain binarization: per-row α = mean|w|, q = α·sign(w). */
function naiveSign(W: Float32Array): Float32Array {
  const Q = new Float32Array(W.length);
  for (let r = 0; r < ROWS; ++r) {
    let a = 0;
    for (let c = 0; c < COLS; ++c) a += Math.abs(W[r * COLS + c]);
    a /= COLS;
    for (let c = 0; c < COLS; ++c) Q[r * COLS + c] = W[r * COLS + c] >= 0 ? a : -a;
  }
  return Q;
}

function distinct(vals: number[]): number[] {
  return [...new Set(vals)].sort((a, b) => a - b);
}

const base: BillmOptions = { rows: ROWS, cols: COLS, blockSize: 128 };

describe('billmQuantize', () => {
  const p = makeProblem(1234);
  let res: BillmResult;

  beforeAll(async () => {
    res = await billmQuantize(p.W, p.H, base);
  });

  test('result shape, salient bookkeeping and bits', () => {
    expect(Object.prototype.toString.call(res.weight)).toBe('[object Float32Array]'); // native realm
    expect(res.weight.length).toBe(ROWS * COLS);
    expect(res.weight.every(Number.isFinite)).toBe(true);
    const nBlocks = Math.ceil(COLS / 128);
    expect(res.blockSalient.length).toBe(nBlocks);
    const maskCount = res.salientMask.reduce((s, v) => s + v, 0);
    expect(maskCount).toBe(res.salientColumns);
    expect(res.blockSalient.reduce((s, v) => s + v, 0)).toBe(res.salientColumns);
    for (const k of res.blockSalient) {
      expect(k).toBeGreaterThanOrEqual(1); // the reference searches 1..49
      expect(k).toBeLessThan(50);
    }
    // W-bits as the paper counts them: 2 bits for salient weights, 1 for the rest.
    expect(res.avgBits).toBeCloseTo(1 + res.salientColumns / COLS, 12);
    expect(res.avgBits).toBeGreaterThan(1.0);
    expect(res.avgBits).toBeLessThan(1.2);
    expect(res.storingBits).toBeCloseTo(1 + 1 / 128, 12);
    // The outlier columns should be found salient (they dominate Σ w²/Hinv_jj²).
    for (const c of [3, 40, 41, 150, 222]) expect(res.salientMask[c]).toBe(1);
  });

  test('structure: few distinct values per row and block', () => {
    for (let b0 = 0; b0 < COLS; b0 += 128) {
      for (let r = 0; r < ROWS; ++r) {
        const sal: number[] = [];
        const non: number[] = [];
        for (let c = b0; c < Math.min(b0 + 128, COLS); ++c)
          (res.salientMask[c] ? sal : non).push(res.weight[r * COLS + c]);
        const s = distinct(sal);
        // Two residual planes: μ + {±α1 ± α2} → at most 4 values, symmetric about their centre.
        expect(s.length).toBeLessThanOrEqual(4);
        if (s.length === 4) {
          const scale = Math.max(...s.map(Math.abs));
          expect(Math.abs(s[0] + s[3] - (s[1] + s[2]))).toBeLessThan(1e-5 * scale);
        }
        // Concentrated and sparse groups, one binary plane each: at most 4 values.
        expect(distinct(non).length).toBeLessThanOrEqual(4);
      }
    }
  });

  test('structure in the paper form (centered: false): salient ∈ {±α1±α2}, non-salient in 2 magnitudes', async () => {
    const r2 = await billmQuantize(p.W, p.H, { ...base, centered: false });
    for (let b0 = 0; b0 < COLS; b0 += 128) {
      for (let r = 0; r < ROWS; ++r) {
        const sal: number[] = [];
        const non: number[] = [];
        for (let c = b0; c < b0 + 128; ++c) (r2.salientMask[c] ? sal : non).push(r2.weight[r * COLS + c]);
        const s = distinct(sal);
        expect(s.length).toBeLessThanOrEqual(4);
        // {±α1±α2} with α1 ≥ α2 ≥ 0: magnitudes are α1+α2 and α1−α2, and the set is closed under negation
        // when all four appear.
        expect(distinct(s.map(Math.abs)).length).toBeLessThanOrEqual(2);
        if (s.length === 4) {
          expect(s[0]).toBeCloseTo(-s[3], 6);
          expect(s[1]).toBeCloseTo(-s[2], 6);
        }
        expect(distinct(non.map(Math.abs)).length).toBeLessThanOrEqual(2);
      }
    }
  });

  test('the binary structure (2-bit codes, salient bitmap, fp16 scales) decodes to the returned weights bit for bit', async () => {
    const sameBits = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    const tail = await billmQuantize(p.W, p.H, { ...base, blockSize: 100 });
    const paper = await billmQuantize(p.W, p.H, { ...base, centered: false });
    for (const [r, block] of [[res, 128], [tail, 100], [paper, 128]] as [BillmResult, number][]) {
      const b = r.binary;
      expect(b.block).toBe(block);
      expect(b.codes.length).toBe(ROWS * Math.ceil(COLS / 16));
      expect(b.scales.length).toBe(ROWS * Math.ceil(COLS / block) * 8);
      for (let c = 0; c < COLS; c++) expect((b.salient[c >> 3] >> (c & 7)) & 1).toBe(r.salientMask[c]);
      expect(sameBits(decodeBinary(b, ROWS, COLS), r.weight)).toBe(true);
    }
    // The paper form has μ = 0: every stored μ (scales 1, 3, 5, 7 of each row and block) is +0 or −0.
    for (let k = 1; k < paper.binary.scales.length; k += 2) expect(paper.binary.scales[k] & 0x7fff).toBe(0);
    // Salient and concentrated/sparse scales are all used: some non-zero α of each kind.
    for (const k of [0, 2, 4, 6]) expect(res.binary.scales.some((h, i) => i % 8 === k && h !== 0)).toBe(true);
  });

  test('layer output error: below naive sign binarization and below no error feedback', async () => {
    const eBillm = outputError(p, res.weight);
    const eNaive = outputError(p, naiveSign(p.W));
    const noFb = await billmQuantize(p.W, p.H, { ...base, errorFeedback: false });
    const eNoFb = outputError(p, noFb.weight);
    const exact = await billmQuantize(p.W, p.H, { ...base, exactFeedback: true });
    const eExact = outputError(p, exact.weight);
    const ref = await billmQuantize(p.W, p.H, { ...base, searchOnSaliency: true });
    const eRef = outputError(p, ref.weight);
    const ref0 = outputError(p, new Float32Array(p.W.length));
    // eslint-disable-next-line no-console
    console.log(
      `‖XWᵀ−XQᵀ‖² relative: billm ${(eBillm / ref0).toFixed(4)} (bits ${res.avgBits.toFixed(3)}), ` +
        `no feedback ${(eNoFb / ref0).toFixed(4)}, exact feedback ${(eExact / ref0).toFixed(4)}, ` +
        `search on saliency ${(eRef / ref0).toFixed(4)} (bits ${ref.avgBits.toFixed(3)}), naive sign ${(eNaive / ref0).toFixed(4)}`,
    );
    expect(eBillm).toBeLessThan(eNaive);
    expect(eBillm).toBeLessThan(eNoFb);
    expect(eNoFb).toBeLessThan(eNaive);
    expect(eExact).toBeLessThan(eNaive);
    expect(eRef).toBeLessThan(eNaive);
  });

  test('deterministic', async () => {
    const again = await billmQuantize(p.W, p.H, base);
    expect(Buffer.from(again.weight.buffer).equals(Buffer.from(res.weight.buffer))).toBe(true);
    expect(again.salientColumns).toBe(res.salientColumns);
    expect(again.avgBits).toBe(res.avgBits);
  });

  test('bf16 weights are accepted', async () => {
    const bits = new Uint16Array(p.W.length);
    const u32 = new Uint32Array(p.W.buffer, p.W.byteOffset, p.W.length);
    for (let i = 0; i < bits.length; ++i) bits[i] = u32[i] >>> 16; // truncation is fine here
    const r = await billmQuantize({ data: bits, dtype: 'BF16' }, p.H, base);
    expect(r.weight.every(Number.isFinite)).toBe(true);
    expect(outputError(p, r.weight)).toBeLessThan(outputError(p, naiveSign(p.W)));
  });

  test('odd block sizes and a tail block', async () => {
    const r = await billmQuantize(p.W, p.H, { ...base, blockSize: 100 });
    expect(r.blockSalient.length).toBe(3);
    expect(r.weight.every(Number.isFinite)).toBe(true);
    const one = await billmQuantize(p.W.subarray(0, 4 * COLS), p.H, { rows: 4, cols: COLS, blockSize: 1 });
    expect(one.salientColumns).toBe(0); // a 1-column block has no salient count to search
    expect(one.weight.every(Number.isFinite)).toBe(true);
  });

  test('saliencySearch: false with no salient columns gives exactly 1 bit', async () => {
    const r = await billmQuantize(p.W, p.H, { ...base, saliencySearch: false });
    expect(r.salientColumns).toBe(0);
    expect(r.avgBits).toBe(1);
  });

  test('clear errors', async () => {
    await expect(billmQuantize(p.W, p.H, { ...base, blockSize: 0 })).rejects.toThrow(/blockSize/);
    await expect(billmQuantize(p.W, p.H, { ...base, rows: 0 })).rejects.toThrow(/rows and cols/);
    await expect(billmQuantize(p.W, p.H, { ...base, rows: ROWS + 1 })).rejects.toThrow(/weight/);
    await expect(billmQuantize(p.W, p.H.subarray(1), base)).rejects.toThrow(/hessian/);
    const bad = p.W.slice();
    bad[7 * COLS + 9] = NaN;
    await expect(billmQuantize(bad, p.H, base)).rejects.toThrow(/weight has a non-finite value.*row 7, column 9/);
    const negH = new Float32Array(COLS * COLS);
    for (let i = 0; i < COLS; ++i) negH[i * COLS + i] = i === 3 ? -50 : 1;
    await expect(billmQuantize(p.W, negH, base)).rejects.toThrow(/not positive definite/);
    await expect(billmQuantize(p.W.map((v) => v * 1e7), p.H, base)).rejects.toThrow(/exceeds the fp16 range/);
    await expect(billmQuantize(p.W, p.H, { ...base, cancel: new Int32Array([1]) })).rejects.toThrow(/cancelled/);
  });
});
