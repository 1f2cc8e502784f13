// The CUDA backend: device selection everywhere; on a machine with a GPU and a CUDA build (`npm run
// test:cuda` on the GPU host) the GPU forward against the golden NLL (transformers fp32), against the CPU
// path, the tensor-core attention against the fp32 kernel, and WikiText-2 perplexity. Without a GPU the
// GPU part is skipped.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { workerGpuGroups } from '../lib/cli/worker';
import { cudaDevices, cudaInfo, deviceName, firstLinearWithoutWeight, GPU_BATCH_TOKENS, GpuModel, parseDevice, planSplit, resolveDevice, splitLayers, toDevice } from '../lib/eval/cuda';
import { readCalibIds } from '../lib/calibrate/calibration';
import { pplText } from '../lib/eval/datasets';
import { scoreSequences } from '../lib/eval/forward';
import { loglikelihood, LoglikelihoodRequest } from '../lib/eval/loglikelihood';
import { perplexity } from '../lib/eval/perplexity';
import { loadModel } from '../lib/load/model';
import { loadTokenizer } from '../lib/load/tokenizer';
import type { LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { saveQuantized } from '../lib/export/checkpoint';
import { quantize } from '../lib/quant/pipeline';
import type { PackedLinear } from '../lib/quant/packed';
import { parseSpec } from '../lib/quant/spec';
import { writeRandomQwen3 } from './helpers/random-model';

/** The package root (the folder holding binding.gyp), also when this test runs compiled from dist-dev/test. */
function packageRoot(): string {
  for (let d = __dirname; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'binding.gyp'))) return d;
    if (path.dirname(d) === d) return path.resolve(__dirname, '..');
  }
}
const ROOT = packageRoot();
const SHARED = path.resolve(ROOT, '..', 'shared');
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');
const SEQ = 256;
const devices = cudaDevices();
const gpuDescribe = devices.length > 0 ? describe : describe.skip;

