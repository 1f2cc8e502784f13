// Round-to-nearest against an independent reimplementation of the three grids, written here from their
// definitions with every float32 step spelled out (Math.fround), so results must agree exactly.
import { addon } from '../lib/native/addon';
import { gauss, rhe } from './helpers/random';

const f = Math.fround;
const ROWS = 16;
const COLS = 256;

type Grid = 'gptq' | 'awq' | 'absmax';
interface Ref {
  weight: Float32Array;
  qweight: Uint8Array;
  scales: Float32Array;
  zeros: Float32Array;
}

function params(blk: Float32Array, bits: number, grid: Grid, sym: boolean): { scale: number; zero: number } {
  const maxq = 2 ** bits - 1;
  if (grid === 'absmax') {
    let m = 0;
    for (const v of blk) m = Math.max(m, Math.abs(v));
    return { scale: f(Math.max(m, f(1e-5)) / (2 ** (bits - 1) - 1)), zero: 2 ** (bits - 1) };
  }
  if (grid === 'awq') {
    let mn = Infinity;
    let mx = -Infinity;
    for (const v of blk) {
      mn = Math.min(mn, v);
      mx = Math.max(mx, v);
    }
    const scale = f(Math.max(f(mx - mn), f(1e-5)) / maxq);
    const zero = Math.min(Math.max(-rhe(f(mn / scale)), 0), maxq);
    return { scale, zero };
  }
  // GPTQ: the range always includes 0.
  let mn = 0;
  let mx = 0;
  for (const v of blk) {
    mn = Math.min(mn, v);
    mx = Math.max(mx, v);
  }
  if (sym) {
    mx = Math.max(Math.abs(mn), mx);
    if (mn < 0) mn = -mx;
  }
  if (mn === 0 && mx === 0) {
    mn = -1;
    mx = 1;
  }
  const scale = f(f(mx - mn) / maxq);
  const zero = sym ? (maxq + 1) / 2 : rhe(f(-mn / scale));
  return { scale, zero };
}

function reference(w: Float32Array, bits: number, group: number, grid: Grid, sym: boolean): Ref {
  const g = group > 0 ? group : COLS;
  const ng = COLS / g;
  const maxq = 2 ** bits - 1;
  const out: Ref = {
    weight: new Float32Array(ROWS * COLS),
    qweight: new Uint8Array(ROWS * COLS),
    scales: new Float32Array(ROWS * ng),
    zeros: new Float32Array(ROWS * ng),
  };
  for (let r = 0; r < ROWS; r++) {
    for (let k = 0; k < ng; k++) {
      const blk = w.subarray(r * COLS + k * g, r * COLS + (k + 1) * g);
      const { scale, zero } = params(blk, bits, grid, sym);
      out.scales[r * ng + k] = scale;
      out.zeros[r * ng + k] = zero;
      for (let j = 0; j < g; j++) {
        const q = Math.min(Math.max(rhe(f(blk[j] / scale)) + zero, 0), maxq);
        out.qweight[r * COLS + k * g + j] = q;
        out.weight[r * COLS + k * g + j] = f(scale * (q - zero));
      }
    }
  }
  return out;
}

function randomW(seed: number): Float32Array {
  const g = gauss(seed);
  const w = Float32Array.from({ length: ROWS * COLS }, () => 0.05 * g());
  // Make a few rows awkward: all positive (range must still include 0 for GPTQ), an outlier, a constant run.
  for (let j = 0; j < COLS; j++) w[3 * COLS + j] = Math.abs(w[3 * COLS + j]) + 0.01;
  w[5 * COLS + 17] = 0.9;
  for (let j = 0; j < 32; j++) w[7 * COLS + j] = 0;
  for (let j = 0; j < 32; j++) w[9 * COLS + 64 + j] = -0.02;
  return w;
}

const CASES: [number, number, Grid, boolean][] = [];
for (const bits of [2, 3, 4, 8]) {
  for (const group of [-1, 32, 128]) {
    for (const grid of ['gptq', 'awq', 'absmax'] as Grid[]) CASES.push([bits, group, grid, false]);
    CASES.push([bits, group, 'gptq', true]);
  }
}

describe('quantizeRtn matches the reference grids', () => {
  const W = randomW(11);
  test.each(CASES)('bits %i group %i grid %s sym %s', async (bits, group, grid, sym) => {
    const r = await addon.quantizeRtn(W, { rows: ROWS, cols: COLS, bits, groupSize: group, sym, grid });
    const ref = reference(W, bits, group, grid, sym);
    expect(Array.from(r.qweight as Uint8Array)).toEqual(Array.from(ref.qweight));
    expect(Array.from(r.scales as Float32Array)).toEqual(Array.from(ref.scales));
    expect(Array.from(r.zeros as Float32Array)).toEqual(Array.from(ref.zeros));
    const ng = ref.scales.length / ROWS;
    const g = COLS / ng;
    let bad = 0;
    for (let i = 0; i < ROWS * COLS; i++) {
      const scale = ref.scales[Math.floor(i / COLS) * ng + Math.floor((i % COLS) / g)];
      if (!(Math.abs(r.weight[i] - ref.weight[i]) <= 1e-6 * scale)) bad++;
    }
    expect(bad).toBe(0);
    // Sanity of the reference itself: round-to-nearest error is at most half a step inside the range.
    if (grid === 'absmax') {
      for (let i = 0; i < ROWS * COLS; i++) {
        const scale = ref.scales[Math.floor(i / COLS) * ng + Math.floor((i % COLS) / g)];
        expect(Math.abs(W[i] - ref.weight[i])).toBeLessThanOrEqual(0.5 * scale * (1 + 1e-6));
      }
    }
  });
});

describe('quantizeRtn argument errors', () => {
  const W = randomW(3);
  const call = (o: Record<string, unknown>) => (async () => addon.quantizeRtn(W, { rows: ROWS, cols: COLS, bits: 4, groupSize: 128, grid: 'gptq', ...o }))();

  test('a group size that does not divide the columns', async () => {
    await expect(call({ groupSize: 100 })).rejects.toThrow(/group size 100 does not divide 256 columns/);
    await expect(call({ groupSize: 48 })).rejects.toThrow(/group size 48/);
  });

  test('bits 0 and 9 are rejected', async () => {
    await expect(call({ bits: 0 })).rejects.toThrow(/bits must be 1\.\.8/);
    await expect(call({ bits: 9 })).rejects.toThrow(/bits must be 1\.\.8/);
  });

  test('absmax needs at least 2 bits; an unknown grid is named', async () => {
    await expect(call({ bits: 1, grid: 'absmax' })).rejects.toThrow(/absmax.*bits >= 2/);
    await expect(call({ grid: 'minmax' })).rejects.toThrow(/grid must be gptq, awq or absmax/);
  });
});
