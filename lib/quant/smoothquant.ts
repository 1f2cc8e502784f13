// SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights with per-channel scales
// s = max|X|^α / max|W|^(1−α), folded into input_layernorm (→ q,k,v) and post_attention_layernorm
// (→ gate,up); weights then per-output-channel symmetric, activations per-token dynamic symmetric at
// every linear input (applied by the forward from model.quantization.actBits).
import { checkFiniteStatistic, LayerInputs } from '../calibrate/activations';
import { CoverageCounter, ExpertBatch, ExpertCoverage } from '../calibrate/experts';
import { denseMlp, layerLinears } from '../load/linears';
import type { LayerWeights, Linear, LoadedModel } from '../load/types';
import { rtnQuantize } from './rtn';
import type { QuantSpec } from './spec';
import { install, scaleColumns, toF32 } from './weights';

function absmaxInto(acc: Float32Array, x: Float32Array): void {
  const cols = acc.length;
  for (let i = 0; i < x.length; i += cols) {
    for (let j = 0; j < cols; j++) {
      const v = Math.abs(x[i + j]);
      if (v > acc[j]) acc[j] = v;
    }
  }
}

/** Per-channel smoothing scales; exported for tests. */
export function smoothingScales(actMax: Float32Array, weights: Float32Array[], cols: number, alpha: number): Float32Array {
  const wmax = new Float32Array(cols);
  for (const w of weights) absmaxInto(wmax, w);
  const s = new Float32Array(cols);
  for (let j = 0; j < cols; j++) {
    const wm = Math.max(wmax[j], 1e-5);
    s[j] = Math.max(Math.pow(actMax[j], alpha) / Math.pow(wm, 1 - alpha), 1e-5);
  }
  return s;
}

/**
 * Calibrates and folds the smoothing scales of layer l (fp weights), moving the inputs on to the next layer.
 * In a sparse layer the post-attention norm feeds every expert's gate/up and the router: all take the
 * scales (the router, as in SmoothQuant's Mixtral code, counts in max|W| and stays unquantized). The
 * statistics are of that shared input, so every expert is calibrated on every token whatever the mode;
 * the routed counts are still reported.
 */
export async function smoothLayer(model: LoadedModel, l: number, inputs: LayerInputs, alpha: number, signal?: AbortSignal): Promise<ExpertCoverage | undefined> {
  const layer: LayerWeights = model.weights.layers[l];
  const hidden = model.config.hiddenSize;
  const attnMax = new Float32Array(hidden);
  const mlpMax = new Float32Array(hidden);
  const cov = layer.moe ? new CoverageCounter(l, layer.moe.experts.length, 'all') : undefined;
  await inputs.propagate(model, l, signal, async (c) => {
    absmaxInto(attnMax, c.attnIn);
    absmaxInto(mlpMax, c.mlpIn);
    if (cov) cov.add(await ExpertBatch.of(model, l, c.mlpIn));
  });
  foldSmoothing(model, l, attnMax, mlpMax, alpha);
  return cov?.report();
}

/**
 * Folds the smoothing scales s = max|X|^α / max|W|^(1−α) from the activation maxima of layer l's attention and
 * MLP inputs into its norms (÷ s) and the linears they feed (× s per input column).
 */
export function foldSmoothing(model: LoadedModel, l: number, attnMax: Float32Array, mlpMax: Float32Array, alpha: number): void {
  const layer: LayerWeights = model.weights.layers[l];
  const hidden = model.config.hiddenSize;
  checkFiniteStatistic(attnMax, `model.layers.${l}.q/k/v`);
  checkFiniteStatistic(mlpMax, `model.layers.${l}.gate/up`);
  const mlpIn: Linear[] = layer.moe ? layer.moe.experts.flatMap((e) => [e.gate, e.up]) : [denseMlp(layer, 'gate', `model.layers.${l}`), denseMlp(layer, 'up', `model.layers.${l}`)];
  const folds: ['inputNorm' | 'postAttnNorm', Linear[], Float32Array][] = [
    ['inputNorm', [layer.linears.q, layer.linears.k, layer.linears.v], attnMax],
    ['postAttnNorm', mlpIn, mlpMax],
  ];
  for (const [norm, lins, amax] of folds) {
    const ws = lins.map((lin) => toF32(lin.weight));
    const router = norm === 'postAttnNorm' && layer.moe ? toF32(layer.moe.router) : undefined;
    const s = smoothingScales(amax, router ? [...ws, router] : ws, hidden, alpha);
    for (let j = 0; j < hidden; j++) layer[norm][j] /= s[j];
    lins.forEach((lin, i) => install(lin, scaleColumns(ws[i], hidden, s)));
    if (router) layer.moe!.router = scaleColumns(router, hidden, s);
  }
}

/** Per-output-channel symmetric absmax weights for every linear of layer l (a router stays as it is). */
export async function quantizeLayerWeightsSym(layer: LayerWeights, spec: QuantSpec): Promise<void> {
  for (const { lin } of layerLinears(layer)) {
    const { weight, q } = await rtnQuantize(lin.weight, lin.outFeatures, lin.inFeatures, spec.wbits, -1, { grid: 'absmax' });
    install(lin, weight, q);
  }
}
