/**
 * fp32 GEMM benchmark, ours vs OpenBLAS cblas_sgemm measured in the same run at the same thread count.
 * Product: y = x·Wᵀ (M = 2048 tokens, W [N, K], transB), as nn.Linear computes it.
 *
 * Run from the repository root (OpenBLAS is only needed here, never by `npm test`):
 *   apt-get install -y libopenblas-dev
 *   sh bench/gemm/run.sh              # builds the OpenBLAS driver and this script, then runs it
 * or by hand:
 *   gcc -O2 bench/gemm/openblas_sgemm.c -o /tmp/lowbit-openblas-sgemm -lopenblas
 *   npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench && node /tmp/lowbit-bench/bench/gemm.js [--threads 1,2] [--m 32,64,128]
 *
 * OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from the baseline's environment so OpenBLAS picks
 * its own kernel for this CPU; the table names the kernel it chose.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { addon } from '../lib/native/addon';
import { arg, median } from './args';

interface Shape {
  M: number;
  N: number;
  K: number;
  dtype: 'F32' | 'BF16';
}

const SHAPES: Shape[] = [
  { M: 2048, N: 768, K: 256, dtype: 'F32' },
  { M: 2048, N: 256, K: 768, dtype: 'F32' },
  { M: 2048, N: 1536, K: 512, dtype: 'F32' },
  { M: 2048, N: 512, K: 1536, dtype: 'F32' },
  { M: 2048, N: 4096, K: 4096, dtype: 'F32' },
  { M: 2048, N: 768, K: 256, dtype: 'BF16' },
  { M: 2048, N: 256, K: 768, dtype: 'BF16' },
];

const flops = (s: Shape) => 2 * s.M * s.N * s.K;
// About 2-4 s of work per measurement, never fewer than 5 timed repetitions.
const repsFor = (s: Shape) => Math.max(5, Math.min(31, Math.round(20e9 / flops(s))));

function bf16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  return Uint16Array.from(u, (v) => ((v + 0x7fff + ((v >>> 16) & 1)) >>> 16) & 0xffff);
}

function ours(s: Shape, threads: number): number {
  addon.setThreads(threads);
  const A = Float32Array.from({ length: s.M * s.K }, () => Math.random() - 0.5);
  const W = Float32Array.from({ length: s.N * s.K }, () => Math.random() - 0.5);
  const B = s.dtype === 'F32' ? W : { data: bf16(W), dtype: 'BF16' };
  const opts = { M: s.M, N: s.N, K: s.K, transB: true, A, B, C: new Float32Array(s.M * s.N) };
  for (let i = 0; i < 2; i++) addon.gemm(opts);
  const t: number[] = [];
  for (let i = 0; i < repsFor(s); i++) {
    const t0 = process.hrtime.bigint();
    addon.gemm(opts);
    t.push(Number(process.hrtime.bigint() - t0) * 1e-9);
  }
  return flops(s) / median(t) * 1e-9;
}

function openblas(bin: string, s: Shape, threads: number): { gflops: number; core: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const out = execFileSync(bin, [String(threads), String(repsFor(s)), `${s.M},${s.N},${s.K}`], { env, encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!);
}

function main(): void {
  const bin = arg('openblas', '/tmp/lowbit-openblas-sgemm');
  const threadCounts = arg('threads', '1,2').split(',').map(Number);
  // --m 32,64,128: the fp32 shapes again at these token counts (short sequences: zero-shot tasks, MMLU).
  const ms = arg('m', '').split(',').filter(Boolean).map(Number);
  const shapes = ms.length ? ms.flatMap((M) => SHAPES.filter((s) => s.dtype === 'F32').map((s) => ({ ...s, M }))) : SHAPES;
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  console.log(`CPU: ${cpu}; SIMD level: ${addon.simdLevel()}`);
  const rows: string[] = [];
  let core = '';
  const baseline = new Map<string, number>();
  for (const threads of threadCounts) {
    for (const s of shapes) {
      const key = `${s.M}x${s.N}x${s.K}/${threads}`;
      if (!baseline.has(key)) {
        const r = openblas(bin, s, threads);
        baseline.set(key, r.gflops);
        core = r.core;
      }
      const g = ours(s, threads);
      const b = baseline.get(key)!;
      const row = `| ${s.M}×${s.N}×${s.K} | ${s.dtype} | ${threads} | ${g.toFixed(1)} | ${b.toFixed(1)} | ${(g / b).toFixed(2)} |`;
      rows.push(row);
      console.error(row);
    }
  }
  console.log(`OpenBLAS kernel: ${core}`);
  console.log('| M×N×K (x·Wᵀ) | W dtype | threads | ours GFLOP/s | OpenBLAS sgemm GFLOP/s (fp32 W) | ours/OpenBLAS |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) console.log(r);
}

main();
