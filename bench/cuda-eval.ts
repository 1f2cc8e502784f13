// Eval throughput of the CUDA forward (per-position NLL, the perplexity workload): a batch of random token
// windows through a model held on the GPU, timed after warm-up (median of the wall time around the
// awaited call, and of the device time between CUDA events inside it). Pair: bench/cuda_eval_torch.py, the
// same shapes through PyTorch/transformers (bf16, SDPA, logits + cross-entropy); bench/cuda-eval.sh runs both.
//
//   node dist-dev/bench/cuda-eval.js <model-dir> [--batch 8] [--seqlen 2048] [--reps 10] [--dtype bf16] [--act-fp32] [--ids-out f]
import * as fs from 'fs';
import { GpuDType, GpuModel, cudaDevices } from '../lib/eval/cuda';
import { loadModel } from '../lib/load/model';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function main(): Promise<void> {
  const dir = process.argv[2];
  const batch = Number(arg('batch', '8'));
  const seqLen = Number(arg('seqlen', '2048'));
  const reps = Number(arg('reps', '10'));
  const dtype = arg('dtype', 'bf16') as GpuDType;
  const actFp32 = process.argv.includes('--act-fp32');
  const devs = cudaDevices();
  if (!devs.length) throw new Error('no CUDA device');
  const model = loadModel(dir);
  const V = model.config.vocabSize;
  const ids = new Int32Array(batch * seqLen);
  let x = 12345;
  for (let i = 0; i < ids.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    ids[i] = (x >>> 8) % V;
  }
  const idsOut = arg('ids-out', '');
  if (idsOut) fs.writeFileSync(idsOut, Buffer.from(ids.buffer));
  const t0 = performance.now();
  const gpu = await GpuModel.create(model, { dtype, actFp32 });
  const uploadS = (performance.now() - t0) / 1000;
  let nll = await gpu.score(ids, seqLen); // warm-up (workspace allocation, cuBLAS heuristics)
  nll = await gpu.score(ids, seqLen);
  const wall: number[] = [];
  const dev: number[] = [];
  for (let r = 0; r < reps; r++) {
    const a = performance.now();
    nll = await gpu.score(ids, seqLen);
    wall.push(performance.now() - a);
    dev.push(gpu.info().lastGpuMs);
  }
  let sum = 0;
  let n = 0;
  for (let s = 0; s < batch; s++) for (let t = 0; t < seqLen - 1; t++, n++) sum += nll[s * seqLen + t];
  const tokens = batch * seqLen;
  const out = {
    impl: 'lowbit-cuda',
    device: devs[0].name,
    dtype: dtype + (actFp32 && dtype !== 'fp32' ? '+fp32act' : ''),
    layers: model.config.numLayers,
    batch,
    seqLen,
    weightGiB: gpu.info().weightBytes / 2 ** 30,
    uploadS,
    medianWallMs: median(wall),
    medianGpuMs: median(dev),
    tokensPerS: tokens / (median(wall) / 1000),
    meanNll: sum / n,
  };
  gpu.free();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e?.stack ?? e) + '\n');
  process.exit(1);
});
