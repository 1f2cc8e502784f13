// SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights with per-channel scales
// s = max|X|^α / max|W|^(1−α), folded into input_layernorm (→ q,k,v) and post_attention_layernorm
// (→ gate,up); weights then per-output-channel symmetric, activations per-token dynamic symmetric at
// every linear input (applied by the forward from model.quantization.actBits).
import { checkFiniteStatistic, LayerInputs } from '../calibrate/activations';
import type { LayerWeights, LinearName, LoadedModel } from '../load/types';
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

/** Calibrates and folds the smoothing scales of layer l (fp weights), moving the inputs on to the next layer. */
export async function smoothLayer(model: LoadedModel, l: number, inputs: LayerInputs, alpha: number, signal?: AbortSignal): Promise<void> {
  const layer: LayerWeights = model.weights.layers[l];
  const hidden = model.config.hiddenSize;
  const attnMax = new Float32Array(hidden);
  const mlpMax = new Float32Array(hidden);
  await inputs.propagate(model, l, signal, async (c) => {
    absmaxInto(attnMax, c.attnIn);
    absmaxInto(mlpMax, c.mlpIn);
  });
  checkFiniteStatistic(attnMax, `model.layers.${l}.q/k/v`);
  checkFiniteStatistic(mlpMax, `model.layers.${l}.gate/up`);
  const folds: ['inputNorm' | 'postAttnNorm', LinearName[], Float32Array][] = [
    ['inputNorm', ['q', 'k', 'v'], attnMax],
    ['postAttnNorm', ['gate', 'up'], mlpMax],
  ];
  for (const [norm, names, amax] of folds) {
    const ws = names.map((n) => toF32(layer.linears[n].weight));
    const s = smoothingScales(amax, ws, hidden, alpha);
    for (let j = 0; j < hidden; j++) layer[norm][j] /= s[j];
    names.forEach((n, i) => install(layer.linears[n], scaleColumns(ws[i], hidden, s)));
  }
}

/** Per-output-channel symmetric absmax weights for every linear of layer l. */
export async function quantizeLayerWeightsSym(layer: LayerWeights, spec: QuantSpec): Promise<void> {
  for (const n of Object.keys(layer.linears) as LinearName[]) {
    const lin = layer.linears[n];
    const { weight, q } = await rtnQuantize(lin.weight, lin.outFeatures, lin.inFeatures, spec.wbits, -1, { grid: 'absmax' });
    install(lin, weight, q);
  }
}
