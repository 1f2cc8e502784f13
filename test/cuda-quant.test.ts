// GPTQ, AWQ and BiLLM on the GPU (native/cuda/gptq.cu, awq.cu, billm.cu, quant.cu) against the CPU path and
// float64: the Hessian accumulation against float64, the GPTQ and BiLLM solvers against the CPU ones on fresh
// random correlated problems (every option: groups, act-order, static groups, per channel, symmetric, 2..4 bits,
// dead columns, groups wider than a block; BiLLM's metrics, searches and feedback modes), and the whole pipelines
// (GPTQ, AWQ, BiLLM, SmoothQuant statistics) against the CPU ones. Without a GPU (or in
// a CPU-only build) only the device-selection checks run.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readCalibIds } from '../lib/calibrate/calibration';
import { cudaDevices, cudaInfo, toDevice } from '../lib/eval/cuda';
import { pplText } from '../lib/eval/datasets';
import { perplexity } from '../lib/eval/perplexity';
import { loadModel } from '../lib/load/model';
import { loadTokenizer } from '../lib/load/tokenizer';
import { LINEAR_NAMES, LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { quantize, QuantizeReport } from '../lib/quant/pipeline';
import type { BillmResult } from '../lib/quant/billm';
import { rtnQuantize } from '../lib/quant/rtn';
import { parseSpec } from '../lib/quant/spec';
import type { QuantizedLinear } from '../lib/quant/weights';
import { decodeBinary } from './helpers/binary';
import { gauss } from './helpers/random';
import { denseWeight } from './helpers/fake-quant';
import { writeRandomQwen3 } from './helpers/random-model';

function packageRoot(): string {
  for (let d = __dirname; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'binding.gyp'))) return d;
    if (path.dirname(d) === d) return path.resolve(__dirname, '..');
  }
}
const ROOT = packageRoot();
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');
const gpu = cudaInfo().built && cudaDevices().length > 0;
const gpuDescribe = gpu ? describe : describe.skip;

/** WikiText-2 and C4 perplexity (40 windows of 2048) of a qwen3-tiny model, evaluated on the GPU in fp32. */
async function tinyPpl(model: LoadedModel): Promise<{ wikitext2: number; c4: number }> {
  const tok = loadTokenizer(TINY);
  await toDevice(model, 'cuda', { dtype: 'fp32' });
  const out = { wikitext2: 0, c4: 0 };
  for (const task of ['wikitext2', 'c4'] as const) {
    out[task] = (await perplexity(model, tok.encode(pplText(task, path.join(ROOT, 'data'))), { seqLen: 2048, maxWindows: 40 })).ppl;
  }
  await toDevice(model, 'cpu');
  return out;
}

test('GPTQ on cuda without a usable GPU is a clear error, on cpu it needs none', async () => {
  if (gpu) return; // the GPU host runs the real comparisons below
  const model = loadModel(TINY);
  const calib = readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), 2, 64);
  await expect(quantize(model, parseSpec('gptq:w4g128,nsamples=2,seqlen=64'), { calibration: calib, device: 'cuda' })).rejects.toThrow(
    /--device cuda: (lowbit was built without CUDA|no CUDA device found)/,
  );
});

/** Correlated activations [n, cols]: shared latent factors, per-channel scales over ~30×, noise. */
function makeX(seed: number, n: number, cols: number, deadCol = -1): Float32Array {
  const g = gauss(seed);
  const F = 8;
  const mix = Float64Array.from({ length: F * cols }, () => g());
  const chan = Float64Array.from({ length: cols }, (_, c) => 0.3 + (9 * ((c * 37) % 101)) / 101);
  const X = new Float32Array(n * cols);
  const z = new Float64Array(F);
  for (let t = 0; t < n; t++) {
    for (let k = 0; k < F; k++) z[k] = g();
    for (let c = 0; c < cols; c++) {
      let v = 0.5 * g();
      for (let k = 0; k < F; k++) v += z[k] * mix[k * cols + c];
      X[t * cols + c] = c === deadCol ? 0 : v * chan[c];
    }
  }
  return X;
}

function hessian64(X: Float32Array, n: number, cols: number, alpha: number, init?: Float32Array): Float64Array {
  const H = Float64Array.from(init ?? new Float32Array(cols * cols));
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < cols; i++) {
      const xi = alpha * X[t * cols + i];
      if (xi === 0) continue;
      for (let j = 0; j < cols; j++) H[i * cols + j] += xi * X[t * cols + j];
    }
  }
  return H;
}

/** ‖X Wᵀ − X Qᵀ‖² in float64. */
function outputError(X: Float32Array, n: number, W: Float32Array, Q: Float32Array, rows: number, cols: number): number {
  let s = 0;
  const D = new Float64Array(rows * cols);
  for (let i = 0; i < D.length; i++) D[i] = W[i] - Q[i];
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      let d = 0;
      for (let c = 0; c < cols; c++) d += X[t * cols + c] * D[r * cols + c];
      s += d * d;
    }
  }
  return s;
}

