/**
 * Packed low-bit GEMV/GEMM benchmark: y = x·Wᵀ with W packed (int2/3/4/8, group 128; BiLLM 1-bit binary
 * weights, block 128, "bin1" rows: a 2-bit code per weight + 8 fp16 scales per row and block), fp32 activations,
 * against (a) memory bandwidth measured in the same run (1 GiB memcpy, read+write GB/s; and a pure read
 * kernel, an AVX-512 sum of the 1 GiB buffer, on 1 and 2 threads: the GEMV only reads, so that is its ceiling),
 * (b) our fp32 GEMM (addon.gemm, same M) and (c) OpenBLAS cblas_sgemv (M = 1) / cblas_sgemm (M > 1).
 *
 *   apt-get install -y libopenblas-dev
 *   sh bench/packed/run.sh [--threads 1,2] [--quick | --large] [--bits 4,1]
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { addon } from '../lib/native/addon';
import { arg, median } from './args';

interface Case {
  bits: number;
  M: number;
  rows: number;
  cols: number;
}

// Read between timed calls (outside the timing) so that every call reads its weights from DRAM: the int4
// matrices here are 33 MB, about the size of the 32 MiB L3, and repeated calls would find part of them there.
// Read, not written: evicting dirty lines would add write-backs to the timed call.
const l3flush = Float32Array.from({ length: 16 << 20 }, (_, i) => i & 1023);
let sink = 0;
function flushL3(): void {
  let s = 0;
  for (let i = 0; i < l3flush.length; i += 16) s += l3flush[i];
  sink += s;
}

function time(fn: () => void, reps: number): number {
  fn();
  fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    flushL3();
    const t0 = process.hrtime.bigint();
    fn();
    t.push(Number(process.hrtime.bigint() - t0) * 1e-9);
  }
  return median(t);
}

/** BiLLM binary weights: random codes, ~10% salient columns, fp16 scales 2^-7. */
function binary(c: Case, threads: number): { s: number; bytes: number } {
  addon.setThreads(threads);
  const wpr = Math.ceil(c.cols / 16);
  const nb = Math.ceil(c.cols / 128);
  const codes = new Int32Array(c.rows * wpr);
  for (let i = 0; i < codes.length; i++) codes[i] = (i * 2654435761) ^ (i >>> 3) * 40503;
  const salient = new Uint8Array(Math.ceil(c.cols / 8));
  for (let i = 0; i < salient.length; i++) salient[i] = i % 10 === 0 ? 0xff : 0;
  const scales = new Uint16Array(c.rows * nb * 8).fill(0x2000); // fp16 0.0078125
  const raw = { kind: 'binary', rows: c.rows, cols: c.cols, block: 128, salient, codes, scales };
  const p = { ...raw, packed: addon.packBinary(raw) as Uint8Array };
  const x = Float32Array.from({ length: c.M * c.cols }, () => Math.random() - 0.5);
  const y = new Float32Array(c.M * c.rows);
  const s = time(() => addon.binaryMatmulSync(x, p, y), c.M === 1 ? 25 : 7);
  return { s, bytes: p.packed.byteLength + salient.byteLength };
}

function packed(c: Case, threads: number): { s: number; bytes: number } {
  if (c.bits === 1) return binary(c, threads);
  addon.setThreads(threads);
  const G = 128;
  const ng = c.cols / G;
  const maxq = (1 << c.bits) - 1;
  const q = new Uint8Array(c.rows * c.cols);
  for (let i = 0; i < q.length; i++) q[i] = ((i * 2654435761) >>> 11) & maxq;
  const scales = new Float32Array(c.rows * ng).fill(0.01);
  const zeros = new Float32Array(c.rows * ng).fill((maxq + 1) / 2);
  const p = addon.packLinear(q, scales, zeros, null, { rows: c.rows, cols: c.cols, bits: c.bits, groupSize: G });
  const x = Float32Array.from({ length: c.M * c.cols }, () => Math.random() - 0.5);
  const y = new Float32Array(c.M * c.rows);
  const s = time(() => addon.packedMatmulSync(x, p, y), c.M === 1 ? 25 : 7);
  // Weight bytes read: packed integers + scales + zeros.
  return { s, bytes: p.data.byteLength + p.scales.byteLength + p.zeros.byteLength };
}

