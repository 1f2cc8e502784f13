/**
 * GPTQ Hessian accumulation (H += α·XᵀX over a batch of calibration activations) in GFLOP/s, against our fp32 GEMM
 * on the same M×N×K in the same run. GFLOP/s count the full 2·n²·T of XᵀX; the accumulation computes only the upper
 * block triangle and mirrors it (a blocked SYRK), so it can exceed the GEMM figure.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench && node /tmp/lowbit-bench/bench/hessian.js [--threads 1,2]
 *
 * Shapes: n = the input width of each linear (qwen3-small: 512 for q/k/v/gate/up, 1536 for down; Qwen3-8B: 4096),
 * T = one 2048-token calibration window per call, as lib/quant/gptq.ts feeds it.
 */
import * as fs from 'fs';
import { addon } from '../lib/native/addon';
import { arg, median } from './args';

const SHAPES = [
  { n: 512, T: 2048 },
  { n: 1536, T: 2048 },
  { n: 4096, T: 2048 },
];

async function timeIt(fn: () => unknown, flops: number): Promise<number> {
  const reps = Math.max(5, Math.min(31, Math.round(20e9 / flops)));
  for (let i = 0; i < 2; i++) await fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) * 1e-9);
  }
  return (flops / median(t)) * 1e-9;
}

async function main(): Promise<void> {
  const threadCounts = arg('threads', '1,2').split(',').map(Number);
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  console.log(`CPU: ${cpu}; SIMD level: ${addon.simdLevel()}`);
  console.log('| n × T | threads | Hessian XᵀX effective GFLOP/s | GEMM x·Wᵀ GFLOP/s (same M×N×K) | ratio |');
  console.log('|---|---|---|---|---|');
  for (const threads of threadCounts) {
    addon.setThreads(threads);
    for (const { n, T } of SHAPES) {
      const X = Float32Array.from({ length: T * n }, () => Math.random() - 0.5);
      const H = new Float32Array(n * n);
      const flops = 2 * n * n * T;
      const hess = await timeIt(() => addon.hessianAccumulate(H, X, 1 / T), flops);
      // The plain GEMM the accumulation is compared with: C[n,n] = A[n,T]·B[n,T]ᵀ, both operands read row-wise.
      const A = Float32Array.from({ length: n * T }, () => Math.random() - 0.5);
      const gemm = await timeIt(
        () => addon.gemm({ M: n, N: n, K: T, transB: true, A, B: X, C: new Float32Array(n * n) }),
        flops,
      );
      console.log(`| ${n} × ${T} | ${threads} | ${hess.toFixed(1)} | ${gemm.toFixed(1)} | ${(hess / gemm).toFixed(2)} |`);
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