gpuDescribe('GPU Hessian', () => {
  test('gpuHessianAccumulate = float64 αXᵀX (two batches onto a symmetric start), 1e-5 relative', async () => {
    const cols = 200;
    const X1 = makeX(11, 333, cols);
    const X2 = makeX(12, 77, cols);
    const H = new Float32Array(cols * cols);
    await addon.gpuHessianAccumulate(H, X1, 2 / 5);
    await addon.gpuHessianAccumulate(H, X2, 2 / 5);
    const ref = hessian64(X2, 77, cols, 2 / 5, Float32Array.from(hessian64(X1, 333, cols, 2 / 5)));
    let maxAbs = 0;
    let worst = 0;
    for (let i = 0; i < ref.length; i++) maxAbs = Math.max(maxAbs, Math.abs(ref[i]));
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(H[i] - ref[i]));
    expect(worst / maxAbs).toBeLessThan(1e-5);
    for (let i = 0; i < cols; i++) for (let j = 0; j < i; j++) expect(H[i * cols + j]).toBe(H[j * cols + i]);
  });
});

const CASES: [string, { bits: number; groupSize: number; actOrder: boolean; staticGroups?: boolean; sym?: boolean; cols?: number }][] = [
  ['w4 g128 act-order', { bits: 4, groupSize: 128, actOrder: true }],
  ['w3 g64 in order', { bits: 3, groupSize: 64, actOrder: false }],
  ['w4 per channel act-order', { bits: 4, groupSize: -1, actOrder: true }],
  ['w4 g64 static groups act-order', { bits: 4, groupSize: 64, actOrder: true, staticGroups: true }],
  ['w4 g128 symmetric act-order', { bits: 4, groupSize: 128, actOrder: true, sym: true }],
  ['w2 g128 act-order', { bits: 2, groupSize: 128, actOrder: true }],
  ['w3 g256 (groups wider than a block) act-order', { bits: 3, groupSize: 256, actOrder: true, cols: 512 }],
];

gpuDescribe('GPU GPTQ vs the CPU solver (fresh random correlated problems)', () => {
  test.each(CASES)('%s: ≥ 99%% identical integers, same groups/order, layer error within 2%%', async (_name, c) => {
    const cols = c.cols ?? 384;
    const rows = 96;
    const n = 1024;
    const seed = 100 + cols + c.bits * 7 + c.groupSize;
    const X = makeX(seed, n, cols, 5);
    const H = Float32Array.from(hessian64(X, n, cols, 2 / n));
    const g = gauss(seed + 1);
    const W = Float32Array.from({ length: rows * cols }, () => 0.05 * g());
    const opts = { rows, cols, bits: c.bits, groupSize: c.groupSize, sym: !!c.sym, actOrder: c.actOrder, staticGroups: !!c.staticGroups, damp: 0.01, blockSize: 128 };
    const cpu = await addon.gptqQuantize(W, H, opts);
    const dev = await addon.gpuGptqQuantize(W, H, opts);
    let same = 0;
    for (let i = 0; i < cpu.qweight.length; i++) if (cpu.qweight[i] === dev.qweight[i]) same++;
    expect(same / cpu.qweight.length).toBeGreaterThanOrEqual(0.99);
    expect(Array.from(dev.gIdx)).toEqual(Array.from(cpu.gIdx));
    expect(Array.from(dev.perm)).toEqual(Array.from(cpu.perm));
    expect(dev.deadColumns).toBe(1);
    expect(cpu.deadColumns).toBe(1);
    // every weight on its group's grid: w = scale·(q − zero)
    const ng = cpu.scales.length / rows;
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < cols; k++) {
        const i = r * cols + k;
        const gi = r * ng + dev.gIdx[k];
        expect(dev.weight[i]).toBe(Math.fround(dev.scales[gi] * Math.fround(dev.qweight[i] - dev.zeros[gi])));
      }
    }
    // weight: false leaves the fp32 weight on the device; everything else is the same run's
    const lean = await addon.gpuGptqQuantize(W, H, { ...opts, weight: false });
    expect(lean.weight).toBeUndefined();
    expect(Buffer.from(lean.qweight).equals(Buffer.from(dev.qweight))).toBe(true);
    expect(Buffer.from(lean.scales.buffer).equals(Buffer.from(dev.scales.buffer))).toBe(true);
    const eCpu = outputError(X, n, W, cpu.weight, rows, cols);
    const eDev = outputError(X, n, W, dev.weight, rows, cols);
    expect(Math.abs(eDev / eCpu - 1)).toBeLessThan(0.02);
    expect(Math.abs(dev.loss / cpu.loss - 1)).toBeLessThan(0.02);
  });

  test('bad options are clear errors', async () => {
    const cols = 64;
    const H = Float32Array.from(hessian64(makeX(3, 128, cols), 128, cols, 2 / 128));
    const W = new Float32Array(8 * cols).fill(0.1);
    const base = { rows: 8, cols, bits: 4, groupSize: -1, sym: false, actOrder: true, staticGroups: false, damp: 0.01 };
    // argument errors may throw synchronously or reject: both count
    const call = (o: object, h = H) => (async () => addon.gpuGptqQuantize(W, h, o))();
    await expect(call({ ...base, groupSize: 48 })).rejects.toThrow(/group size 48 does not divide 64 columns/);
    await expect(call({ ...base, blockSize: 256 })).rejects.toThrow(/blockSize 1\.\.128/);
    const negative = new Float32Array(cols * cols);
    for (let i = 0; i < cols; i++) negative[i * cols + i] = -1;
    await expect(call(base, negative)).rejects.toThrow(/not positive definite; raise --damp/);
  });
});

