// GPTQ on a small correlated problem: better output error than RTN on the same grid, every value on its
// group's grid, deterministic, dead columns handled; the Hessian accumulation and the solver itself checked
// against float64 implementations written here (the latter following Frantar et al. 2022, Algorithm 1).
import { addon } from '../lib/native/addon';
import { installGptq } from '../lib/quant/gptq';
import type { QuantSpec } from '../lib/quant/spec';
import type { QuantizedLinear } from '../lib/quant/weights';
import { gauss, rhe } from './helpers/random';

const f = Math.fround;
const N = 512;
const COLS = 64;
const ROWS = 32;
const BITS = 3;
const MAXQ = 2 ** BITS - 1;

/** Correlated activations: 6 shared latent factors, per-channel scales spanning ~30x, plus noise. */
function makeX(seed: number, deadCol = -1): Float64Array {
  const g = gauss(seed);
  const F = 6;
  const mix = Float64Array.from({ length: F * COLS }, () => g());
  const chan = Float64Array.from({ length: COLS }, (_, c) => 0.3 + 9 * ((c * 37) % 64) / 64);
  const X = new Float64Array(N * COLS);
  const z = new Float64Array(F);
  for (let t = 0; t < N; t++) {
    for (let k = 0; k < F; k++) z[k] = g();
    for (let c = 0; c < COLS; c++) {
      let v = 0.5 * g();
      for (let k = 0; k < F; k++) v += z[k] * mix[k * COLS + c];
      X[t * COLS + c] = c === deadCol ? 0 : f(v * chan[c]);
    }
  }
  return X;
}

function makeW(seed: number): Float32Array {
  const g = gauss(seed);
  return Float32Array.from({ length: ROWS * COLS }, () => 0.1 * g());
}

/** H = 2/n XᵀX in float64. */
function hessian64(X: Float64Array, n = N): Float64Array {
  const H = new Float64Array(COLS * COLS);
  for (let t = 0; t < n; t++) {
    const row = X.subarray(t * COLS, (t + 1) * COLS);
    for (let i = 0; i < COLS; i++) {
      const xi = row[i];
      if (xi === 0) continue;
      for (let j = 0; j < COLS; j++) H[i * COLS + j] += xi * row[j];
    }
  }
  for (let i = 0; i < H.length; i++) H[i] *= 2 / n;
  return H;
}

/** ‖X Wᵀ − X Qᵀ‖² in float64. */
function outputError(X: Float64Array, W: Float32Array, Q: Float32Array): number {
  let s = 0;
  for (let t = 0; t < N; t++) {
    for (let r = 0; r < ROWS; r++) {
      let d = 0;
      for (let c = 0; c < COLS; c++) d += X[t * COLS + c] * (W[r * COLS + c] - Q[r * COLS + c]);
      s += d * d;
    }
  }
  return s;
}

/** The GPTQ asymmetric grid in float32 steps (range includes 0). */
function gridParams(w: ArrayLike<number>): { scale: number; zero: number } {
  let mn = 0;
  let mx = 0;
  for (let i = 0; i < w.length; i++) {
    const v = f(w[i]);
    mn = Math.min(mn, v);
    mx = Math.max(mx, v);
  }
  if (mn === 0 && mx === 0) {
    mn = -1;
    mx = 1;
  }
  const scale = f(f(mx - mn) / MAXQ);
  return { scale, zero: rhe(f(-mn / scale)) };
}

/** Lower Cholesky factor of a symmetric positive definite n×n matrix (float64). */
function cholesky(A: Float64Array, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      if (i === j) {
        if (!(s > 0)) throw new Error('not positive definite');
        L[i * n + i] = Math.sqrt(s);
      } else {
        L[i * n + j] = s / L[j * n + j];
      }
    }
  }
  return L;
}

/** Reference GPTQ, per-channel grid, no act-order, one block of all columns, float64 throughout. */
function gptqReference(W32: Float32Array, H32: Float32Array, damp: number): Uint8Array {
  const n = COLS;
  const H = Float64Array.from(H32);
  const W = Float64Array.from(W32);
  for (let i = 0; i < n; i++) {
    if (H[i * n + i] === 0) {
      H[i * n + i] = 1;
      for (let r = 0; r < ROWS; r++) W[r * n + i] = 0;
    }
  }
  const params = Array.from({ length: ROWS }, (_, r) => gridParams(W.subarray(r * n, (r + 1) * n)));
  let mean = 0;
  for (let i = 0; i < n; i++) mean += H[i * n + i];
  mean /= n;
  for (let i = 0; i < n; i++) H[i * n + i] += damp * mean;
  // H⁻¹ = L⁻ᵀ L⁻¹ from the Cholesky factor of H.
  const L = cholesky(H, n);
  const Li = new Float64Array(n * n); // L⁻¹ (lower)
  for (let j = 0; j < n; j++) {
    Li[j * n + j] = 1 / L[j * n + j];
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s -= L[i * n + k] * Li[k * n + j];
      Li[i * n + j] = s / L[i * n + i];
    }
  }
  const Hinv = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = Math.max(i, j); k < n; k++) s += Li[k * n + i] * Li[k * n + j];
      Hinv[i * n + j] = s;
    }
  // Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): U = transpose of the lower factor.
  const Lh = cholesky(Hinv, n);
  const U = (i: number, j: number) => Lh[j * n + i];
  const Q = new Uint8Array(ROWS * n);
  for (let c = 0; c < n; c++) {
    const d = U(c, c);
    for (let r = 0; r < ROWS; r++) {
      const { scale, zero } = params[r];
      const w = W[r * n + c];
      const q = Math.min(Math.max(rhe(w / scale) + zero, 0), MAXQ);
      Q[r * n + c] = q;
      const err = (w - scale * (q - zero)) / d;
      for (let j = c; j < n; j++) W[r * n + j] -= err * U(c, j);
    }
  }
  return Q;
}

