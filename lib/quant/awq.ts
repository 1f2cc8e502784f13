// AWQ (Lin et al. 2024) over one decoder layer, with llm-awq's semantics: per-input-channel scales
// s = mean|x|^r searched on a 20-point grid by the MSE of the block output that the scaled, quantized
// weights produce; scales folded into the preceding norm or linear; then the weight-clipping search.
import { checkFiniteStatistic, LayerInputs } from '../calibrate/activations';
import type { LayerCaptures } from '../eval/forward';
import type { LayerWeights, LinearName, LoadedModel } from '../load/types';
import { addon } from '../native/addon';
import { rtnQuantize } from './rtn';
import type { QuantSpec } from './spec';
import { install, scaleColumns, toF32 } from './weights';

const GRID = 20;
const CLIP_TOKENS = 512;

type Feats = Record<keyof LayerCaptures, Float32Array>;

function meanAbs(x: Float32Array, cols: number): Float64Array {
  const m = new Float64Array(cols);
  const rows = x.length / cols;
  for (let i = 0; i < x.length; i += cols) for (let j = 0; j < cols; j++) m[j] += Math.abs(x[i + j]);
  for (let j = 0; j < cols; j++) m[j] /= rows;
  return m;
}

function mse(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    s += d * d;
  }
  return s / a.length;
}

interface ScaleGroup {
  prev: 'inputNorm' | 'postAttnNorm' | LinearName;
  names: LinearName[];
  input: keyof LayerCaptures;
  block: (x: Float32Array) => Promise<Float32Array>;
}