gpuDescribe('GPU GPTQ pipeline on qwen3-tiny', () => {
  const spec = parseSpec('gptq:w4g128,nsamples=32');
  const calib = () => readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), spec.nsamples, spec.calibSeqLen);

  test('perplexity close to the CPU pipeline (C4 1%, WikiText-2 3%); same export structures', async () => {
    const cpuModel = loadModel(TINY);
    const cpuReport = await quantize(cpuModel, spec, { calibration: calib(), device: 'cpu' });
    const gpuModel = loadModel(TINY);
    const stages: string[] = [];
    const gpuReport = await quantize(gpuModel, spec, { calibration: calib(), device: 'cuda', onProgress: (p) => stages.push(p.stage) });
    expect(cpuReport.device).toBe('cpu');
    expect(gpuReport.device).toBe('cuda:0');
    expect(gpuReport.gpuPeakBytes).toBeGreaterThan(0);
    expect(stages).toContain('hessian k,v,q');
    expect(stages).toContain('propagate');
    let same = 0;
    let total = 0;
    gpuModel.weights.layers.forEach((layer, l) => {
      for (const n of LINEAR_NAMES) {
        const a = (cpuModel.weights.layers[l].linears[n] as QuantizedLinear).quantized!;
        const b = (layer.linears[n] as QuantizedLinear).quantized!;
        expect(b.bits).toBe(4);
        expect(b.qweight.length).toBe(a.qweight.length);
        expect(b.scales.length).toBe(a.scales.length);
        // act-order follows each path's own Hessian diagonal, so near-ties may order differently; every
        // group still holds exactly groupSize columns
        const counts = new Map<number, number>();
        for (const g of b.gIdx!) counts.set(g, (counts.get(g) ?? 0) + 1);
        expect([...counts.values()].every((c) => c === 128)).toBe(true);
        for (let i = 0; i < a.qweight.length; i++) if (a.qweight[i] === b.qweight[i]) same++;
        total += a.qweight.length;
      }
    });
    const cpuPpl = await tinyPpl(cpuModel);
    const gpuPpl = await tinyPpl(gpuModel);
    console.log(`[cuda-quant] tiny gptq w4g128 (32 windows): identical integers ${(100 * same / total).toFixed(2)}%; ` +
      `CPU quantize ${cpuReport.seconds.toFixed(1)} s, GPU ${gpuReport.seconds.toFixed(1)} s (peak ${(gpuReport.gpuPeakBytes! / 2 ** 20).toFixed(0)} MiB); ` +
      `ppl wikitext2 ${cpuPpl.wikitext2.toFixed(3)} / ${gpuPpl.wikitext2.toFixed(3)}, c4 ${cpuPpl.c4.toFixed(3)} / ${gpuPpl.c4.toFixed(3)} (CPU / GPU)`);
    // Whole-model agreement is looser than one solver's (≥ 99% above): each layer's inputs come from the other
    // path's slightly different quantized layers, and act-order near-ties fall either way. WikiText-2 on qwen3-tiny
    // is the sensitive metric: the reference's own GPTQ moves it by 13% (w2g128) when only TF32 is switched on,
    // while C4 moves < 0.5% (bench/RESULTS.md, "GPTQ on the GPU"); so C4 is held to 1% and WikiText-2 to 3%. Measured
    // (H100, 2026-11-27): 81.4% identical integers, WikiText-2 +2.0%, C4 −0.3%.
    expect(same / total).toBeGreaterThan(0.75);
    expect(Math.abs(gpuPpl.wikitext2 / cpuPpl.wikitext2 - 1)).toBeLessThan(0.03);
    expect(Math.abs(gpuPpl.c4 / cpuPpl.c4 - 1)).toBeLessThan(0.01);
  });

  test('AbortSignal stops a GPU run with an AbortError', async () => {
    const model = loadModel(TINY);
    const ac = new AbortController();
    const p = quantize(model, spec, { calibration: calib(), device: 'cuda', signal: ac.signal, onProgress: (s) => s.layer === 1 && ac.abort() });
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
  });

  test('a layer whose activations overflow stops GPTQ and BiLLM with the CPU path\'s message', async () => {
    for (const text of ['gptq:w4g128,nsamples=2', 'billm:w1g128,nsamples=2']) {
      const s = parseSpec(text);
      const c = readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), 2, s.calibSeqLen);
      const messages: string[] = [];
      for (const device of ['cpu', 'cuda']) {
        const model = loadModel(TINY);
        model.weights.layers[0].postAttnNorm = new Float32Array(model.config.hiddenSize).fill(3e38);
        messages.push(await quantize(model, s, { calibration: c, device }).then(() => 'no error', (e: Error) => e.message));
      }
      expect(messages[0]).toMatch(/^calibration activations are not finite: the inputs of model\.layers\.0\.(up\/gate|gate\/up) \(an overflow/);
      expect(messages[1]).toBe(messages[0]);
    }
  });

  test('deterministic: the same run twice gives bit-identical weights', async () => {
    const s = parseSpec('gptq:w3g128,nsamples=8,seqlen=512');
    const c = readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), 8, 512);
    const a = loadModel(TINY);
    const b = loadModel(TINY);
    await quantize(a, s, { calibration: c, device: 'cuda' });
    await quantize(b, s, { calibration: c, device: 'cuda' });
    expectSameLinears(a, b);
  });
});

