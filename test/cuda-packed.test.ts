// Packed low-bit linears on the GPU (native/cuda/qmatmul.cu: the mma.sync kernel; qgemm.cu: the Hopper wgmma GEMM,
// run on every case as well where the GPU has it) on fresh random weights and activations:
//  - against a float64 reference that rounds exactly what the device format rounds (x to fp16/bf16, the scales
//    to fp16 after the layout's power-of-two factor, the zeros to fp16, and in the wgmma kernel each dequantized
//    weight to fp16/bf16), so only fp32 summation order is left;
//  - against the CPU packed kernels (fp32 activations) within the 16-bit rounding of x;
//  - W8A8 bit for bit against the CPU's int8 path.
// Every bit width × group layout (32, 64, 128, one per row, act-order) × fp16/bf16 × batch 1..130 (the batch-1
// split-K path, the 16/32-token tiles, > 64 tokens in two passes), ragged rows and columns.
// Without a GPU (or in a CPU-only build) only the error check runs.
import { cudaDevices, cudaInfo } from '../lib/eval/cuda';
import { addon } from '../lib/native/addon';
import { packInt8, packLinear, packedMatmul } from '../lib/quant/packed';
import { GpuPackedLinear, PackedActDType, PackedKernel } from '../lib/quant/packed-cuda';
import type { QuantizedTensor } from '../lib/quant/weights';
import { deviceScaleFactor, int8Weights, randomQuantized, rng } from './helpers/quantized';
import { rhe } from './helpers/random';

const gpu = cudaInfo().built && cudaDevices().length > 0;
const gpuDescribe = gpu ? describe : describe.skip;

// Math's functions bound once: a global lookup per call is slow inside jest's VM context, and the references below
// make millions of calls.
const { abs, floor, log2, max } = Math;

/** v rounded to a binary float with `sig` significant bits and minimum normal exponent minExp (RNE). */
function roundFloat(v: number, sig: number, minExp: number): number {
  if (v === 0 || !Number.isFinite(v)) return v;
  const a = abs(v);
  let e = floor(log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (max(e, minExp) - (sig - 1));
  return rhe(v / ulp) * ulp;
}
const toF16 = (v: number) => roundFloat(v, 11, -14);
const toBf16 = (v: number) => roundFloat(v, 8, -126);

/**
 * y = x·Wᵀ in float64 with the device format's roundings, per kernel; mag = Σ|s|·(q + |z|)·|x| per output (the scale
 * of fp32 error). The device holds S = fp16(s·P) (P: a power of two) and fp16 zeros. The mma.sync kernel scales exact
 * integer sums in fp32: w = S·(q − z)/P. The wgmma kernel rounds each weight to the activation type T as it
 * dequantizes it: w = T(q·S' + T(−z·S'))/(P·f) with S' = T(S·f), f the largest power of two ≤ 1 with every
 * |S·f|·(2^bits − 1 + |z|) ≤ 2^15.
 */
function deviceReference(q: QuantizedTensor, rows: number, cols: number, x: Float32Array, M: number, dtype: PackedActDType) {
  const g = q.groupSize < 0 ? cols : q.groupSize;
  const ng = cols / g;
  const P = deviceScaleFactor(q.scales);
  const S = Float64Array.from(q.scales, (s) => toF16(Math.fround(s * P)));
  const z16 = Float64Array.from(q.zeros, (z) => toF16(z));
  const rx = dtype === 'fp16' ? toF16 : toBf16;
  const qmax = 2 ** q.bits - 1;
  const biggest = S.reduce((m, v, k) => max(m, abs(v) * (qmax + abs(z16[k]))), 0);
  let f = 1;
  while (biggest * f > 32768) f /= 2;
  const Sf = S.map((v) => rx(v * f));
  const C = Sf.map((v, k) => rx(-z16[k] * v));
  const xr = Float64Array.from(x, (v) => rx(v));
  const xa = xr.map(abs);
  const y = { mma: new Float64Array(M * rows), wgmma: new Float64Array(M * rows) };
  const mag = new Float64Array(M * rows);
  const w = new Float64Array(cols);
  const ww = new Float64Array(cols);
  const wa = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const k = r * ng + (q.gIdx ? q.gIdx[c] : floor(c / g));
      const qv = q.qweight[r * cols + c];
      w[c] = (S[k] / P) * (qv - z16[k]);
      ww[c] = rx(qv * Sf[k] + C[k]) / (P * f);
      wa[c] = abs(S[k] / P) * (qv + abs(z16[k]));
    }
    for (let m = 0; m < M; m++) {
      let s = 0;
      let sw = 0;
      let a = 0;
      for (let c = 0, i = m * cols; c < cols; c++, i++) {
        s += w[c] * xr[i];
        sw += ww[c] * xr[i];
        a += wa[c] * xa[i];
      }
      y.mma[m * rows + r] = s;
      y.wgmma[m * rows + r] = sw;
      mag[m * rows + r] = a;
    }
  }
  return { y, mag };
}