export async function awqLayer(model: LoadedModel, l: number, inputs: LayerInputs, spec: QuantSpec, cancel: Int32Array, signal?: AbortSignal, onStage?: (s: string) => void): Promise<void> {
  const layer: LayerWeights = model.weights.layers[l];
  const lins = layer.linears;
  const cfg = model.config;
  // One pass gives both the statistics and the next layer's inputs (from the unmodified layer, as llm-awq does).
  onStage?.('capture');
  // Batches are copied into whole-layer buffers as they arrive, so the peak is one copy of the captures, not two.
  const tokens = inputs.nsamples * inputs.seqLen;
  const width: Record<keyof LayerCaptures, number> = { attnIn: lins.q.inFeatures, oIn: lins.o.inFeatures, mlpIn: lins.gate.inFeatures, downIn: lins.down.inFeatures };
  const feats = Object.fromEntries(Object.entries(width).map(([k, w]) => [k, new Float32Array(tokens * w)])) as Feats;
  let filled = 0;
  await inputs.propagate(model, l, signal, async (c) => {
    const t = c.attnIn.length / width.attnIn;
    for (const k of Object.keys(width) as (keyof LayerCaptures)[]) feats[k].set(c[k], filled * width[k]);
    filled += t;
  });
  for (const n of Object.keys(lins) as LinearName[]) install(lins[n], toF32(lins[n].weight).slice());

  const opts = { cfg, layer, seqLen: inputs.seqLen };
  const linearFn = (n: LinearName) => (x: Float32Array) =>
    addon.linearForward(x, lins[n].weight, { out: lins[n].outFeatures, in: lins[n].inFeatures, bias: lins[n].bias }) as Promise<Float32Array>;
  const groups: ScaleGroup[] = [
    { prev: 'inputNorm', names: ['q', 'k', 'v'], input: 'attnIn', block: (x) => addon.attnBlock(x, opts) },
    { prev: 'postAttnNorm', names: ['gate', 'up'], input: 'mlpIn', block: (x) => addon.mlpBlock(x, opts) },
  ];
  // v → o only when v's outputs are o's inputs one to one (not under GQA).
  if (lins.v.outFeatures === lins.o.inFeatures) groups.push({ prev: 'v', names: ['o'], input: 'oIn', block: linearFn('o') });
  groups.push({ prev: 'up', names: ['down'], input: 'downIn', block: linearFn('down') });

  for (const g of groups) {
    onStage?.(`scale ${g.names.join(',')}`);
    const x = feats[g.input];
    const cols = lins[g.names[0]].inFeatures;
    const xm = meanAbs(x, cols);
    checkFiniteStatistic(xm, `model.layers.${l}.${g.names.join('/')}`);
    const org = await g.block(x);
    const ws = Object.fromEntries(g.names.map((n) => [n, lins[n].weight as Float32Array]));
    let best = Infinity;
    let bestS: Float32Array | undefined;
    for (let r = 0; r < GRID; r++) {
      if (signal?.aborted) break;
      const s = new Float32Array(cols);
      let mx = -Infinity;
      let mn = Infinity;
      for (let j = 0; j < cols; j++) {
        s[j] = Math.max(Math.fround(Math.pow(xm[j], r / GRID)), 1e-4);
        mx = Math.max(mx, s[j]);
        mn = Math.min(mn, s[j]);
      }
      const norm = Math.fround(Math.sqrt(mx * mn));
      for (let j = 0; j < cols; j++) s[j] /= norm;
      for (const n of g.names) {
        const { weight } = await rtnQuantize(scaleColumns(ws[n], cols, s), lins[n].outFeatures, cols, spec.wbits, spec.groupSize, { grid: 'awq' });
        lins[n].weight = scaleColumns(weight, cols, s, true);
      }
      const loss = mse(org, await g.block(x));
      if (loss < best) {
        best = loss;
        bestS = s;
      }
    }
    if (!bestS) throw Object.assign(new Error('The operation was aborted'), { name: 'AbortError' });
    for (const n of g.names) lins[n].weight = scaleColumns(ws[n], cols, bestS);
    if (g.prev === 'inputNorm' || g.prev === 'postAttnNorm') {
      const w = layer[g.prev];
      for (let j = 0; j < cols; j++) w[j] /= bestS[j];
    } else {
      const p = lins[g.prev];
      p.weight = divideRows(p.weight as Float32Array, p.inFeatures, bestS);
      if (p.bias) for (let j = 0; j < cols; j++) p.bias[j] /= bestS[j];
    }
    for (let i = 0; i < x.length; i += cols) for (let j = 0; j < cols; j++) x[i + j] /= bestS[j];
  }

  const clipInput: Partial<Record<LinearName, keyof LayerCaptures>> = { v: 'attnIn', o: 'oIn', gate: 'mlpIn', up: 'mlpIn', down: 'downIn' };
  for (const [n, k] of Object.entries(clipInput) as [LinearName, keyof LayerCaptures][]) {
    onStage?.(`clip ${n}`);
    const lin = lins[n];
    const x = feats[k];
    const rows = x.length / lin.inFeatures;
    const step = Math.max(1, Math.floor(rows / CLIP_TOKENS));
    const take = Math.min(CLIP_TOKENS, Math.ceil(rows / step));
    const xs = new Float32Array(take * lin.inFeatures);
    for (let i = 0; i < take; i++) xs.set(x.subarray(i * step * lin.inFeatures, (i * step + 1) * lin.inFeatures), i * lin.inFeatures);
    await addon.awqClip(lin.weight, xs, { co: lin.outFeatures, ci: lin.inFeatures, bits: spec.wbits, groupSize: spec.groupSize, grid: GRID, steps: GRID / 2, cancel });
  }
  onStage?.('quantize');
  for (const n of Object.keys(lins) as LinearName[]) {
    const lin = lins[n];
    const { weight, q } = await rtnQuantize(lin.weight, lin.outFeatures, lin.inFeatures, spec.wbits, spec.groupSize, { grid: 'awq' });
    install(lin, weight, q);
  }
}

function divideRows(w: Float32Array, cols: number, s: ArrayLike<number>): Float32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length / cols; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = w[i * cols + j] / s[i];
  return out;
}