/** Every linear of layer l (all layers without l) holds the same weights bit for bit in a and b. */
function expectSameLinears(a: LoadedModel, b: LoadedModel, l?: number): void {
  for (const k of l === undefined ? a.weights.layers.keys() : [l]) {
    for (const n of LINEAR_NAMES) {
      const [wa, wb] = [a, b].map((m) => denseWeight(m.weights.layers[k].linears[n]!));
      expect(Buffer.from(wa.buffer).equals(Buffer.from(wb.buffer))).toBe(true);
    }
  }
}

/** qwen3-tiny quantized with `specText` on the CPU and on the GPU, from the same calibration windows. */
async function quantizeBoth(specText: string) {
  const spec = parseSpec(specText);
  const calib = readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), spec.nsamples, spec.calibSeqLen);
  const cpu = loadModel(TINY);
  const dev = loadModel(TINY);
  const rc = await quantize(cpu, spec, { calibration: calib, device: 'cpu' });
  const stages: string[] = [];
  const rg = await quantize(dev, spec, { calibration: calib, device: 'cuda', onProgress: (p) => stages.push(p.stage) });
  expect(rc.device).toBe('cpu');
  expect(rg.device).toBe('cuda:0');
  expect(rg.gpuPeakBytes).toBeGreaterThan(0);
  return { cpu, dev, rc, rg, stages };
}

/** A model quantized on the GPU vs the same on the CPU: the largest relative difference of the (folded) norms and
 *  the fraction of identical integers (each linear's format checked equal). */
function agreement(cpu: LoadedModel, dev: LoadedModel): { worstNorm: number; sameInts: number } {
  let worstNorm = 0;
  let same = 0;
  let total = 0;
  dev.weights.layers.forEach((layer, l) => {
    for (const k of ['inputNorm', 'postAttnNorm'] as const) {
      const a = cpu.weights.layers[l][k];
      for (let j = 0; j < a.length; j++) worstNorm = Math.max(worstNorm, Math.abs(layer[k][j] - a[j]) / Math.abs(a[j]));
    }
    for (const n of LINEAR_NAMES) {
      const qa = (cpu.weights.layers[l].linears[n] as QuantizedLinear).quantized!;
      const qb = (layer.linears[n] as QuantizedLinear).quantized!;
      expect(qb.bits).toBe(qa.bits);
      expect(qb.scales.length).toBe(qa.scales.length);
      for (let i = 0; i < qa.qweight.length; i++) if (qa.qweight[i] === qb.qweight[i]) same++;
      total += qa.qweight.length;
    }
  });
  return { worstNorm, sameInts: same / total };
}

gpuDescribe('SmoothQuant statistics on the GPU (qwen3-tiny)', () => {
  test('smoothquant:w8a8 with --device cuda folds the same scales as the CPU path and gives the same model', async () => {
    const spec = parseSpec('smoothquant:w8a8,nsamples=16');
    const calib = readCalibIds(path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), spec.nsamples, spec.calibSeqLen);
    const cpu = loadModel(TINY);
    const dev = loadModel(TINY);
    const rc = await quantize(cpu, spec, { calibration: calib, device: 'cpu' });
    const rg = await quantize(dev, spec, { calibration: calib, device: 'cuda' });
    expect(rc.device).toBe('cpu');
    expect(rg.device).toBe('cuda:0');
    // The folded norms are norm / s with s = max|X|^α / max|W|^(1−α): the activation maxima of both paths
    // (fp32 forwards in different summation orders) agree to ~1e-6, so the norms do to 1e-5.
    const { worstNorm: worst, sameInts } = agreement(cpu, dev);
    console.log(`[cuda-quant] smoothquant w8a8 stats on GPU: max norm diff ${worst.toExponential(2)}, identical integers ${(100 * sameInts).toFixed(3)}%, CPU ${rc.seconds.toFixed(1)} s, GPU ${rg.seconds.toFixed(1)} s`);
    expect(worst).toBeLessThan(1e-5);
    expect(sameInts).toBeGreaterThan(0.999);
  });
});

