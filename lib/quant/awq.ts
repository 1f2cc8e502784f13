// AWQ (Lin et al. 2024) over one decoder layer, with llm-awq's semantics: per-input-channel scales
// s = mean|x|^r searched on a 20-point grid by the MSE of the block output that the scaled, quantized
// weights produce; scales folded into the preceding norm or linear; then the weight-clipping search.
// A sparse layer's experts share one scale group on the MoE block's output (their gate/up all read the
// post-attention norm, as does the router, which takes the scales unquantized); each expert's down gets
// its own, folded into its up.
import { checkFiniteStatistic, LayerInputs } from '../calibrate/activations';
import { CoverageCounter, ExpertBatch, ExpertCoverage, expertHidden, gatherRows, MoeCalib } from '../calibrate/experts';
import type { LayerCaptures } from '../eval/forward';
import { denseMlp, layerLinears } from '../load/linears';
import type { LayerWeights, Linear, LoadedModel, MoeWeights } from '../load/types';
import { addon, isF32Array } from '../native/addon';
import { rtnQuantize } from './rtn';
import type { QuantSpec } from './spec';
import { install, scaleColumns, toF32 } from './weights';

/** Scale ratios r/GRID searched per group (the clip search tries GRID/2 ranges); tokens the clip search samples. */
export const GRID = 20;
export const CLIP_TOKENS = 512;

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
  label: string;
  /** What the scales fold into: the norm before the group, or the linear whose outputs it reads. */
  prev: Float32Array | Linear;
  lins: Linear[];
  /** A MoE router reads the group's input too: its columns take the scales, it stays unquantized. */
  router?: MoeWeights;
  /** The group's input, divided by the scales in place once they are folded. */
  input: () => Promise<Float32Array>;
  block: (x: Float32Array) => Promise<Float32Array>;
}

/** The scale ratio AWQ chose for one group of a layer (s = mean|x|^(ratio/GRID)) and the block output's MSE with it. */
export interface AwqGroupReport {
  layer: number;
  label: string;
  ratio: number;
  loss: number;
}