interface Gptq {
  weight: Float32Array;
  qweight: Uint8Array;
  scales: Float32Array;
  zeros: Float32Array;
  gIdx: Int32Array;
  perm: Int32Array;
  loss: number;
  deadColumns: number;
}

function gptq(W: Float32Array, H: Float32Array, groupSize: number, actOrder: boolean, extra: Record<string, unknown> = {}): Promise<Gptq> {
  return addon.gptqQuantize(W, H, {
    rows: ROWS, cols: COLS, bits: BITS, groupSize, sym: false, actOrder, staticGroups: false, damp: 0.01, blockSize: 16, ...extra,
  });
}

const X = makeX(21);
const W = makeW(22);
const H64 = hessian64(X);
const H = Float32Array.from(H64);

const CONFIGS: [number, boolean][] = [[-1, false], [-1, true], [16, false], [16, true]];

describe.each(CONFIGS)('gptqQuantize groupSize %i actOrder %s', (groupSize, actOrder) => {
  let r: Gptq;
  beforeAll(async () => {
    r = await gptq(W, H, groupSize, actOrder);
  });

  test('output error below RTN on the same grid', async () => {
    const rtn = await addon.quantizeRtn(W, { rows: ROWS, cols: COLS, bits: BITS, groupSize, sym: false, grid: 'gptq' });
    const eG = outputError(X, W, r.weight);
    const eR = outputError(X, W, rtn.weight);
    expect(eG).toBeLessThan(eR);
    expect(eG).toBeGreaterThan(0);
    expect(Number.isFinite(r.loss) && r.loss > 0).toBe(true);
  });

  test('every value lies on its row/group grid', () => {
    const ng = groupSize > 0 ? COLS / groupSize : 1;
    expect(r.scales).toHaveLength(ROWS * ng);
    expect(r.gIdx).toHaveLength(COLS);
    // Each group holds exactly groupSize columns, whatever the order.
    const counts = new Array(ng).fill(0);
    for (const g of r.gIdx) counts[g]++;
    expect(counts).toEqual(new Array(ng).fill(groupSize > 0 ? groupSize : COLS));
    if (actOrder) expect(Array.from(r.perm).sort((a, b) => a - b)).toEqual(Array.from({ length: COLS }, (_, i) => i));
    else if (groupSize > 0) expect(Array.from(r.gIdx)).toEqual(Array.from({ length: COLS }, (_, c) => Math.floor(c / groupSize)));
    let off = 0;
    for (let row = 0; row < ROWS; row++) {
      for (let c = 0; c < COLS; c++) {
        const q = r.qweight[row * COLS + c];
        const k = row * ng + r.gIdx[c];
        const scale = r.scales[k];
        const zero = r.zeros[k];
        if (q > MAXQ || !Number.isInteger(zero) || zero < 0 || zero > MAXQ || !(scale > 0)) off++;
        else if (r.weight[row * COLS + c] !== f(scale * (q - zero))) off++;
      }
    }
    expect(off).toBe(0);
  });

  test('deterministic: two runs are bit-identical', async () => {
    const again = await gptq(W, H, groupSize, actOrder);
    expect(Buffer.from(again.weight.buffer).equals(Buffer.from(r.weight.buffer))).toBe(true);
    expect(Buffer.from(again.qweight.buffer).equals(Buffer.from(r.qweight.buffer))).toBe(true);
    expect(again.loss).toBe(r.loss);
  });
});