gpuDescribe('AWQ on the GPU', () => {
  const calibFile = path.join(ROOT, 'data', 'calib_c4_128x2048.i16');

  /** The two paths' runs compared: chosen scale ratios, integers, norms. Both are fp32 with the same grid
   *  arithmetic; only summation orders differ (cuBLAS vs the CPU GEMM), so a choice differs only where two
   *  candidates' losses are within rounding of each other. */
  function compare(cpu: LoadedModel, dev: LoadedModel, rc: QuantizeReport, rg: QuantizeReport) {
    const a = rc.awqGroups!;
    const b = rg.awqGroups!;
    expect(b.map((g) => `${g.layer}:${g.label}`)).toEqual(a.map((g) => `${g.layer}:${g.label}`));
    const sameRatio = a.filter((g, i) => g.ratio === b[i].ratio).length / a.length;
    let worstLoss = 0;
    a.forEach((g, i) => g.ratio === b[i].ratio && (worstLoss = Math.max(worstLoss, Math.abs(b[i].loss / g.loss - 1))));
    return { sameRatio, worstLoss, ...agreement(cpu, dev) };
  }

  test('awq:w4g128 on qwen3-tiny: the CPU path\'s scales, integers and perplexity', async () => {
    const { cpu, dev, rc, rg, stages } = await quantizeBoth('awq:w4g128,nsamples=32');
    expect(stages).toContain('awq search');
    const c = compare(cpu, dev, rc, rg);
    const [pc, pg] = [await tinyPpl(cpu), await tinyPpl(dev)];
    console.log(`[cuda-quant] tiny awq w4g128 (32×512): same ratio ${(100 * c.sameRatio).toFixed(1)}% of ${rc.awqGroups!.length} groups, ` +
      `loss rel diff ≤ ${c.worstLoss.toExponential(2)}, norms ≤ ${c.worstNorm.toExponential(2)}, identical integers ${(100 * c.sameInts).toFixed(2)}%; ` +
      `CPU ${rc.seconds.toFixed(1)} s, GPU ${rg.seconds.toFixed(1)} s; ppl wikitext2 ${pc.wikitext2.toFixed(3)} / ${pg.wikitext2.toFixed(3)}, c4 ${pc.c4.toFixed(3)} / ${pg.c4.toFixed(3)} (CPU / GPU)`);
    expect(c.sameRatio).toBeGreaterThanOrEqual(0.9);
    expect(c.worstLoss).toBeLessThan(1e-3);
    expect(c.sameInts).toBeGreaterThan(0.98);
    expect(Math.abs(pg.wikitext2 / pc.wikitext2 - 1)).toBeLessThan(0.01);
    expect(Math.abs(pg.c4 / pc.c4 - 1)).toBeLessThan(0.01);
  });

  test('multi-head attention (the v → o scale group) and per-channel w3: the CPU path\'s choices', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-awq-mha-'));
    try {
      writeRandomQwen3(dir, { layers: 2, hidden: 256, inter: 512, heads: 4, kvHeads: 4, headDim: 64, vocab: 8192 }, TINY, 7);
      const spec = parseSpec('awq:w3perchannel,nsamples=8');
      const calib = readCalibIds(calibFile, spec.nsamples, spec.calibSeqLen);
      const cpu = loadModel(dir);
      const dev = loadModel(dir);
      const rc = await quantize(cpu, spec, { calibration: calib, device: 'cpu' });
      const rg = await quantize(dev, spec, { calibration: calib, device: 'cuda' });
      expect(rg.awqGroups!.map((g) => g.label)).toEqual(['q,k,v', 'gate,up', 'o', 'down', 'q,k,v', 'gate,up', 'o', 'down']);
      const c = compare(cpu, dev, rc, rg);
      console.log(`[cuda-quant] random MHA awq w3perchannel: same ratio ${(100 * c.sameRatio).toFixed(1)}%, loss rel diff ≤ ${c.worstLoss.toExponential(2)}, ` +
        `norms ≤ ${c.worstNorm.toExponential(2)}, identical integers ${(100 * c.sameInts).toFixed(2)}%`);
      expect(c.sameRatio).toBeGreaterThanOrEqual(0.75);
      expect(c.worstLoss).toBeLessThan(1e-3);
      expect(c.sameInts).toBeGreaterThan(0.95);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the final integers are rtnQuantize (grid awq) of the scaled, clipped weights, bit for bit', async () => {
    const model = loadModel(TINY);
    const calib = readCalibIds(calibFile, 2, 512);
    const session = await addon.gpuQuantCreate({ cfg: model.config, embed: model.weights.embed }, calib.ids, calib.seqLen, 0);
    try {
      for (const [l, bits, groupSize] of [[0, 3, 64], [1, 4, -1]]) {
        await addon.gpuQuantLoadLayer(session, model.weights.layers[l]);
        const r = await addon.gpuQuantAwq(session, { bits, groupSize, weights: true });
        for (const n of LINEAR_NAMES) {
          const lin = model.weights.layers[l].linears[n]!;
          const o = r.linears[n];
          expect(o.weight.length).toBe(lin.outFeatures * lin.inFeatures);
          const { q } = await rtnQuantize(o.weight, lin.outFeatures, lin.inFeatures, bits, groupSize, { grid: 'awq' });
          expect(Buffer.from(o.qweight).equals(Buffer.from(q!.qweight))).toBe(true);
          expect(Buffer.from(o.scales.buffer).equals(Buffer.from(q!.scales.buffer))).toBe(true);
          expect(Buffer.from(o.zeros.buffer).equals(Buffer.from(q!.zeros.buffer))).toBe(true);
        }
      }
    } finally {
      addon.gpuQuantFree(session);
    }
  });

  test('a layer whose output overflows stops the run, naming the layer, sequence and token (as the CPU path)', async () => {
    const model = loadModel(TINY);
    model.weights.layers[0].postAttnNorm = new Float32Array(model.config.hiddenSize).fill(3e38);
    const spec = parseSpec('awq:w4g128,nsamples=2');
    await expect(quantize(model, spec, { calibration: readCalibIds(calibFile, 2, spec.calibSeqLen), device: 'cuda' })).rejects.toThrow(
      /calibration activations are not finite: the output of model\.layers\.0 for sequence 0, token 0 \(value /,
    );
  });

  test('repeatable bit for bit; an AbortSignal stops it with an AbortError', async () => {
    const spec = parseSpec('awq:w4g128,nsamples=4');
    const calib = readCalibIds(calibFile, spec.nsamples, spec.calibSeqLen);
    const [a, b] = [loadModel(TINY), loadModel(TINY)];
    await quantize(a, spec, { calibration: calib, device: 'cuda' });
    await quantize(b, spec, { calibration: calib, device: 'cuda' });
    for (let l = 0; l < a.config.numLayers; l++) {
      expect(Buffer.from(b.weights.layers[l].inputNorm.buffer).equals(Buffer.from(a.weights.layers[l].inputNorm.buffer))).toBe(true);
      expectSameLinears(a, b, l);
    }
    const ac = new AbortController();
    const p = quantize(loadModel(TINY), spec, { calibration: calib, device: 'cuda', signal: ac.signal, onProgress: (s) => s.stage === 'awq search' && ac.abort() });
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
  });
});

const BILLM_CASES: [string, { blockSize?: number; cols?: number; salientMetric?: string; searchOnSaliency?: boolean; exactFeedback?: boolean;
  errorFeedback?: boolean; saliencySearch?: boolean; fixedSalient?: number; centered?: boolean; maxSalient?: number }][] = [
  ['defaults (block 128, hessian metric, both searches, lazy feedback)', {}],
  ['block 64, magnitude metric, maxSalient 10', { blockSize: 64, salientMetric: 'magnitude', maxSalient: 10 }],
  ['searches on W²/Hinv² (the reference\'s hessian path)', { searchOnSaliency: true }],
  ['exact feedback inside the block', { exactFeedback: true }],
  ['no feedback, 5 fixed salient columns, the paper\'s uncentered form', { errorFeedback: false, saliencySearch: false, fixedSalient: 5, centered: false }],
  ['block 256 (8 columns a lane) and a tail block of 96', { blockSize: 256, cols: 608 }],
  ['block 48 (not a multiple of 16) with a tail', { blockSize: 48, cols: 200 }],
];

gpuDescribe('GPU BiLLM vs the CPU quantizer (fresh random correlated problems)', () => {
  test.each(BILLM_CASES)('%s: the same salient columns, ≥ 99%% identical codes, decodes to its weights, loss within 1e-3', async (_name, c) => {
    const cols = c.cols ?? 384;
    const rows = 96;
    const n = 1024;
    const seed = 300 + cols + (c.blockSize ?? 128);
    const X = makeX(seed, n, cols, 5);
    const H = Float32Array.from(hessian64(X, n, cols, 2 / n));
    const g = gauss(seed + 1);
    const W = Float32Array.from({ length: rows * cols }, (_, i) => 0.02 * g() * (i % cols === 17 || i % cols === 90 ? 6 : 1));
    const opts = { rows, cols, damp: 0.01, ...c };
    const cpu: BillmResult = await addon.billmQuantize(W, H, opts);
    const dev: BillmResult = await addon.gpuBillmQuantize(W, H, opts);
    expect(dev.deadColumns).toBe(1);
    expect(cpu.deadColumns).toBe(1);
    expect(Array.from(dev.blockSalient)).toEqual(Array.from(cpu.blockSalient));
    expect(Buffer.from(dev.salientMask).equals(Buffer.from(cpu.salientMask))).toBe(true);
    expect(dev.avgBits).toBe(cpu.avgBits);
    expect(dev.storingBits).toBe(cpu.storingBits);
    expect(dev.binary.block).toBe(cpu.binary.block);
    expect(Buffer.from(dev.binary.salient).equals(Buffer.from(cpu.binary.salient))).toBe(true);
    // the returned weights are exactly what the binary structure holds
    const decoded = decodeBinary(dev.binary, rows, cols);
    expect(Buffer.from(decoded.buffer).equals(Buffer.from(dev.weight.buffer))).toBe(true);
    let sameCodes = 0;
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < cols; k++) {
        const w = Math.floor(k / 16);
        const bit = 2 * (k % 16);
        const a = (cpu.binary.codes[r * Math.ceil(cols / 16) + w] >>> bit) & 3;
        const b = (dev.binary.codes[r * Math.ceil(cols / 16) + w] >>> bit) & 3;
        if (a === b) sameCodes++;
      }
    }
    let sameScales = 0;
    for (let i = 0; i < cpu.binary.scales.length; i++) if (cpu.binary.scales[i] === dev.binary.scales[i]) sameScales++;
    const eCpu = outputError(X, n, W, cpu.weight, rows, cols);
    const eDev = outputError(X, n, W, dev.weight, rows, cols);
    console.log(`[cuda-quant] billm ${_name}: identical codes ${(100 * sameCodes / (rows * cols)).toFixed(3)}%, ` +
      `scales ${(100 * sameScales / cpu.binary.scales.length).toFixed(3)}%, loss ${cpu.loss.toExponential(4)} / ${dev.loss.toExponential(4)}, ` +
      `output error ${eCpu.toExponential(4)} / ${eDev.toExponential(4)} (CPU / GPU)`);
    expect(sameCodes / (rows * cols)).toBeGreaterThanOrEqual(0.99);
    expect(sameScales / cpu.binary.scales.length).toBeGreaterThanOrEqual(0.98);
    expect(Math.abs(eDev / eCpu - 1)).toBeLessThan(1e-3);
    if (c.errorFeedback === false) {
      expect(dev.loss).toBe(0);
    } else {
      expect(Math.abs(dev.loss / cpu.loss - 1)).toBeLessThan(1e-3);
    }
    // repeatable bit for bit
    const again: BillmResult = await addon.gpuBillmQuantize(W, H, opts);
    expect(Buffer.from(again.weight.buffer).equals(Buffer.from(dev.weight.buffer))).toBe(true);
    expect(again.loss).toBe(dev.loss);
  });

  test('bad input: clear errors naming the option, weight or Hessian', async () => {
    const cols = 64;
    const H = Float32Array.from(hessian64(makeX(3, 128, cols), 128, cols, 2 / 128));
    const W = new Float32Array(8 * cols).fill(0.1);
    const base = { rows: 8, cols };
    const call = (o: object, w = W, h = H) => (async () => addon.gpuBillmQuantize(w, h, { ...base, ...o }))();
    await expect(call({ blockSize: 512 })).rejects.toThrow(/blockSize 1\.\.256, got 512/);
    await expect(call({ salientMetric: 'l2' })).rejects.toThrow(/salientMetric must be 'hessian' or 'magnitude'/);
    const nanW = W.slice();
    nanW[3 * cols + 7] = NaN;
    await expect(call({}, nanW)).rejects.toThrow(/weight has a non-finite value \(NaN\/Inf\) at row 3, column 7/);
    const negative = new Float32Array(cols * cols);
    for (let i = 0; i < cols; i++) negative[i * cols + i] = -1;
    await expect(call({}, W, negative)).rejects.toThrow(/damped Hessian is not positive definite; raise damp/);
    const big = Float32Array.from(W, () => 1e5);
    await expect(call({}, big)).rejects.toThrow(/binarization scale exceeds the fp16 range/);
  });
});