describe('device selection', () => {
  test('cudaDevices() is an array (empty without a GPU or in a CPU build)', () => {
    expect(Array.isArray(addon.cudaDevices())).toBe(true);
    expect(typeof cudaInfo().built).toBe('boolean');
  });
  test('parseDevice', () => {
    expect(parseDevice('cpu')).toEqual({ type: 'cpu' });
    expect(parseDevice('cuda')).toEqual({ type: 'cuda', index: 0 });
    expect(parseDevice('cuda:3')).toEqual({ type: 'cuda', index: 3 });
    expect(parseDevice('cuda:2,0')).toEqual({ type: 'cuda', index: 2, group: [2, 0] });
    expect(deviceName(parseDevice('cuda:2,0'))).toBe('cuda:2,0');
    expect(deviceName({ type: 'cuda', index: 1, group: [1] })).toBe('cuda:1');
    expect(() => parseDevice('gpu')).toThrow(/--device must be cpu, cuda, cuda:N or cuda:N,M,…/);
    expect(() => parseDevice('cuda:1,1')).toThrow(/a GPU is named twice/);
  });

  test('planSplit: a model that fits stays on its GPU; one that does not spreads over its group only', () => {
    const gib = 2 ** 30;
    const host = [0, 1, 2, 3].map((index) => ({ index, name: 'x', computeCapability: '9.0', multiProcessors: 132, totalMemory: 80 * gib }));
    expect(planSplit(70 * gib, host, 1)).toBeUndefined();
    expect(planSplit(100 * gib, host, 1)).toEqual([1, 0, 2, 3]);
    expect(planSplit(100 * gib, host, 2, [2, 3])).toEqual([2, 3]);
    expect(planSplit(100 * gib, host, 2, [2])).toBeUndefined(); // a worker that owns one GPU: no split (create then says it does not fit)
  });

  test('workerGpuGroups: the GPUs dealt out k at a time, in order; more than the host has is an error', () => {
    expect(workerGpuGroups([0, 1, 2, 3], 1)).toEqual([[0], [1], [2], [3]]);
    expect(workerGpuGroups([0, 1, 2, 3], 2)).toEqual([
      [0, 1],
      [2, 3],
    ]);
    expect(workerGpuGroups([0, 1, 2, 3], 3)).toEqual([[0, 1, 2]]);
    expect(() => workerGpuGroups([0, 1], 4)).toThrow(/--gpus-per-worker 4: this host has 2 GPUs/);
  });
  test('default is cuda when present, else cpu; a missing cuda is a clear error', () => {
    expect(resolveDevice().type).toBe(devices.length && cudaInfo().built ? 'cuda' : 'cpu');
    expect(resolveDevice('cpu')).toEqual({ type: 'cpu' });
    if (!cudaInfo().built) expect(() => resolveDevice('cuda')).toThrow(/lowbit was built without CUDA/);
    else if (!devices.length) expect(() => resolveDevice('cuda')).toThrow(/no CUDA device found/);
    else expect(() => resolveDevice(`cuda:${devices.length}`)).toThrow(/no CUDA device/);
  });

  test('splitLayers: runs as even as the count allows, in order; more GPUs than layers is an error', () => {
    expect(splitLayers(28, 1)).toEqual([28]);
    expect(splitLayers(28, 3)).toEqual([10, 9, 9]);
    expect(splitLayers(4, 4)).toEqual([1, 1, 1, 1]);
    expect(() => splitLayers(2, 3)).toThrow(/cannot split 2 layers across 3 GPUs/);
  });

  test('packed, BiLLM binary and W8A8 int8 checkpoints go to the GPU; a linear with no weight at all is named', async () => {
    const model = loadModel(TINY);
    expect(firstLinearWithoutWeight(model)).toBeUndefined();
    const report = await quantize(model, parseSpec('rtn:w4g128'));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-cuda-packed-'));
    try {
      saveQuantized(model, path.join(dir, 'q'), report, { format: 'gptq' });
      const packed = loadModel(path.join(dir, 'q'));
      expect(packed.weights.layers[0].linears.q!.weight).toBeUndefined();
      expect(firstLinearWithoutWeight(packed)).toBeUndefined();
      const lin = packed.weights.layers[1].linears.down as PackedLinear;
      for (const kind of ['binary', 'int8']) {
        lin.packed = { kind } as unknown as PackedLinear['packed'];
        expect(firstLinearWithoutWeight(packed)).toBeUndefined();
      }
      lin.packed = undefined;
      expect(firstLinearWithoutWeight(packed)).toBe('model.layers.1.down');
      if (cudaInfo().built) await expect(GpuModel.create(packed, { dtype: 'fp32' })).rejects.toThrow(/model\.layers\.1\.down has neither a dense nor a packed weight to upload; .*--device cpu/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

interface Golden {
  input_ids: number[][];
  nll: number[][];
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>, rows: number, n: number, stride: number): number {
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < n; t++) {
      const d = Math.abs(a[r * stride + t] - b[r * stride + t]);
      worst = Math.max(worst, Number.isFinite(d) ? d : Infinity);
    }
  }
  return worst;
}

gpuDescribe('CUDA forward of qwen3-tiny', () => {
  let model: LoadedModel;
  let g: Golden;
  let ids: Int32Array;
  let goldenFlat: Float64Array;
  let cpu: Float64Array;
  beforeAll(async () => {
    model = loadModel(TINY);
    g = JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', 'qwen3-tiny.json'), 'utf8')).golden as Golden;
    ids = Int32Array.from([0, 1].flatMap((r) => g.input_ids[r]));
    goldenFlat = new Float64Array(2 * SEQ);
    [0, 1].forEach((r) => g.nll[r].forEach((v, t) => (goldenFlat[r * SEQ + t] = v)));
    cpu = (await scoreSequences(model, ids, SEQ)).nll; // no GPU attached yet: the CPU path
  });

  // bf16/fp16 activations round every GEMM input, q/k/v and the attention probabilities to 8 (11) bits, so
  // single positions move by a few 1e-2 (1e-3); with fp32 activations only the weights are 16-bit.
  test.each([
    ['fp32', false, 2e-4],
    ['bf16', true, 2e-3],
    ['fp16', true, 2e-3],
    ['bf16', false, 6e-2],
    ['fp16', false, 1e-2],
  ] as const)('%s weights (fp32 activations: %s): per-position NLL vs golden (transformers fp32) and vs the CPU path', async (dtype, actFp32, tol) => {
    const gpu = await GpuModel.create(model, { dtype, actFp32 });
    try {
      const nll = await gpu.score(ids, SEQ);
      expect(nll).toHaveLength(2 * SEQ);
      const vsGolden = maxDiff(nll, goldenFlat, 2, SEQ - 1, SEQ);
      const vsCpu = maxDiff(nll, cpu, 2, SEQ, SEQ);
      process.stdout.write(`[cuda] ${dtype}${actFp32 ? '+fp32act' : ''}: max |NLL - golden| = ${vsGolden.toExponential(3)}, max |NLL - CPU| = ${vsCpu.toExponential(3)}\n`);
      expect(nll[SEQ - 1]).toBe(0);
      expect(nll[2 * SEQ - 1]).toBe(0);
      expect(vsGolden).toBeLessThan(tol);
      expect(vsCpu).toBeLessThan(tol);
    } finally {
      gpu.free();
    }
  });

  test('scoreSequences uses the GPU once the model is on cuda, and the CPU again after toDevice(cpu)', async () => {
    await toDevice(model, 'cuda', { dtype: 'fp32' });
    const s = await scoreSequences(model, ids, SEQ);
    expect(maxDiff(s.nll, cpu, 2, SEQ, SEQ)).toBeLessThan(2e-4);
    await toDevice(model, 'cpu');
    const c = await scoreSequences(model, ids, SEQ);
    expect(Array.from(c.nll)).toEqual(Array.from(cpu));
  });

  test('batches on the GPU are sized by its free memory: several windows per call by default, the perplexity of one per call', async () => {
    const gpu = (await toDevice(model, 'cuda', { dtype: 'fp32' }))!;
    try {
      expect(gpu.batchTokens(100)).toBeLessThanOrEqual(100);
      expect(gpu.batchTokens()).toBe(GPU_BATCH_TOKENS); // qwen3-tiny's activations are small next to a GPU's memory
      const ids8 = Int32Array.from({ length: 8 * SEQ }, (_, i) => ids[i % ids.length]);
      const calls = jest.spyOn(gpu, 'score');
      const byDefault = await perplexity(model, ids8, { seqLen: SEQ });
      expect(calls).toHaveBeenCalledTimes(1); // all 8 windows in one call
      calls.mockRestore();
      const one = await perplexity(model, ids8, { seqLen: SEQ, batch: 1 });
      expect(byDefault.windows).toBe(8);
      expect(Math.abs(byDefault.ppl - one.ppl) / one.ppl).toBeLessThan(1e-5);
    } finally {
      await toDevice(model, 'cpu');
    }
  });

  test('packed models on the GPU: expanded from the integers at upload, the same weights as the CPU packed path', async () => {
    // In memory (quantize packs the linears and drops the fp32 weights) and loaded back from a GPTQ-format
    // checkpoint with act-order: both hold only packed integers on the host.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-cuda-packed-'));
    try {
      for (const specText of ['rtn:w4g128', 'gptq:w3g128,nsamples=4,seqlen=128']) {
        const m = loadModel(TINY);
        const report = await quantize(m, parseSpec(specText), { device: 'cpu', calibration: readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), 4, 128) });
        saveQuantized(m, path.join(dir, specText.slice(0, 4)), report, { format: 'gptq' });
        for (const [label, q] of [
          ['in memory', m],
          ['loaded', loadModel(path.join(dir, specText.slice(0, 4)))],
        ] as const) {
          expect((q.weights.layers[0].linears.q as PackedLinear).packed?.kind).toBe('packed');
          const cpuNll = (await scoreSequences(q, ids, SEQ)).nll;
          const gpu = await GpuModel.create(q, { dtype: 'fp32' });
          const nll = await gpu.score(ids, SEQ);
          gpu.free();
          const d = maxDiff(nll, cpuNll, 2, SEQ, SEQ);
          process.stdout.write(`[cuda] ${specText} (${label}): packed weights on the GPU, max |NLL − CPU packed| = ${d.toExponential(3)}\n`);
          expect(d).toBeLessThan(2e-4);
          expect(q.weights.layers[0].linears.q!.weight).toBeUndefined(); // the host still holds only the packed copy
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('layers split across GPUs (a pipeline of stages) give the single-GPU NLL bit for bit', async () => {
    // Two stages on GPU 0 always; on a multi-GPU host also one stage per GPU. The hidden states cross between
    // stages as fp32 through host memory, and every stage runs the same kernels: nothing may change.
    const splits: number[][] = [[0, 0], [0, 0, 0]];
    if (devices.length > 1) splits.push(devices.map((d) => d.index));
    for (const dtype of ['fp32', 'bf16'] as const) {
      const one = await GpuModel.create(model, { dtype });
      const ref = await one.score(ids, SEQ);
      expect(one.info().mode).toBe('single');
      one.free();
      for (const devs of splits) {
        const gpu = await GpuModel.create(model, { dtype, devices: devs });
        const nll = await gpu.score(ids, SEQ);
        const info = gpu.info();
        gpu.free();
        expect(info.mode).toBe('layer-split');
        expect(info.devices).toEqual(devs);
        expect(info.layersPerDevice.reduce((a, b) => a + b, 0)).toBe(model.config.numLayers);
        expect(Buffer.from(nll.buffer).equals(Buffer.from(ref.buffer))).toBe(true);
        process.stdout.write(`[cuda] ${dtype} layer split ${devs.map((d) => `cuda:${d}`).join('+')}: NLL identical to one GPU\n`);
      }
    }
  });

  test('sizes without the 16-byte vector paths (hidden 90, intermediate 100): GPU vs the CPU path', async () => {
    // RMSNorm takes 4 floats per load only where hidden % 4 == 0, SwiGLU 8 (16-bit) or 4 (fp32) only where the
    // intermediate size divides: these sizes run the element-at-a-time paths (and fp32 SwiGLU the vector one).
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-cuda-odd-'));
    try {
      writeRandomQwen3(dir, { layers: 2, hidden: 90, inter: 100, heads: 3, kvHeads: 1, headDim: 32, vocab: 8192 }, TINY, 11);
      const m = loadModel(dir);
      const L = 64;
      const ids2 = Int32Array.from({ length: 2 * L }, (_, i) => (i * 7919 + 13) % 8192);
      const cpuNll = (await scoreSequences(m, ids2, L)).nll;
      for (const [dtype, tol] of [
        ['fp32', 2e-4],
        ['bf16', 6e-2],
      ] as const) {
        const gpu = await GpuModel.create(m, { dtype });
        try {
          const d = maxDiff(await gpu.score(ids2, L), cpuNll, 2, L, L);
          process.stdout.write(`[cuda] hidden 90 / intermediate 100, ${dtype}: max |NLL − CPU| = ${d.toExponential(3)}\n`);
          expect(d).toBeLessThan(tol);
        } finally {
          gpu.free();
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('bad input: ids outside the vocabulary, a freed handle', async () => {
    const gpu = await GpuModel.create(model, { dtype: 'bf16' });
    await expect(gpu.score(Int32Array.from([1, 2, 999999, 3]), 4)).rejects.toThrow(/outside the vocabulary/);
    await expect(gpu.score(Int32Array.from([1, 2, 3]), 2)).rejects.toThrow(/not a multiple of seqLen/);
    gpu.free();
    await expect(gpu.score(Int32Array.from([1, 2]), 2)).rejects.toThrow(/freed/);
  });

  test.each([
    [1, 256, 4, 2, 64],
    [2, 1000, 8, 2, 128],
    [1, 77, 16, 8, 128],
    [3, 129, 6, 3, 64],
  ])('fast attention (tiled fp32, bf16/fp16 tensor cores) vs the reference kernel (nseq %i, L %i, heads %i/%i, hd %i)', async (nseq, L, nh, nkv, hd) => {
    // fp32: the same math in another summation order (tiles of 64 keys, online softmax per tile).
    for (const dtype of ['fp32', 'bf16', 'fp16']) {
      const r = await addon.cudaSelfTest({ nseq, seqLen: L, heads: nh, kvHeads: nkv, headDim: hd, dtype });
      process.stdout.write(`[cuda] ${dtype} ${r.report}\n`);
      expect(r.relError).toBeGreaterThanOrEqual(0);
      expect(r.relError).toBeLessThan(dtype === 'fp32' ? 1e-5 : dtype === 'bf16' ? 2e-2 : 4e-3);
    }
  });

  test('WikiText-2 perplexity (full, seqLen 2048): fp32 ≈ 192.893, bf16+fp32 activations within 0.01%, bf16/fp16 within 0.5%', async () => {
    const tok = await loadTokenizer(TINY);
    const text = pplText('wikitext2', path.join(ROOT, 'data'));
    const enc = tok.encode(text);
    for (const [dtype, actFp32, rel] of [
      ['fp32', false, 1e-5],
      ['bf16', true, 1e-4],
      ['bf16', false, 5e-3],
      ['fp16', false, 5e-3],
    ] as const) {
      await toDevice(model, 'cuda', { dtype, actFp32 });
      const r = await perplexity(model, enc, { seqLen: 2048 });
      process.stdout.write(`[cuda] wikitext2 ${dtype}${actFp32 ? '+fp32act' : ''}: ppl ${r.ppl.toFixed(4)} over ${r.windows} windows in ${r.seconds.toFixed(2)} s\n`);
      expect(Math.abs(r.ppl - 192.89318742029118) / 192.89318742029118).toBeLessThan(rel);
    }
    await toDevice(model, 'cpu');
  });
});

gpuDescribe('loglikelihood on the GPU (qwen3-tiny)', () => {
  test('the CPU path\'s log-probabilities and greedy flags (fp32): multi-token continuations, inputs shared by several answers', async () => {
    const model = loadModel(TINY);
    const tok = await loadTokenizer(TINY);
    const ids = tok.encode(pplText('wikitext2', path.join(ROOT, 'data')));
    const requests: LoglikelihoodRequest[] = [];
    for (let i = 0; i < 40; i++) {
      const a = i * 211;
      const ctx = Array.from(ids.slice(a, a + 20 + ((i * 37) % 300)));
      requests.push({ context: ctx, continuation: Array.from(ids.slice(a + ctx.length, a + ctx.length + 1 + (i % 3))) });
    }
    // an MMLU-like question: one context, four one-token answers (one forward, four targets at its last row)
    const q = Array.from(ids.slice(9000, 9120));
    for (const ans of [ids[9120], ids[17], ids[500], ids[12345]]) requests.push({ context: q, continuation: [ans] });
    // answers that are the model's own top-1 next token (greedy on the CPU path by construction)
    for (let i = 0; i < 8; i++) {
      const ctx = Int32Array.from(ids.slice(3000 + i * 500, 3000 + i * 500 + 64 + i * 13));
      const s = await scoreSequences(model, ctx, ctx.length, { topk: 1 });
      requests.push({ context: Array.from(ctx), continuation: [s.topIdx![ctx.length - 1]] });
    }
    const cpu = await loglikelihood(model, requests);
    await toDevice(model, 'cuda', { dtype: 'fp32' });
    const dev = await loglikelihood(model, requests);
    await toDevice(model, 'cpu');
    let worst = 0;
    let sameGreedy = 0;
    requests.forEach((_, i) => {
      worst = Math.max(worst, Math.abs(dev[i].logprob - cpu[i].logprob) / Math.max(1, Math.abs(cpu[i].logprob)));
      if (dev[i].greedy === cpu[i].greedy) sameGreedy++;
    });
    const greedyCount = cpu.filter((r) => r.greedy).length;
    process.stdout.write(`[cuda] loglikelihood ${requests.length} requests: worst rel diff ${worst.toExponential(2)}, greedy ${greedyCount} on the CPU, same flag ${sameGreedy}\n`);
    expect(worst).toBeLessThan(1e-4);
    expect(greedyCount).toBeGreaterThanOrEqual(8);
    expect(sameGreedy).toBe(requests.length);
  });

  test('greedy is the first index of the largest logit (torch.argmax): an earlier token tied with the target takes it', async () => {
    const model = loadModel(TINY);
    const tok = await loadTokenizer(TINY);
    const ctx = Int32Array.from(tok.encode(pplText('wikitext2', path.join(ROOT, 'data'))).slice(3000, 3064));
    const top = (await scoreSequences(model, ctx, ctx.length, { topk: 1 })).topIdx![ctx.length - 1];
    // An earlier token the context does not use gets a copy of top's row of the tied embedding / LM head: the
    // context's states do not change, and both tokens then hold the largest logit.
    const b = Array.from({ length: top }, (_, i) => i).find((i) => !ctx.includes(i));
    expect(b).toBeDefined();
    const H = model.config.hiddenSize;
    const e = model.weights.embed as { data: Uint16Array; dtype: string };
    expect(model.weights.lmHead).toBe(model.weights.embed);
    const data = Uint16Array.from(e.data);
    data.copyWithin(b! * H, top * H, (top + 1) * H);
    const tied = { ...e, data } as unknown as typeof model.weights.embed;
    model.weights.embed = tied;
    model.weights.lmHead = tied;
    const requests: LoglikelihoodRequest[] = [top, b!].map((t) => ({ context: Array.from(ctx), continuation: [t] }));
    const cpu = await loglikelihood(model, requests);
    expect(cpu[0].logprob).toBe(cpu[1].logprob); // an exact tie
    expect(cpu.map((r) => r.greedy)).toEqual([false, true]);
    await toDevice(model, 'cuda', { dtype: 'fp32' });
    const dev = await loglikelihood(model, requests);
    await toDevice(model, 'cpu');
    expect(dev[0].logprob).toBe(dev[1].logprob);
    expect(dev.map((r) => r.greedy)).toEqual([false, true]);
  });
});

gpuDescribe('activation-quantized models on the GPU (qwen3-tiny)', () => {
  test.each([
    ['smoothquant:w8a8,nsamples=4', 8, 2e-3],
    ['smoothquant:w4a8,nsamples=4', 8, 2e-3],
    ['naive:w4a4', 4, 1e-2],
  ] as const)('%s: the CPU path\'s perplexity (fp32; int8 and packed linears expanded at upload)', async (text, abits, tol) => {
    const model = loadModel(TINY);
    const spec = parseSpec(text);
    const calibration = spec.method === 'smoothquant' ? readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), spec.nsamples, spec.calibSeqLen) : undefined;
    await quantize(model, spec, { calibration, device: 'cpu' });
    expect(model.quantization!.actBits).toBe(abits);
    const tok = await loadTokenizer(TINY);
    const ids = tok.encode(pplText('wikitext2', path.join(ROOT, 'data')));
    const cpu = (await perplexity(model, ids, { seqLen: 2048, maxWindows: 4 })).ppl;
    const gpu = await toDevice(model, 'cuda', { dtype: 'fp32' });
    expect(gpu!.info().actBits).toBe(abits);
    const dev = (await perplexity(model, ids, { seqLen: 2048, maxWindows: 4 })).ppl;
    await toDevice(model, 'cpu');
    process.stdout.write(`[cuda] ${text}: wikitext2 (4 windows) CPU ${cpu.toFixed(4)}, GPU ${dev.toFixed(4)}\n`);
    expect(Math.abs(dev / cpu - 1)).toBeLessThan(tol);
  });
});