/** AWQ of layer l: the scales it chose; in a sparse layer also the experts' calibration coverage. */
export async function awqLayer(
  model: LoadedModel,
  l: number,
  inputs: LayerInputs,
  spec: QuantSpec,
  cancel: Int32Array,
  signal?: AbortSignal,
  onStage?: (s: string) => void,
): Promise<{ groups: AwqGroupReport[]; coverage?: ExpertCoverage }> {
  const layer: LayerWeights = model.weights.layers[l];
  const lins = layer.linears;
  const cfg = model.config;
  // One pass gives both the statistics and the next layer's inputs (from the unmodified layer, as llm-awq does).
  onStage?.('capture');
  // Batches are copied into whole-layer buffers as they arrive, so the peak is one copy of the captures, not two.
  const tokens = inputs.nsamples * inputs.seqLen;
  // A sparse layer has no dense down input: each expert's is computed from mlpIn when needed.
  const width: Partial<Record<keyof LayerCaptures, number>> = {
    attnIn: lins.q.inFeatures,
    oIn: lins.o.inFeatures,
    mlpIn: cfg.hiddenSize,
    ...(layer.moe ? {} : { downIn: denseMlp(layer, 'down', `model.layers.${l}`).inFeatures }),
  };
  const feats = Object.fromEntries(Object.entries(width).map(([k, w]) => [k, new Float32Array(tokens * w)])) as Feats;
  let filled = 0;
  await inputs.propagate(model, l, signal, async (c) => {
    const t = c.attnIn.length / width.attnIn!;
    for (const k of Object.keys(width) as (keyof LayerCaptures)[]) feats[k].set(c[k]!, filled * width[k]!);
    filled += t;
  });
  for (const { lin } of layerLinears(layer)) install(lin, toF32(lin.weight).slice());

  const opts = { cfg, layer, seqLen: inputs.seqLen };
  const linearFn = (lin: Linear) => (x: Float32Array) =>
    addon.linearForward(x, lin.weight, { out: lin.outFeatures, in: lin.inFeatures, bias: lin.bias }) as Promise<Float32Array>;
  const fixed = (x: Float32Array) => async () => x;
  const groups: ScaleGroup[] = [
    { label: 'q,k,v', prev: layer.inputNorm, lins: [lins.q, lins.k, lins.v], input: fixed(feats.attnIn), block: (x) => addon.attnBlock(x, opts) },
  ];
  // v → o only when v's outputs are o's inputs one to one (not under GQA).
  const vo: ScaleGroup[] = lins.v.outFeatures === lins.o.inFeatures ? [{ label: 'o', prev: lins.v, lins: [lins.o], input: fixed(feats.oIn), block: linearFn(lins.o) }] : [];
  let experts: ExpertRows | undefined;
  if (layer.moe) {
    experts = await ExpertRows.of(model, l, feats.mlpIn, spec.moeCalib ?? 'all');
    const ex = layer.moe.experts;
    groups.push(
      { label: 'experts gate,up', prev: layer.postAttnNorm, lins: ex.flatMap((e) => [e.gate, e.up]), router: layer.moe, input: fixed(feats.mlpIn), block: (x) => addon.mlpBlock(x, opts) },
      ...vo,
      ...ex.map((e, i): ScaleGroup => ({ label: `expert ${i} down`, prev: e.up, lins: [e.down], input: () => experts!.hidden(i, feats.mlpIn), block: linearFn(e.down) })),
    );
  } else {
    const gate = denseMlp(layer, 'gate', `model.layers.${l}`), up = denseMlp(layer, 'up', `model.layers.${l}`), down = denseMlp(layer, 'down', `model.layers.${l}`);
    groups.push(
      { label: 'gate,up', prev: layer.postAttnNorm, lins: [gate, up], input: fixed(feats.mlpIn), block: (x) => addon.mlpBlock(x, opts) },
      ...vo,
      { label: 'down', prev: up, lins: [down], input: fixed(feats.downIn), block: linearFn(down) },
    );
  }

  const chosen: AwqGroupReport[] = [];
  for (const g of groups) {
    onStage?.(`scale ${g.label}`);
    const x = await g.input();
    const cols = g.lins[0].inFeatures;
    const xm = meanAbs(x, cols);
    checkFiniteStatistic(xm, `model.layers.${l}.${g.label.replace(/,/g, '/')}`);
    const org = await g.block(x);
    const ws = g.lins.map((lin) => lin.weight as Float32Array);
    let best = Infinity;
    let bestS: Float32Array | undefined;
    let bestR = -1;
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
      for (const [i, lin] of g.lins.entries()) {
        const { weight } = await rtnQuantize(scaleColumns(ws[i], cols, s), lin.outFeatures, cols, spec.wbits, spec.groupSize, { grid: 'awq' });
        lin.weight = scaleColumns(weight, cols, s, true);
      }
      const loss = mse(org, await g.block(x));
      if (loss < best) {
        best = loss;
        bestS = s;
        bestR = r;
      }
    }
    if (!bestS) throw Object.assign(new Error('The operation was aborted'), { name: 'AbortError' });
    chosen.push({ layer: l, label: g.label, ratio: bestR, loss: best });
    g.lins.forEach((lin, i) => (lin.weight = scaleColumns(ws[i], cols, bestS!)));
    if (g.router) g.router.router = scaleColumns(toF32(g.router.router), cols, bestS);
    if (isF32Array(g.prev)) {
      for (let j = 0; j < cols; j++) g.prev[j] /= bestS[j];
    } else {
      const p = g.prev;
      p.weight = divideRows(p.weight as Float32Array, p.inFeatures, bestS);
      if (p.bias) for (let j = 0; j < cols; j++) p.bias[j] /= bestS[j];
    }
    for (let i = 0; i < x.length; i += cols) for (let j = 0; j < cols; j++) x[i + j] /= bestS[j];
  }

  // Weight clipping, each linear on (a sample of) its own input.
  const clips: [string, Linear, () => Promise<Float32Array>][] = [
    ['v', lins.v, fixed(feats.attnIn)],
    ['o', lins.o, fixed(feats.oIn)],
  ];
  if (layer.moe) {
    layer.moe.experts.forEach((e, i) => {
      const xin = async () => experts!.input(i, feats.mlpIn);
      clips.push([`expert ${i} gate`, e.gate, xin], [`expert ${i} up`, e.up, xin], [`expert ${i} down`, e.down, () => experts!.hidden(i, feats.mlpIn)]);
    });
  } else {
    clips.push(['gate', lins.gate!, fixed(feats.mlpIn)], ['up', lins.up!, fixed(feats.mlpIn)], ['down', lins.down!, fixed(feats.downIn)]);
  }
  for (const [label, lin, input] of clips) {
    onStage?.(`clip ${label}`);
    const x = await input();
    const rows = x.length / lin.inFeatures;
    const step = Math.max(1, Math.floor(rows / CLIP_TOKENS));
    const take = Math.min(CLIP_TOKENS, Math.ceil(rows / step));
    const xs = new Float32Array(take * lin.inFeatures);
    for (let i = 0; i < take; i++) xs.set(x.subarray(i * step * lin.inFeatures, (i * step + 1) * lin.inFeatures), i * lin.inFeatures);
    await addon.awqClip(lin.weight, xs, { co: lin.outFeatures, ci: lin.inFeatures, bits: spec.wbits, groupSize: spec.groupSize, grid: GRID, steps: GRID / 2, cancel });
  }
  onStage?.('quantize');
  for (const { lin } of layerLinears(layer)) {
    const { weight, q } = await rtnQuantize(lin.weight, lin.outFeatures, lin.inFeatures, spec.wbits, spec.groupSize, { grid: 'awq' });
    install(lin, weight, q);
  }
  return { groups: chosen, coverage: experts?.coverage.report() };
}

/** Which rows of the layer's MLP input each expert's AWQ statistics use (llm-awq's own hooks see the routed ones). */
class ExpertRows {
  private constructor(
    private readonly model: LoadedModel,
    private readonly l: number,
    private readonly batch: ExpertBatch,
    readonly coverage: CoverageCounter,
  ) {}

  static async of(model: LoadedModel, l: number, mlpIn: Float32Array, mode: MoeCalib): Promise<ExpertRows> {
    const batch = await ExpertBatch.of(model, l, mlpIn);
    const coverage = new CoverageCounter(l, model.config.moe!.numExperts, mode);
    coverage.add(batch);
    return new ExpertRows(model, l, batch, coverage);
  }

  /** Expert e's rows of x (the layer's current MLP input, scales folded). */
  input(e: number, x: Float32Array): Float32Array {
    return this.coverage.usesAll(e) ? x : gatherRows(x, this.batch.routedRows[e], this.model.config.hiddenSize);
  }

  /** Expert e's down_proj input on its rows, from its current weights. */
  hidden(e: number, x: Float32Array): Promise<Float32Array> {
    return expertHidden(this.model, this.l, e, this.input(e, x));
  }
}

function divideRows(w: Float32Array, cols: number, s: ArrayLike<number>): Float32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length / cols; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = w[i * cols + j] / s[i];
  return out;
}
