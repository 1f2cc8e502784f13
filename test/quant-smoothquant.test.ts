// SmoothQuant: the smoothing scales against a float64 reimplementation, the fold leaving the full-precision
// layer output unchanged (qwen3-tiny layer 0), and the spec strings of the W/A methods.
import * as fs from 'fs';
import * as path from 'path';
import { LayerInputs } from '../lib/calibrate/activations';
import { embedTokens, LayerCaptures, runLayer } from '../lib/eval/forward';
import { loadModel } from '../lib/load/model';
import type { LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { smoothingScales, smoothLayer } from '../lib/quant/smoothquant';
import { parseSpec } from '../lib/quant/spec';
import { toF32 } from '../lib/quant/weights';
import { gauss } from './helpers/random';

const SHARED = path.resolve(__dirname, '..', '..', 'shared');

function scales64(actMax: ArrayLike<number>, weights: ArrayLike<number>[], cols: number, alpha: number): Float64Array {
  const s = new Float64Array(cols);
  for (let j = 0; j < cols; j++) {
    let wm = 0;
    for (const w of weights) for (let i = j; i < w.length; i += cols) wm = Math.max(wm, Math.abs(w[i]));
    wm = Math.max(wm, 1e-5);
    s[j] = Math.max(actMax[j] ** alpha / wm ** (1 - alpha), 1e-5);
  }
  return s;
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst / scale;
}

describe('smoothingScales', () => {
  test.each([0, 0.5, 0.85, 1])('alpha %f matches the float64 definition', (alpha) => {
    const g = gauss(5);
    const cols = 48;
    const actMax = Float32Array.from({ length: cols }, (_, j) => Math.abs(g()) * (j % 7 === 0 ? 40 : 1));
    actMax[3] = 0; // a channel that never fired: floored at 1e-5
    const ws = [0, 1, 2].map(() => Float32Array.from({ length: 20 * cols }, () => 0.05 * g()));
    for (const w of ws) for (let i = 10; i < w.length; i += cols) w[i] = 0; // an all-zero weight column
    const got = smoothingScales(actMax, ws, cols, alpha);
    const ref = scales64(actMax, ws, cols, alpha);
    expect(got).toHaveLength(cols);
    for (let j = 0; j < cols; j++) expect(Math.abs(got[j] - ref[j]) / ref[j]).toBeLessThan(1e-6);
    if (alpha > 0) expect(got[3]).toBeCloseTo(1e-5, 10);
  });
});

describe('smoothing leaves the full-precision layer unchanged (qwen3-tiny layer 0)', () => {
  let model: LoadedModel;
  let h: Float32Array;
  let seqLen: number;
  let ids: Int32Array;
  beforeAll(async () => {
    model = loadModel(path.join(SHARED, 'models', 'qwen3-tiny'));
    const g = JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', 'qwen3-tiny.json'), 'utf8')).golden;
    seqLen = 256;
    ids = Int32Array.from([...g.input_ids[0], ...g.input_ids[1]]);
    h = await embedTokens(model, ids);
  });

  test('smoothLayer folds s into the norms and columns; layer, attention and MLP outputs stay equal to 1e-5', async () => {
    const cfg = model.config;
    const layer = model.weights.layers[0];
    const opts = { cfg, layer, seqLen };
    const eps = cfg.rmsNormEps;
    // Before: the layer output, and the attention / MLP block outputs on their normed inputs.
    const before = h.slice();
    const caps = (await runLayer(model, 0, before, seqLen, { capture: true })) as LayerCaptures;
    const xa = addon.rmsnorm(h, layer.inputNorm, eps) as Float32Array;
    const xm = addon.rmsnorm(h, layer.postAttnNorm, eps) as Float32Array;
    const attn0 = (await addon.attnBlock(xa, opts)) as Float32Array;
    const mlp0 = (await addon.mlpBlock(xm, opts)) as Float32Array;
    const norm0 = [layer.inputNorm.slice(), layer.postAttnNorm.slice()];
    const wq0 = toF32(layer.linears.q.weight).slice();
    const wgate0 = toF32(layer.linears.gate!.weight).slice();

    // Expected scales from the calibration activations' channel maxima, computed here.
    const hid = cfg.hiddenSize;
    const absmax = (x: Float32Array) => {
      const m = new Float64Array(hid);
      for (let i = 0; i < x.length; i++) m[i % hid] = Math.max(m[i % hid], Math.abs(x[i]));
      return m;
    };
    const sAttn = scales64(absmax(caps.attnIn), ['q', 'k', 'v'].map((n) => toF32(layer.linears[n as 'q'].weight)), hid, 0.5);
    const sMlp = scales64(absmax(caps.mlpIn), ['gate', 'up'].map((n) => toF32(layer.linears[n as 'q'].weight)), hid, 0.5);
    let spread = 0;
    for (const v of sAttn) spread = Math.max(spread, Math.abs(Math.log(v)));
    expect(spread).toBeGreaterThan(0.1); // the transform is not the identity

    const inputs = await LayerInputs.embed(model, { ids, nsamples: 2, seqLen, source: 'golden' });
    await smoothLayer(model, 0, inputs, 0.5);

    for (let j = 0; j < hid; j++) {
      expect(Math.abs(layer.inputNorm[j] - norm0[0][j] / sAttn[j])).toBeLessThanOrEqual(1e-5 * Math.abs(norm0[0][j] / sAttn[j]) + 1e-12);
      expect(Math.abs(layer.postAttnNorm[j] - norm0[1][j] / sMlp[j])).toBeLessThanOrEqual(1e-5 * Math.abs(norm0[1][j] / sMlp[j]) + 1e-12);
    }
    const wq = toF32(layer.linears.q.weight);
    const wgate = toF32(layer.linears.gate!.weight);
    for (let i = 0; i < 4 * hid; i++) {
      expect(Math.abs(wq[i] - wq0[i] * sAttn[i % hid])).toBeLessThanOrEqual(1e-5 * Math.abs(wq0[i] * sAttn[i % hid]) + 1e-12);
      expect(Math.abs(wgate[i] - wgate0[i] * sMlp[i % hid])).toBeLessThanOrEqual(1e-5 * Math.abs(wgate0[i] * sMlp[i % hid]) + 1e-12);
    }

    const after = h.slice();
    await runLayer(model, 0, after, seqLen);
    expect(maxRel(after, before)).toBeLessThan(1e-5);
    const attn1 = (await addon.attnBlock(addon.rmsnorm(h, layer.inputNorm, eps), opts)) as Float32Array;
    const mlp1 = (await addon.mlpBlock(addon.rmsnorm(h, layer.postAttnNorm, eps), opts)) as Float32Array;
    expect(maxRel(attn1, attn0)).toBeLessThan(1e-5);
    expect(maxRel(mlp1, mlp0)).toBeLessThan(1e-5);
    // The calibration inputs were pushed through the (smoothed) layer: they equal the layer's output.
    expect(maxRel(inputs.batches[0], before)).toBeLessThan(1e-5);
  });
});

describe('W/A spec strings', () => {
  test('smoothquant:w4a8 → 4-bit symmetric per-channel weights, 8-bit activations, alpha 0.5', () => {
    const s = parseSpec('smoothquant:w4a8');
    expect(s).toMatchObject({ method: 'smoothquant', wbits: 4, abits: 8, groupSize: -1, sym: true, alpha: 0.5 });
  });

  test('smoothquant:w8a8g128 is rejected: per-channel only', () => {
    expect(() => parseSpec('smoothquant:w8a8g128')).toThrow(/per output channel; --group-size 128 does not apply/);
  });

  test('naive:w4a4 has alpha 0 (no smoothing)', () => {
    expect(parseSpec('naive:w4a4')).toMatchObject({ method: 'naive', wbits: 4, abits: 4, groupSize: -1, sym: true, alpha: 0 });
  });

  test('smoothquant defaults to a8; a0 and alpha out of range are rejected', () => {
    expect(parseSpec('smoothquant:w8')).toMatchObject({ wbits: 8, abits: 8 });
    expect(() => parseSpec('smoothquant:w8a0')).toThrow(/smoothquant needs --abits/);
    expect(() => parseSpec('smoothquant:w8a8,alpha=1.5')).toThrow(/--alpha must be in \[0, 1\], got 1\.5/);
  });
});
