// Packed low-bit GEMV/GEMM on the GPU (native/cuda/qmatmul.cu) vs cuBLAS on the same weights dense in fp16, and
// the card's copy bandwidth, all measured in the same process (GpuPackedLinear.bench: median of --iters launches,
// 256 MiB read between launches so no weights stay in L2). The whole call (ours) is also timed launch by launch:
// the x conversion, the main kernel and the sum of K splits, each alone. Compile with tsc first, then:
//   node DIST/bench/cuda-packed.js [--shapes 8192x28672,28672x8192] [--batches 1,16,32,128] [--bits 4] [--group 128]
//                                  [--dtypes fp16] [--int8] [--iters 50] [--device cuda:N] [--stages 4] [--wps 24]
//                                  [--kernels auto,mma,wgmma] [--fuse-x 1,0]
// --stages / --wps take lists to compare launch settings (copy stages; warps per SM the mma.sync kernel's K split
// aims for); --kernels compares the mma.sync kernel with the Hopper wgmma GEMM ('auto': the one each batch gets);
// --fuse-x 0 gives the mma.sync kernel a separate x conversion launch even where it could convert x itself.
// Shapes are N (outputs) × K (inputs). Prints one table row per (shape, batch, dtype) and a JSON line per row.
import * as crypto from 'crypto';
import { cudaDevices } from '../lib/eval/cuda';
import { packInt8, packLinear } from '../lib/quant/packed';
import { GpuPackedLinear, PackedActDType, PackedKernel } from '../lib/quant/packed-cuda';
import type { QuantizedTensor } from '../lib/quant/weights';
import { arg } from './args';

/** Uniform random integers, scales in [0.005, 0.055), integer zeros (asymmetric, the GPTQ/RTN grid). */
function randomWeights(bits: number, rows: number, cols: number, group: number): QuantizedTensor {
  const qweight = new Uint8Array(rows * cols);
  for (let o = 0; o < qweight.length; o += 65536) crypto.randomFillSync(qweight, o, Math.min(65536, qweight.length - o));
  const mask = (1 << bits) - 1;
  for (let i = 0; i < qweight.length; i++) qweight[i] &= mask;
  const ng = group > 0 ? cols / group : 1;
  const scales = new Float32Array(rows * ng);
  const zeros = new Float32Array(rows * ng);
  for (let i = 0; i < scales.length; i++) {
    scales[i] = 0.005 + 0.05 * Math.random();
    zeros[i] = Math.floor(Math.random() * (mask + 1));
  }
  return { bits, groupSize: group, sym: false, qweight, scales, zeros };
}

/** 8-bit per-channel symmetric (zero 128): the W8A8 grid. */
function randomInt8(rows: number, cols: number): QuantizedTensor {
  const q = randomWeights(8, rows, cols, -1);
  q.sym = true;
  q.zeros.fill(128);
  return q;
}

async function main() {
  const shapes = arg('shapes', '8192x28672,28672x8192').split(',').map((s) => s.split('x').map(Number) as [number, number]);
  const batches = arg('batches', '1,16,32,128').split(',').map(Number);
  const bits = Number(arg('bits', '4'));
  const group = Number(arg('group', '128'));
  const dtypes = arg('dtypes', 'fp16').split(',') as PackedActDType[];
  const iters = Number(arg('iters', '50'));
  const device = arg('device', 'cuda');
  const int8 = process.argv.includes('--int8');
  const stagesList = arg('stages', '0').split(',').map(Number);
  const wpsList = arg('wps', '0').split(',').map(Number);
  const kernels = arg('kernels', 'auto').split(',') as PackedKernel[];
  const fuseList = arg('fuse-x', '1').split(',').map((v) => v !== '0');
  const dev = cudaDevices()[Number(device.split(':')[1] ?? 0)];
  console.log(`# ${dev?.name ?? '?'} (${device}), ${new Date().toISOString()}`);
  console.log('| N × K | weights | batch | act | kernel | stages/wps | ours µs | x prep µs | kernel µs | split sum µs | cuBLAS fp16 µs | speedup | ours GB/s | % of copy | kernel % of copy | cuBLAS % of copy | copy GB/s | splits | rel. diff |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  // kernel: 'mma+x' where the mma.sync kernel converted x itself (x prep 0: no such launch).
  const rows: object[] = [];
  for (const [N, K] of shapes) {
    const kinds = int8 ? ['int8'] : [`int${bits} g${group > 0 ? group : 'row'}`];
    for (const kind of kinds) {
      const w = kind === 'int8' ? packInt8(randomInt8(N, K), N, K) : packLinear(randomWeights(bits, N, K, group), N, K);
      const lin = await GpuPackedLinear.create(w, { device });
      for (const batch of batches) {
        for (const dtype of kind === 'int8' ? (['fp16'] as PackedActDType[]) : dtypes)
          for (const kernel of kind === 'int8' ? (['auto'] as PackedKernel[]) : kernels)
            for (const stages of stagesList)
              for (const warpsPerSm of wpsList)
                for (const fuseX of fuseList) {
                  const b = await lin.bench({ batch, dtype, kernel, iters, stages, warpsPerSm, fuseX });
                  const gbs = b.oursBytes / b.oursUs / 1e3;
                  const kgbs = b.kernelUs > 0 ? b.oursBytes / b.kernelUs / 1e3 : 0;
                  const dgbs = b.denseBytes / b.denseUs / 1e3;
                  const ran = kind === 'int8' ? 'cuBLAS int8' : b.wgmma ? 'wgmma' : b.fusedX ? 'mma+x' : 'mma';
                  console.log(
                    `| ${N} × ${K} | ${kind} | ${batch} | ${kind === 'int8' ? 'int8' : dtype} | ${ran} | ${stages || 'default'}/${warpsPerSm || 'default'} | ` +
                      `${b.oursUs.toFixed(1)} | ${b.prepUs.toFixed(1)} | ${b.kernelUs.toFixed(1)} | ${b.finishUs.toFixed(1)} | ${b.denseUs.toFixed(1)} | **${(b.denseUs / b.oursUs).toFixed(2)}×** | ` +
                      `${gbs.toFixed(0)} | ${((100 * gbs) / b.copyGBs).toFixed(0)}% | ${((100 * kgbs) / b.copyGBs).toFixed(0)}% | ` +
                      `${((100 * dgbs) / b.copyGBs).toFixed(0)}% | ${b.copyGBs.toFixed(0)} | ${b.splits} | ${b.relErr.toExponential(1)} |`,
                  );
                  rows.push({ N, K, kind, batch, dtype, kernel: ran, stages, warpsPerSm, fuseX, ...b });
                }
      }
      lin.free();
    }
  }
  for (const r of rows) console.log(JSON.stringify(r));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