function fp32(c: Case, threads: number): number {
  addon.setThreads(threads);
  const W = Float32Array.from({ length: c.rows * c.cols }, () => Math.random() - 0.5);
  const A = Float32Array.from({ length: c.M * c.cols }, () => Math.random() - 0.5);
  const opts = { M: c.M, N: c.rows, K: c.cols, transB: true, A, B: W, C: new Float32Array(c.M * c.rows) };
  return time(() => addon.gemm(opts), c.M === 1 ? 15 : 5);
}

function openblas(bin: string, c: Case, threads: number): number {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  const out = execFileSync(bin, [String(threads), c.M === 1 ? '15' : '5', `${c.M},${c.rows},${c.cols}`], { env, encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!).ms * 1e-3;
}

function main(): void {
  const bin = arg('openblas', '/tmp/lowbit-openblas-sgemv');
  const threadCounts = arg('threads', '1,2').split(',').map(Number);
  const quick = process.argv.includes('--quick');
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const bw = JSON.parse(execFileSync(bin, ['memcpy'], { encoding: 'utf8' }).trim());
  console.log(`CPU: ${cpu}; SIMD level: ${addon.simdLevel()}`);
  console.log(
    `memcpy 1 GiB (1 thread): ${bw.copy_gbps.toFixed(1)} GB/s read+write; read-only AVX-512 sum of 1 GiB: ` +
      `${bw.sum1_gbps.toFixed(1)} GB/s (1 thread), ${bw.sum2_gbps.toFixed(1)} GB/s (2 threads)`,
  );
  const cases: Case[] = [
    { bits: 4, M: 1, rows: 4096, cols: 14336 },
    { bits: 4, M: 1, rows: 14336, cols: 4096 },
  ];
  if (!quick) {
    for (const bits of [2, 3, 8]) cases.push({ bits, M: 1, rows: 4096, cols: 14336 });
    for (const M of [16, 64]) cases.push({ bits: 4, M, rows: 4096, cols: 14336 });
    cases.push({ bits: 1, M: 1, rows: 4096, cols: 14336 }, { bits: 1, M: 1, rows: 14336, cols: 4096 }, { bits: 1, M: 4, rows: 4096, cols: 14336 }, { bits: 1, M: 16, rows: 4096, cols: 14336 });
  }
  if (process.argv.includes('--large')) {
    // Larger batches (prefill, batched log-likelihoods): the qwen3-tiny linears at a 2048-token window, and
    // 8B-class rows at 256–512 tokens, where the packed path runs lowbit::gemm on weights expanded block by block.
    cases.length = 0;
    cases.push(
      { bits: 4, M: 2048, rows: 768, cols: 256 },
      { bits: 4, M: 2048, rows: 256, cols: 768 },
      { bits: 4, M: 2048, rows: 256, cols: 256 },
      { bits: 3, M: 2048, rows: 768, cols: 256 },
      { bits: 4, M: 256, rows: 4096, cols: 4096 },
      { bits: 4, M: 512, rows: 4096, cols: 1024 },
    );
  }
  const onlyBits = arg('bits', '').split(',').filter(Boolean).map(Number);
  const rows: string[] = [];
  for (const threads of threadCounts) {
    for (const c of cases.filter((k) => !onlyBits.length || onlyBits.includes(k.bits))) {
      const pk = packed(c, threads);
      const f = fp32(c, threads);
      const ob = openblas(bin, c, threads);
      const gbs = pk.bytes / pk.s * 1e-9;
      const rd = threads >= 2 ? bw.sum2_gbps : bw.sum1_gbps;
      const row =
        `| ${c.bits === 1 ? 'bin1 b128' : `int${c.bits} g128`} | ${c.M} | ${c.rows}×${c.cols} | ${threads} | ${(pk.s * 1e3).toFixed(2)} | ${c.M === 1 ? gbs.toFixed(1) : '–'} | ` +
        `${c.M === 1 ? `${(gbs / bw.copy_gbps).toFixed(2)} / ${(gbs / rd).toFixed(2)}` : '–'} | ${(f * 1e3).toFixed(2)} | ${(f / pk.s).toFixed(1)}× | ` +
        `${(ob * 1e3).toFixed(2)} | ${(ob / pk.s).toFixed(1)}× |`;
      rows.push(row);
      console.error(row);
    }
  }
  if (sink < 0) console.log(sink);
  console.log('| weights | M | rows×cols | threads | packed ms | weight GB/s | ÷ memcpy r+w BW / ÷ read-only BW | fp32 lowbit::gemm ms | speedup | OpenBLAS ms | speedup |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(r);
}

main();
