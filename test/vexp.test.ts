// The vectorized exp behind softmax and the NLL, against Math.exp in float64, at every SIMD level.
import { addon } from '../lib/native/addon';

// The level this file found (LOWBIT_SIMD may have lowered it): what it restores after forcing others.
const SIMD0 = addon.simdLevel();

describe('expShiftSum', () => {
  afterAll(() => addon.simdLevel(SIMD0));
  for (const level of ['scalar', 'avx2', 'avx512'] as const) {
    test(`${level}: within 4 ulp of exp on the softmax domain, sum to 1e-6 relative`, () => {
      addon.simdLevel(level);
      const n = 5000 + 7; // not a multiple of any vector width
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = -100 + (103 * i) / n + Math.sin(i) * 0.37; // x − shift ≤ 0, as after subtracting a row max
      x[0] = -1e30;
      const shift = 3.25;
      const { out, sum } = addon.expShiftSum(x, shift);
      let ref = 0;
      for (let i = 0; i < n; i++) {
        const e = Math.exp(Math.fround(x[i] - shift));
        ref += out[i];
        if (e < 1e-34) {
          // far below any row maximum: contributes nothing to a softmax; only finiteness and size matter
          expect(out[i]).toBeLessThan(1e-33);
          continue;
        }
        expect(Math.abs(out[i] - e) / e).toBeLessThan(4 * 2 ** -23);
      }
      let exact = 0;
      for (let i = 0; i < n; i++) exact += Math.exp(Math.fround(x[i] - shift));
      expect(Math.abs(sum - exact) / exact).toBeLessThan(1e-6);
      expect(Math.abs(sum - ref) / ref).toBeLessThan(1e-6);
    });
  }
});
