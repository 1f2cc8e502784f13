import { addon } from '../lib/native/addon';

// The level this file found (LOWBIT_SIMD may have lowered it): what it restores after forcing others.
const SIMD0 = addon.simdLevel();
import { rng as uniform } from './helpers/random';

type Dt = 'F32' | 'BF16' | 'F16';

// Deterministic inputs in [-0.5, 0.5) so a failure reproduces.
function rng(seed: number): () => number {
  const u = uniform(seed);
  return () => u() - 0.5;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function toBf16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
function fromBf16(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

// Round-to-nearest-even fp32 -> fp16 for the normal and subnormal ranges the tests use.
function toF16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const a = Math.abs(f32[0]);
  if (a === 0) return sign;
  if (a < 2 ** -14) return sign | roundEven(a / 2 ** -24);
  const e = Math.floor(Math.log2(a));
  const m = roundEven((a / 2 ** e - 1) * 1024);
  return m === 1024 ? sign | ((e + 16) << 10) : sign | ((e + 15) << 10) | m;
}
function roundEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}
function fromF16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

interface Case {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  dtype: Dt;
  alpha: number;
  beta: number;
  pad: number;
}

// Builds the inputs of one case; check() compares C with a float64 triple loop afterwards.
function prepare(c: Case, seed: number): { opts: Record<string, unknown>; check: () => void } {
  const r = rng(seed);
  const { M, N, K, transA, transB, dtype, alpha, beta, pad } = c;
  const aRows = transA ? K : M, aCols = transA ? M : K;
  const bRows = transB ? N : K, bCols = transB ? K : N;
  const lda = aCols + pad, ldb = bCols + 2 * pad, ldc = N + pad;
  const A = Float32Array.from({ length: aRows * lda }, r);
  const bVals = Float32Array.from({ length: bRows * ldb }, r);
  let B: Float32Array | { data: Uint16Array | Float32Array; dtype: Dt } = bVals;
  // One element type for the reference loop keeps it monomorphic, and fast.
  let bEff = Float64Array.from(bVals);
  if (dtype !== 'F32') {
    const enc = dtype === 'BF16' ? toBf16 : toF16;
    const dec = dtype === 'BF16' ? fromBf16 : fromF16;
    const bits = Uint16Array.from(bVals, enc);
    B = { data: bits, dtype };
    bEff = Float64Array.from(bits, dec);
  } else if (seed % 2) {
    B = { data: bVals, dtype: 'F32' };
  }
  const C = new Float32Array(M * ldc);
  for (let i = 0; i < C.length; i++) C[i] = beta === 0 ? NaN : r();
  const C0 = Float64Array.from(C);
  const opts = { M, N, K, transA, transB, A, lda, B, ldb, C, ldc, alpha, beta };
  return { opts, check: () => checkC(c, A, lda, bEff, ldb, C, C0, ldc) };
}

function runCase(c: Case, seed: number): void {
  const { opts, check } = prepare(c, seed);
  addon.gemm(opts);
  check();
}

function checkC(c: Case, A: Float32Array, lda: number, bEff: Float64Array, ldb: number, C: Float32Array, C0: Float64Array, ldc: number): void {
  const { M, N, K, transA, transB, alpha, beta } = c;
  let maxA = 0, maxB = 0;
  for (const v of A) maxA = Math.max(maxA, Math.abs(v));
  for (let i = 0; i < bEff.length; i++) maxB = Math.max(maxB, Math.abs(bEff[i]));
  const tol = 1e-5 * Math.sqrt(Math.max(K, 1)) * (Math.abs(alpha) * maxA * maxB * Math.max(K, 1) + Math.abs(beta)) + 1e-30;
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[transA ? k * lda + i : i * lda + k] * bEff[transB ? j * ldb + k : k * ldb + j];
      const want = alpha * s + (beta === 0 ? 0 : beta * C0[i * ldc + j]);
      const got = C[i * ldc + j];
      if (!(Math.abs(got - want) <= tol)) {
        throw new Error(`C[${i},${j}] = ${got}, want ${want} (tol ${tol}) for ${JSON.stringify(c)}`);
      }
    }
    // The padding between rows belongs to the caller and must survive.
    for (let j = N; j < ldc && i < M - 1; j++) {
      const v = C[i * ldc + j], v0 = C0[i * ldc + j];
      if (!(v === v0 || (Number.isNaN(v) && Number.isNaN(v0)))) throw new Error(`C padding [${i},${j}] overwritten`);
    }
  }
}