test('installGptq without a weight (the GPU path) gives the same weight, recomputed on access; assigning replaces it', async () => {
  for (const [groupSize, actOrder] of CONFIGS) {
    const r = await gptq(W, H, groupSize, actOrder);
    const spec = { wbits: BITS, groupSize, sym: false } as QuantSpec;
    const lin = { weight: W, outFeatures: ROWS, inFeatures: COLS } as QuantizedLinear;
    installGptq(lin, spec, { ...r, weight: undefined });
    expect(Buffer.from((lin.weight as Float32Array).buffer).equals(Buffer.from(r.weight!.buffer))).toBe(true);
    expect(lin.quantized!.qweight).toBe(r.qweight);
    (lin as { weight?: unknown }).weight = undefined;
    expect(lin.weight).toBeUndefined();
  }
});

test('a column with zero Hessian diagonal becomes a dead column of zeros', async () => {
  const dead = 7;
  const Xd = makeX(31, dead);
  const Hd = Float32Array.from(hessian64(Xd));
  expect(Hd[dead * COLS + dead]).toBe(0);
  for (const [groupSize, actOrder] of CONFIGS) {
    const r = await gptq(W, Hd, groupSize, actOrder);
    expect(r.deadColumns).toBe(1);
    for (let row = 0; row < ROWS; row++) expect(r.weight[row * COLS + dead]).toBe(0);
    expect(r.weight.every(Number.isFinite)).toBe(true);
  }
  const live = await gptq(W, H, -1, false);
  expect(live.deadColumns).toBe(0);
});

test('hessianAccumulate adds alpha·XᵀX (float64 reference, 1e-4 relative)', async () => {
  const X32 = Float32Array.from(X);
  const Hacc = new Float32Array(COLS * COLS);
  // Two batches accumulate into the same matrix, as calibration does.
  await addon.hessianAccumulate(Hacc, X32.subarray(0, 200 * COLS), 2 / N);
  await addon.hessianAccumulate(Hacc, X32.subarray(200 * COLS), 2 / N);
  let worst = 0;
  for (let i = 0; i < COLS; i++)
    for (let j = 0; j < COLS; j++) {
      const scale = Math.sqrt(H64[i * COLS + i] * H64[j * COLS + j]);
      worst = Math.max(worst, Math.abs(Hacc[i * COLS + j] - H64[i * COLS + j]) / scale);
    }
  expect(worst).toBeLessThan(1e-4);
  // alpha scales linearly and the result is added to what H held.
  const H2 = Float32Array.from(Hacc);
  await addon.hessianAccumulate(H2, X32, -1 / N);
  for (let i = 0; i < COLS; i++) {
    const ref = H64[i * COLS + i] / 2;
    expect(Math.abs(H2[i * COLS + i] - ref) / ref).toBeLessThan(1e-4);
  }
  await expect((async () => addon.hessianAccumulate(new Float32Array(10), X32, 1))()).rejects.toThrow(/hessianAccumulate: H must be \[n,n\]/);
});

test('hessianAccumulate at widths that take the blocked symmetric path: exact symmetry, float64 reference', async () => {
  for (const n of [520, 1030]) {
    const T = 96;
    const X = Float32Array.from({ length: T * n }, (_, i) => Math.sin(i * 0.37) + 0.1 * Math.cos(i * 1.3));
    const H = Float32Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0));
    await addon.hessianAccumulate(H, X, 0.5);
    let worst = 0;
    for (let i = 0; i < n; i += 7)
      for (let j = 0; j < n; j++) {
        let ref = i === j ? 1 : 0;
        for (let t = 0; t < T; t++) ref += 0.5 * X[t * n + i] * X[t * n + j];
        worst = Math.max(worst, Math.abs(H[i * n + j] - ref) / (1 + Math.abs(ref)));
        expect(H[i * n + j]).toBe(H[j * n + i]);
      }
    expect(worst).toBeLessThan(1e-5);
  }
});

test('matches a float64 reference GPTQ (per channel, no act-order, one block): ≥ 99% identical integers', async () => {
  const ref = gptqReference(W, H, 0.01);
  const r = await gptq(W, H, -1, false, { blockSize: COLS });
  let same = 0;
  for (let i = 0; i < ROWS * COLS; i++) if (ref[i] === r.qweight[i]) same++;
  expect(same / (ROWS * COLS)).toBeGreaterThanOrEqual(0.99);
  // The block size only changes the order of the lazy updates, not the result (beyond rounding ties).
  const r16 = await gptq(W, H, -1, false);
  let same16 = 0;
  for (let i = 0; i < ROWS * COLS; i++) if (r16.qweight[i] === r.qweight[i]) same16++;
  expect(same16 / (ROWS * COLS)).toBeGreaterThanOrEqual(0.99);
});

test('argument errors name the option', async () => {
  const call = (o: Record<string, unknown>) => (async () => gptq(W, H, -1, false, o))();
  await expect(call({ groupSize: 24 })).rejects.toThrow(/group size 24 does not divide 64 columns/);
  await expect(call({ bits: 9 })).rejects.toThrow(/bits must be 1\.\.8/);
  await expect(call({ blockSize: 0 })).rejects.toThrow(/blockSize must be positive/);
});