gpuDescribe('GPU BiLLM pipeline on qwen3-tiny', () => {
  const calibFile = path.join(ROOT, 'data', 'calib_c4_128x2048.i16');

  test('billm:w1g128: the CPU path\'s format and bits, > 90% of its codes, perplexity as close as the CPU path\'s own rounding spread', async () => {
    const { cpu, dev, rc, rg, stages } = await quantizeBoth('billm:w1g128,nsamples=32');
    expect(stages).toContain('solve down');
    expect(rg.linears.map((r) => `${r.layer}.${r.name}`)).toEqual(rc.linears.map((r) => `${r.layer}.${r.name}`));
    let sameMask = 0;
    let sameCodes = 0;
    let total = 0;
    let masks = 0;
    for (let l = 0; l < cpu.config.numLayers; l++) {
      for (const n of LINEAR_NAMES) {
        const a = cpu.weights.layers[l].linears[n] as QuantizedLinear;
        const b = dev.weights.layers[l].linears[n] as QuantizedLinear;
        expect(b.binary!.codes.length).toBe(a.binary!.codes.length);
        masks++;
        if (Buffer.from(a.binary!.salient).equals(Buffer.from(b.binary!.salient))) sameMask++;
        for (let i = 0; i < a.binary!.codes.length; i++) {
          const x = a.binary!.codes[i] ^ b.binary!.codes[i];
          for (let k = 0; k < 16; k++) if (((x >>> (2 * k)) & 3) === 0) sameCodes++;
          total += 16;
        }
      }
    }
    const tok = loadTokenizer(TINY);
    const [pc, pg] = [await tinyPpl(cpu), await tinyPpl(dev)];
    // The binary linears (packed, no fp32 weight) are expanded on the upload: the GPU evaluates the CPU-quantized
    // model as the CPU does (fp32 both; summation orders differ).
    expect(cpu.weights.layers[0].linears.q!.weight).toBeUndefined();
    const ids = tok.encode(pplText('wikitext2', path.join(ROOT, 'data')));
    const onCpu = (await perplexity(cpu, ids, { seqLen: 2048, maxWindows: 2 })).ppl;
    await toDevice(cpu, 'cuda', { dtype: 'fp32' });
    const onGpu = (await perplexity(cpu, ids, { seqLen: 2048, maxWindows: 2 })).ppl;
    await toDevice(cpu, 'cpu');
    expect(Math.abs(onGpu / onCpu - 1)).toBeLessThan(1e-4);
    console.log(`[cuda-quant] tiny billm w1g128 (32×2048): same salient columns in ${sameMask}/${masks} linears, identical codes ` +
      `${(100 * sameCodes / total).toFixed(2)}%, bits ${rc.avgBits!.toFixed(4)} / ${rg.avgBits!.toFixed(4)}; CPU ${rc.seconds.toFixed(1)} s, ` +
      `GPU ${rg.seconds.toFixed(1)} s (peak ${(rg.gpuPeakBytes! / 2 ** 20).toFixed(0)} MiB); ppl wikitext2 ${pc.wikitext2.toFixed(3)} / ` +
      `${pg.wikitext2.toFixed(3)}, c4 ${pc.c4.toFixed(3)} / ${pg.c4.toFixed(3)} (CPU / GPU)`);
    // From the same weight and Hessian the solvers agree exactly (the random problems above). Through the pipeline
    // each path's Hessians differ in rounding (and, from layer 1 on, so do the layer inputs), and BiLLM's argmin
    // searches amplify that: the CPU path alone, fed the same 32 windows in reverse order (the same Hessian up to
    // summation order), moves WikiText-2 by +2.1% and C4 by −0.3% with 23/42 identical salient sets and 96.95%
    // identical codes (bench/RESULTS.md, "BiLLM on the GPU"). Measured GPU vs CPU (H200, 2026-11-28): 6/42 salient
    // sets, 93.74% codes, WikiText-2 −1.9%, C4 −0.5%. So, as for GPTQ, C4 is held to 1% and WikiText-2 to 3%.
    expect(sameCodes / total).toBeGreaterThan(0.9);
    expect(Math.abs(rg.avgBits! / rc.avgBits! - 1)).toBeLessThan(0.01);
    expect(Math.abs(pg.wikitext2 / pc.wikitext2 - 1)).toBeLessThan(0.03);
    expect(Math.abs(pg.c4 / pc.c4 - 1)).toBeLessThan(0.01);
  });

  test('repeatable bit for bit; an AbortSignal stops it with an AbortError', async () => {
    const spec = parseSpec('billm:w1g128,nsamples=4,seqlen=512');
    const calib = readCalibIds(calibFile, spec.nsamples, spec.calibSeqLen);
    const [a, b] = [loadModel(TINY), loadModel(TINY)];
    await quantize(a, spec, { calibration: calib, device: 'cuda' });
    await quantize(b, spec, { calibration: calib, device: 'cuda' });
    expectSameLinears(a, b);
    const ac = new AbortController();
    const p = quantize(loadModel(TINY), spec, { calibration: calib, device: 'cuda', signal: ac.signal, onProgress: (s) => s.stage === 'solve o' && ac.abort() });
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
  });
});