const sizes: [number, number, number][] = [
  [1, 1, 1],
  [1, 257, 33],
  [7, 1, 33],
  [33, 7, 257],
  [14, 32, 256],
  [15, 33, 257],
  [64, 96, 17],
  [100, 70, 300],
  [29, 65, 513],
  [130, 40, 9],
  [2, 300, 600],
];

const levels = ['scalar', 'avx2', 'avx512'] as const;

afterAll(() => {
  addon.simdLevel(SIMD0);
  addon.setThreads(0);
});

describe('gemm', () => {
  for (const level of levels) {
    for (const threads of [1, 2]) {
      test(`${level}, ${threads} thread(s): shapes x transposes x dtypes x alpha/beta`, () => {
        addon.simdLevel(level);
        addon.setThreads(threads);
        let seed = 1;
        for (const [M, N, K] of sizes) {
          for (const transA of [false, true]) {
            for (const transB of [false, true]) {
              const dtype: Dt = (['F32', 'BF16', 'F16'] as const)[seed % 3];
              const [alpha, beta] = ([[1, 0], [0.5, -1.25], [-2, 1]] as const)[(seed >> 1) % 3];
              runCase({ M, N, K, transA, transB, dtype, alpha, beta, pad: seed % 4 === 0 ? 0 : 3 }, seed);
              seed++;
            }
          }
        }
      });
    }
  }

  test('large enough to use several cache blocks and both threads', () => {
    addon.setThreads(2);
    for (const level of levels) {
      addon.simdLevel(level);
      runCase({ M: 20, N: 2100, K: 300, transA: false, transB: true, dtype: 'BF16', alpha: 1, beta: 0, pad: 1 }, 7);
      runCase({ M: 700, N: 40, K: 600, transA: true, transB: false, dtype: 'F16', alpha: 1, beta: 1, pad: 0 }, 8);
    }
  });

  test('every dtype on the tiles and GEMV paths', () => {
    for (const dtype of ['F32', 'BF16', 'F16'] as const) {
      for (const transB of [false, true]) {
        runCase({ M: 1, N: 1030, K: 1030, transA: false, transB, dtype, alpha: 1, beta: 0, pad: 0 }, 11);
        runCase({ M: 1, N: 40, K: 70, transA: true, transB, dtype, alpha: 2, beta: 0.5, pad: 2 }, 12);
        runCase({ M: 40, N: 50, K: 70, transA: false, transB, dtype, alpha: 1, beta: 0, pad: 1 }, 13);
      }
    }
  });

  test('BLAS edge semantics: K = 0, alpha = 0, empty C', () => {
    const C = Float32Array.from([NaN, 2, 3, 4]);
    addon.gemm({ M: 2, N: 2, K: 0, A: new Float32Array(0), B: new Float32Array(0), C, beta: 0 });
    expect(Array.from(C)).toEqual([0, 0, 0, 0]);
    const C2 = Float32Array.from([1, 2, 3, 4]);
    const A = new Float32Array(6).fill(NaN);
    addon.gemm({ M: 2, N: 2, K: 3, A, B: new Float32Array(6), C: C2, alpha: 0, beta: 2 });
    expect(Array.from(C2)).toEqual([2, 4, 6, 8]);
    addon.gemm({ M: 0, N: 5, K: 3, A: new Float32Array(0), B: new Float32Array(15), C: new Float32Array(0) });
  });

  test('rejects buffers that are too small', () => {
    expect(() => addon.gemm({ M: 4, N: 4, K: 4, A: new Float32Array(15), B: new Float32Array(16), C: new Float32Array(16) })).toThrow(/gemm A/);
    expect(() =>
      addon.gemm({ M: 4, N: 4, K: 4, A: new Float32Array(16), B: { data: new Uint16Array(15), dtype: 'BF16' }, C: new Float32Array(16) }),
    ).toThrow(/gemm B/);
    expect(() => addon.gemm({ M: 4, N: 4, K: 4, A: new Float32Array(16), B: new Float32Array(16), C: new Float32Array(16), lda: 3 })).toThrow(
      /leading dimension/,
    );
  });

  test('gemmAsync resolves with C written', async () => {
    addon.simdLevel(SIMD0);
    addon.setThreads(2);
    const { opts, check } = prepare({ M: 70, N: 50, K: 40, transA: false, transB: true, dtype: 'BF16', alpha: 1, beta: 0, pad: 0 }, 21);
    await expect(addon.gemmAsync(opts)).resolves.toBeUndefined();
    check();
  });
});
