// GPTQ over one decoder layer: Hessians H = 2/n·Σ XᵀX of each linear's inputs, accumulated as calibration
// batches stream through the layer, then the native column-by-column solver. With true-sequential, each
// subset ([k,v,q] → [o] → [up,gate] → [down]) sees the inputs produced by the already-quantized ones.
import { checkFiniteStatistic, LayerInputs } from '../calibrate/activations';
import type { LayerCaptures } from '../eval/forward';
import type { LinearName, LoadedModel } from '../load/types';
import { addon } from '../native/addon';
import type { QuantSpec } from './spec';
import { install } from './weights';

export const INPUT_OF: Record<LinearName, keyof LayerCaptures> = {
  q: 'attnIn', k: 'attnIn', v: 'attnIn', o: 'oIn', gate: 'mlpIn', up: 'mlpIn', down: 'downIn',
};

export const SEQUENTIAL_SUBSETS: LinearName[][] = [['k', 'v', 'q'], ['o'], ['up', 'gate'], ['down']];
export const ALL_AT_ONCE: LinearName[][] = [['q', 'k', 'v', 'o', 'gate', 'up', 'down']];

export interface LinearReport {
  layer: number;
  name: LinearName;
  loss?: number;
  deadColumns?: number;
  avgBits?: number;
}

/** Collects 2/n·Σ XᵀX for the inputs of the given linears over all calibration batches. */
export async function collectHessians(
  model: LoadedModel,
  l: number,
  inputs: LayerInputs,
  names: LinearName[],
  signal?: AbortSignal,
): Promise<Map<keyof LayerCaptures, Float32Array>> {
  const lins = model.weights.layers[l].linears;
  const H = new Map<keyof LayerCaptures, Float32Array>();
  for (const n of names) {
    const k = INPUT_OF[n];
    if (!H.has(k)) H.set(k, new Float32Array(lins[n].inFeatures * lins[n].inFeatures));
  }
  await inputs.capture(model, l, async (cap) => {
    for (const [k, h] of H) await addon.hessianAccumulate(h, cap[k], 2 / inputs.nsamples);
  }, signal);
  for (const [k, h] of H) checkFiniteStatistic(h, `model.layers.${l}.${names.filter((n) => INPUT_OF[n] === k).join('/')}`);
  return H;
}

/** Quantizes layer l's linears with a Hessian-based solver (GPTQ here; BiLLM reuses the same schedule). */
export async function hessianLayer(
  model: LoadedModel,
  l: number,
  inputs: LayerInputs,
  spec: QuantSpec,
  solve: (name: LinearName, H: Float32Array) => Promise<LinearReport>,
  signal?: AbortSignal,
  onStage?: (stage: string) => void,
): Promise<LinearReport[]> {
  const reports: LinearReport[] = [];
  for (const subset of spec.trueSequential ? SEQUENTIAL_SUBSETS : ALL_AT_ONCE) {
    onStage?.(`hessian ${subset.join(',')}`);
    const H = await collectHessians(model, l, inputs, subset, signal);
    for (const name of subset) {
      onStage?.(`solve ${name}`);
      reports.push(await solve(name, H.get(INPUT_OF[name])!));
    }
  }
  return reports;
}

export function gptqSolver(model: LoadedModel, l: number, spec: QuantSpec, cancel: Int32Array) {
  return async (name: LinearName, H: Float32Array): Promise<LinearReport> => {
    const lin = model.weights.layers[l].linears[name];
    const r = await addon.gptqQuantize(lin.weight, H, {
      rows: lin.outFeatures,
      cols: lin.inFeatures,
      bits: spec.wbits,
      groupSize: spec.groupSize,
      sym: spec.sym,
      actOrder: spec.actOrder,
      staticGroups: spec.staticGroups,
      damp: spec.damp,
      blockSize: spec.blockSize,
      cancel,
    });
    install(lin, r.weight, {
      bits: spec.wbits,
      groupSize: spec.groupSize,
      sym: spec.sym,
      qweight: r.qweight,
      scales: r.scales,
      zeros: r.zeros,
      gIdx: r.gIdx,
    });
    return { layer: l, name, loss: r.loss, deadColumns: r.deadColumns };
  };
}
