// BiLLM per linear at a model's shapes: the GPU solver (native/cuda/billm.cu) against the CPU one (native/cpu/
// billm.cpp, every core of the host) on the same weight and Hessian in the same run, with their agreement. The
// Hessian is 2/T·XᵀX of T random correlated tokens (accumulated on the GPU); the weights are Gaussian with a few
// outlier columns. Times include the standalone call's upload of W and H (the pipeline keeps both on the device).
// Usage (compile with tsc first, as bench/anchors.ts):
//   node DIST/bench/cuda-billm.js [--hidden 4096] [--inter 12288] [--kv 1024] [--cpu q,k] [--block 128]
// --cpu names the shapes (q, k, gate, down) the CPU also runs (default q,k: the CPU takes minutes per large shape).
import { addon } from '../lib/native/addon';
import { billmMaxSalient, BillmResult } from '../lib/quant/billm';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
}

/** A deterministic Gaussian stream (xorshift + Box–Muller). */
function gauss(seed: number): () => number {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
}

async function hessian(cols: number, seed: number): Promise<Float32Array> {
  const T = 4096;
  const F = 16;
  const g = gauss(seed);
  const mix = Float32Array.from({ length: F * cols }, () => 0.5 * g());
  const X = new Float32Array(T * cols);
  const z = new Float32Array(F);
  for (let t = 0; t < T; t++) {
    for (let f = 0; f < F; f++) z[f] = g();
    for (let c = 0; c < cols; c++) {
      let v = g();
      for (let f = 0; f < F; f++) v += z[f] * mix[f * cols + c];
      X[t * cols + c] = c % 97 === 5 ? 10 * v : v;
    }
  }
  const H = new Float32Array(cols * cols);
  await addon.gpuHessianAccumulate(H, X, 2 / T, 0);
  return H;
}

function sameCodes(a: BillmResult, b: BillmResult): number {
  let same = 0;
  let total = 0;
  for (let i = 0; i < a.binary.codes.length; i++) {
    const x = a.binary.codes[i] ^ b.binary.codes[i];
    for (let k = 0; k < 16; k++) if (((x >>> (2 * k)) & 3) === 0) same++;
    total += 16;
  }
  return same / total;
}

async function main() {
  const hidden = Number(arg('--hidden', '4096'));
  const inter = Number(arg('--inter', '12288'));
  const kv = Number(arg('--kv', '1024'));
  const block = Number(arg('--block', '128'));
  const onCpu = new Set(arg('--cpu', 'q,k').split(',').filter(Boolean));
  const shapes: [string, number, number][] = [
    ['q', hidden, hidden],
    ['k', kv, hidden],
    ['gate', inter, hidden],
    ['down', hidden, inter],
  ];
  const opts = { blockSize: block, damp: 0.01, maxSalient: billmMaxSalient(block) };
  const H: Record<number, Float32Array> = {};
  console.log(`| shape (rows × cols) | GPU s | CPU s | CPU / GPU | identical codes | loss GPU / CPU |`);
  console.log(`|---|---|---|---|---|---|`);
  for (const [name, rows, cols] of shapes) {
    H[cols] ??= await hessian(cols, cols);
    const g = gauss(rows * 31 + cols);
    const W = Float32Array.from({ length: rows * cols }, (_, i) => 0.02 * g() * (i % cols < 4 ? 8 : 1));
    const t0 = performance.now();
    const dev: BillmResult = await addon.gpuBillmQuantize(W, H[cols], { rows, cols, ...opts });
    const tg = (performance.now() - t0) / 1000;
    let cpuCells = '— | — | — | —';
    if (onCpu.has(name)) {
      const t1 = performance.now();
      const cpu: BillmResult = await addon.billmQuantize(W, H[cols], { rows, cols, ...opts });
      const tc = (performance.now() - t1) / 1000;
      cpuCells = `${tc.toFixed(2)} | ${(tc / tg).toFixed(1)}× | ${(100 * sameCodes(cpu, dev)).toFixed(3)}% | ${(dev.loss / cpu.loss).toFixed(6)}`;
    }
    console.log(`| ${name} (${rows} × ${cols}) | ${tg.toFixed(2)} | ${cpuCells} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