function randomX(M: number, cols: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: M * cols }, () => (r() - 0.5) * (0.5 + 4 * r()));
}

/** max over outputs of |a − b| / mag (0 when within). */
function worst(a: ArrayLike<number>, b: ArrayLike<number>, mag: ArrayLike<number>): number {
  let w = 0;
  for (let i = 0; i < a.length; i++) w = max(w, abs(a[i] - b[i]) / (mag[i] || 1));
  return w;
}

test('GpuPackedLinear without a usable GPU is a clear error', async () => {
  if (gpu) return;
  const q = randomQuantized(4, 16, 128, 128, false, 1);
  await expect(GpuPackedLinear.create(packLinear(q, 16, 128))).rejects.toThrow(/--device cuda: (lowbit was built without CUDA|no CUDA device found)/);
});

gpuDescribe('packed linears on the GPU', () => {
  const layouts: [string, number, boolean, number][] = [
    // name, group, act-order, cols
    ['g32', 32, false, 320],
    ['g64', 64, false, 384],
    ['g128', 128, false, 384],
    ['per-row', -1, false, 200],
    ['g128 act-order', 128, true, 384],
  ];
  const cases: [number, string, number, boolean, number, PackedActDType][] = [];
  for (const bits of [2, 3, 4, 8]) for (const [name, g, act, cols] of layouts) for (const dt of ['fp16', 'bf16'] as const) cases.push([bits, name, g, act, cols, dt]);

  test.each(cases)('int%i %s %#: %s', async (bits, _name, group, act, cols, dtype) => {
    const rows = 200;
    const q = randomQuantized(bits, rows, cols, group, act, bits * 1000 + cols + (act ? 7 : 0));
    const p = packLinear(q, rows, cols);
    const lin = await GpuPackedLinear.create(p);
    const kernels: ('mma' | 'wgmma')[] = lin.info().wgmma ? ['mma', 'wgmma'] : ['mma'];
    try {
      for (const M of [1, 5, 16, 40, 130]) {
        const x = randomX(M, cols, M * 31 + bits);
        const ref = deviceReference(q, rows, cols, x, M, dtype);
        const cpu = await packedMatmul(x, p);
        // The mma.sync kernel with x converted in the kernel (the default up to 16 tokens here) and by its own launch.
        const variants: ['mma' | 'wgmma', boolean][] = kernels.flatMap((k): ['mma' | 'wgmma', boolean][] => (k === 'mma' ? [['mma', true], ['mma', false]] : [[k, true]]));
        for (const [kernel, fuseX] of variants) {
          const y = await lin.matmul(x, { dtype, kernel, fuseX });
          expect(y.length).toBe(M * rows);
          expect(lin.info().lastKernel).toBe(kernel);
          if (!fuseX || M > 16) expect(lin.info().lastFusedX).toBe(false);
          if (kernel === 'mma' && fuseX && M <= 8) expect(lin.info().lastFusedX).toBe(true);
          const e = worst(y, ref.y[kernel], ref.mag);
          if (e > 2e-5) throw new Error(`${kernel}${fuseX ? '' : ' (x by its own launch)'}, M ${M}: max |gpu − reference| / Σ|s|(q+|z|)|x| = ${e.toExponential(2)} (limit 2e-5)`);
          // The CPU kernels take x in fp32: the difference is the 16-bit rounding of x and of the scales (and for wgmma of the weights).
          expect(worst(y, cpu, ref.mag)).toBeLessThan(dtype === 'fp16' ? 2e-3 : 8e-3);
        }
        // 'auto' runs the GEMM kernel from gemmFrom tokens on where it exists.
        await lin.matmul(x, { dtype });
        const info = lin.info();
        expect(info.lastKernel).toBe(info.wgmma && M >= info.gemmFrom ? 'wgmma' : 'mma');
      }
    } finally {
      lin.free();
    }
  });

  test('the wgmma GEMM: several token blocks, split K, repeatable bit for bit; a clear error where it does not exist', async () => {
    // 33 tiles (the last block of rows ragged), 8 column blocks (2 K splits), 300 tokens = three blocks of 128.
    const [rows, cols] = [520, 1024];
    const q = randomQuantized(4, rows, cols, 128, true, 77);
    const lin = await GpuPackedLinear.create(packLinear(q, rows, cols));
    try {
      if (!lin.info().wgmma) {
        await expect(lin.matmul(randomX(16, cols, 1), { kernel: 'wgmma' })).rejects.toThrow(/wgmma packed kernel needs a compute-capability-9.0 GPU/);
        return;
      }
      for (const M of [17, 300]) {
        const x = randomX(M, cols, M);
        const y = await lin.matmul(x, { kernel: 'wgmma' });
        expect(lin.info().lastSplits).toBeGreaterThan(1);
        const ref = deviceReference(q, rows, cols, x, M, 'fp16');
        expect(worst(y, ref.y.wgmma, ref.mag)).toBeLessThan(2e-5);
        const again = await lin.matmul(x, { kernel: 'wgmma' });
        expect(Buffer.from(again.buffer).equals(Buffer.from(y.buffer))).toBe(true); // bit for bit
      }
    } finally {
      lin.free();
    }
  });

  test('batch 1 on a long K (split-K, several splits) and a wide N, repeatable bit for bit', async () => {
    for (const [rows, cols] of [
      [64, 8192],
      [2048, 1024],
    ]) {
      const q = randomQuantized(4, rows, cols, 128, false, rows + cols);
      const lin = await GpuPackedLinear.create(packLinear(q, rows, cols));
      try {
        for (const M of [1, 3])
          for (const fuseX of [true, false]) {
            const x = randomX(M, cols, cols + M);
            const y = await lin.matmul(x, { fuseX });
            if (rows === 64) expect(lin.info().lastSplits).toBeGreaterThan(1);
            expect(lin.info().lastFusedX).toBe(fuseX);
            const ref = deviceReference(q, rows, cols, x, M, 'fp16');
            expect(worst(y, ref.y.mma, ref.mag)).toBeLessThan(2e-5);
            expect(await lin.matmul(x, { fuseX })).toEqual(y);
          }
      } finally {
        lin.free();
      }
    }
  });

  test('W8A8: bit for bit the CPU int8 path', async () => {
    for (const [M, rows, cols] of [
      [1, 5, 64],
      [3, 17, 200],
      [16, 40, 130],
      [70, 33, 320],
    ]) {
      const w = packInt8(int8Weights(rows, cols, M * rows), rows, cols);
      const lin = await GpuPackedLinear.create(w);
      try {
        const x = randomX(M, cols, M + cols);
        const y = await lin.matmul(x);
        const cpu = (await addon.int8Matmul(x, w)) as Float32Array;
        expect(Array.from(y)).toEqual(Array.from(cpu));
        expect(lin.info().int8).toBe(true);
      } finally {
        lin.free();
      }
    }
  });

  test('bad input: a group size the kernels do not take, x of the wrong length, a freed handle', async () => {
    const q = randomQuantized(4, 16, 96, 48, false, 5);
    await expect(GpuPackedLinear.create(packLinear(q, 16, 96))).rejects.toThrow(/group sizes 32, 64 or multiples of 128.*got 48/);
    const lin = await GpuPackedLinear.create(packLinear(randomQuantized(4, 16, 128, 128, false, 6), 16, 128));
    await expect(lin.matmul(new Float32Array(100))).rejects.toThrow(/not a multiple of cols = 128/);
    await expect(lin.matmul(new Float32Array(128), { dtype: 'fp8' as PackedActDType })).rejects.toThrow(/dtype must be fp16 or bf16/);
    await expect(lin.matmul(new Float32Array(128), { kernel: 'wmma' as PackedKernel })).rejects.toThrow(/kernel must be auto, mma or wgmma/);
    lin.free();
    await expect(lin.matmul(new Float32Array(128))).rejects.toThrow(/freed/);
  });
});
