// Evaluation throughput on the GPU with host-sized batches (the CPU's defaults: perplexity `defaultBatch` windows,
// log-likelihoods `defaultBatchTokens`) vs GPU-sized ones (GpuModel.batchTokens), alternated twice, same process.
// Random token ids for perplexity; the bundled task data (first --limit documents) for the log-likelihood tasks.
//
//   node dist-dev/bench/cuda-eval-batch.js <model-dir> [--windows 32] [--seqlen 2048] [--dtype bf16]
//                                          [--tasks hellaswag,arc_easy,piqa] [--limit 300] [--data-dir data]
import { GpuDType, toDevice } from '../lib/eval/cuda';
import { evaluate } from '../lib/eval/evaluate';
import { defaultBatchTokens } from '../lib/eval/loglikelihood';
import { defaultBatch, perplexity } from '../lib/eval/perplexity';
import { loadModel } from '../lib/load/model';
import { loadTokenizer } from '../lib/load/tokenizer';
import { arg } from './args';

async function main(): Promise<void> {
  const dir = process.argv[2];
  const windows = Number(arg('windows', '32'));
  const seqLen = Number(arg('seqlen', '2048'));
  const tasks = arg('tasks', '');
  const limit = Number(arg('limit', '300'));
  const model = loadModel(dir);
  const gpu = (await toDevice(model, 'cuda', { dtype: arg('dtype', 'bf16') as GpuDType }))!;
  const V = model.config.vocabSize;
  const n = windows * seqLen;
  const ids = Int32Array.from({ length: n }, (_, i) => (i * 7919 + 13) % V);
  await perplexity(model, ids.subarray(0, 2 * seqLen), { seqLen }); // warm-up
  const host = defaultBatch(model, seqLen);
  console.log(`# ${dir}: ${windows} × ${seqLen} tokens; host default ${host} window(s) per call, GPU default ${gpu.batchTokens()} tokens`);
  for (const batch of [host, undefined, host, undefined]) {
    const r = await perplexity(model, ids, { seqLen, batch });
    const label = batch ? `${batch} window(s) per call (host default)` : `${Math.floor(gpu.batchTokens() / seqLen)} windows per call (GPU default)`;
    console.log(`perplexity, ${label}: ${r.seconds.toFixed(3)} s = ${(n / r.seconds).toFixed(0)} tok/s (ppl ${r.ppl.toFixed(4)})`);
  }
  if (tasks) {
    const tok = await loadTokenizer(dir);
    for (const batchTokens of [defaultBatchTokens(model), gpu.batchTokens()]) {
      const t0 = performance.now();
      const r = await evaluate(model, (t) => tok.encode(t), { tasks: tasks.split(','), limit, dataDir: arg('data-dir', 'data'), batchTokens });
      const parts = Object.entries(r).map(([k, v]) => `${k} ${v.seconds?.toFixed(2)} s (acc ${v.acc?.toFixed(4)}, n ${v.n})`);
      console.log(`${tasks}, ${batchTokens} padded tokens per call: ${((performance.now() - t0) / 1000).toFixed(2)} s; ${parts.join('; ')}`);
    }
  }
  gpu.free();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
