// GPTQ over one decoder layer: Hessians H = 2/n·Σ XᵀX of each linear's inputs, accumulated as calibration
// batches stream through the layer, then the native column-by-column solver. With true-sequential, each
// subset ([k,v,q] → [o] → [up,gate] → [down]) sees the inputs produced by the already-quantized ones.
// In a sparse (MoE) layer every expert's up/gate and down take the place of the dense MLP's (experts.ts
// says which tokens each expert's Hessians come from).
import { checkFiniteStatistic, LayerInputs } from '../calibrate/activations';
import { CoverageCounter, ExpertBatch, ExpertCoverage, expertHidden } from '../calibrate/experts';
import type { LayerCaptures } from '../eval/forward';
import { LinearRef, layerLinears } from '../load/linears';
import type { Linear, LinearName, LoadedModel, MlpLinearName } from '../load/types';
import { addon } from '../native/addon';
import type { QuantSpec } from './spec';
import { install, installDequantizedOnAccess } from './weights';

export const INPUT_OF: Record<LinearName, keyof LayerCaptures> = {
  q: 'attnIn', k: 'attnIn', v: 'attnIn', o: 'oIn', gate: 'mlpIn', up: 'mlpIn', down: 'downIn',
};

const CAPTURE_ORDER: (keyof LayerCaptures)[] = ['attnIn', 'oIn', 'mlpIn', 'downIn'];

export const SEQUENTIAL_SUBSETS: LinearName[][] = [['k', 'v', 'q'], ['o'], ['up', 'gate'], ['down']];
export const ALL_AT_ONCE: LinearName[][] = [['q', 'k', 'v', 'o', 'gate', 'up', 'down']];

export interface LinearReport {
  layer: number;
  name: LinearName;
  expert?: number;
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
    const cols = lins[n]!.inFeatures;
    if (!H.has(k)) H.set(k, new Float32Array(cols * cols));
  }
  // The forward stops at the last of these inputs in layer order (k,v,q need no more than the input norm).
  const upTo = CAPTURE_ORDER.filter((k) => H.has(k)).pop()!;
  await inputs.capture(model, l, upTo, async (cap) => {
    for (const [k, h] of H) await addon.hessianAccumulate(h, cap[k]!, 2 / inputs.nsamples);
  }, signal);
  for (const [k, h] of H) checkFiniteStatistic(h, `model.layers.${l}.${names.filter((n) => INPUT_OF[n] === k).join('/')}`);
  return H;
}

export type HessianSolver = (ref: LinearRef, H: Float32Array) => Promise<LinearReport>;

export interface HessianLayerResult {
  linears: LinearReport[];
  /** Sparse layers: the experts' calibration coverage. */
  coverage?: ExpertCoverage;
}

/** Quantizes layer l's linears with a Hessian-based solver (GPTQ here; BiLLM reuses the same schedule). */
export async function hessianLayer(
  model: LoadedModel,
  l: number,
  inputs: LayerInputs,
  spec: QuantSpec,
  solve: HessianSolver,
  signal?: AbortSignal,
  onStage?: (stage: string) => void,
): Promise<HessianLayerResult> {
  const layer = model.weights.layers[l];
  const refs = layerLinears(layer);
  const ref = (name: LinearName, expert?: number) => refs.find((r) => r.kind === name && r.expert === expert)!;
  const reports: LinearReport[] = [];
  if (!layer.moe) {
    const subsets = spec.trueSequential ? SEQUENTIAL_SUBSETS : ALL_AT_ONCE;
    // Once no step left reads the attention's inputs, its weights are final: the activations go through it once,
    // and the MLP's steps and the propagation after this layer run only the MLP half.
    const mlpOnly = (s: LinearName[]) => s.every((n) => INPUT_OF[n] === 'mlpIn' || INPUT_OF[n] === 'downIn');
    const advanceAt = subsets.findIndex((_, i) => i > 0 && subsets.slice(i).every(mlpOnly));
    for (const [i, subset] of subsets.entries()) {
      if (i === advanceAt) {
        onStage?.('attention');
        await inputs.advanceAttention(model, l, signal);
      }
      onStage?.(`hessian ${subset.join(',')}`);
      const H = await collectHessians(model, l, inputs, subset, signal);
      for (const name of subset) {
        onStage?.(`solve ${name}`);
        reports.push(await solve(ref(name), H.get(INPUT_OF[name])!));
      }
    }
    return { linears: reports };
  }
  // Sparse layer: attention as above, then the experts. Without true-sequential every Hessian is
  // collected from the unquantized layer before anything is solved.
  const E = layer.moe.experts.length;
  const cov = new CoverageCounter(l, E, spec.moeCalib ?? 'all');
  // Each step collects its Hessians and returns the solves that use them.
  type Step = () => Promise<() => Promise<void>>;
  const solveExperts = (names: MlpLinearName[], H: Float32Array[]) => async () => {
    onStage?.(`solve experts ${names.join(',')}`);
    for (let e = 0; e < E; e++) for (const name of names) reports.push(await solve(ref(name, e), H[e]));
  };
  const steps: Step[] = [
    ...(spec.trueSequential ? ATTN_SUBSETS : [ATTN_SUBSETS.flat()]).map((subset): Step => async () => {
      onStage?.(`hessian ${subset.join(',')}`);
      const H = await collectHessians(model, l, inputs, subset, signal);
      return async () => {
        for (const name of subset) reports.push(await solve(ref(name), H.get(INPUT_OF[name])!));
      };
    }),
    async () => {
      onStage?.('hessian experts up,gate');
      return solveExperts(['up', 'gate'], await collectExpertInputHessians(model, l, inputs, cov, signal));
    },
    async () => {
      onStage?.('hessian experts down');
      return solveExperts(['down'], await collectExpertDownHessians(model, l, inputs, cov, signal));
    },
  ];
  if (spec.trueSequential) {
    for (const step of steps) await (await step())();
  } else {
    const solves = [];
    for (const step of steps) solves.push(await step());
    for (const run of solves) await run();
  }
  return { linears: reports, coverage: cov.report() };
}

const ATTN_SUBSETS: LinearName[][] = [['k', 'v', 'q'], ['o']];

/**
 * Hessians of every expert's up/gate input. All experts read the layer's MLP input: in 'all' mode they
 * share one Hessian over every token; in 'routed' mode each gets its own over its routed tokens (an
 * expert no token reached falls back to the shared one). Counts the routing into `cov`.
 */
async function collectExpertInputHessians(
  model: LoadedModel,
  l: number,
  inputs: LayerInputs,
  cov: CoverageCounter,
  signal?: AbortSignal,
): Promise<Float32Array[]> {
  const h = model.config.hiddenSize;
  const E = model.config.moe!.numExperts;
  const shared = new Float32Array(h * h);
  const own: (Float32Array | undefined)[] = new Array(E);
  const alpha = 2 / inputs.nsamples;
  await inputs.capture(model, l, 'mlpIn', async (cap) => {
    const b = await ExpertBatch.of(model, l, cap.mlpIn!);
    cov.add(b);
    await addon.hessianAccumulate(shared, cap.mlpIn!, alpha);
    if (cov.mode === 'all') return;
    for (let e = 0; e < E; e++) {
      if (!b.routedRows[e].length) continue;
      await addon.hessianAccumulate((own[e] ??= new Float32Array(h * h)), b.input(e, false), alpha);
    }
  }, signal);
  checkFiniteStatistic(shared, `model.layers.${l}.experts.up/gate`);
  own.forEach((h, e) => h && checkFiniteStatistic(h, `model.layers.${l}.experts.${e}.up/gate`));
  return Array.from({ length: E }, (_, e) => (cov.usesAll(e) ? shared : own[e]!));
}

/** Hessians of each expert's down_proj input, from the tokens collectExpertInputHessians settled on. */
async function collectExpertDownHessians(
  model: LoadedModel,
  l: number,
  inputs: LayerInputs,
  cov: CoverageCounter,
  signal?: AbortSignal,
): Promise<Float32Array[]> {
  const { numExperts: E, expertIntermediateSize: I } = model.config.moe!;
  const H = Array.from({ length: E }, () => new Float32Array(I * I));
  await inputs.capture(model, l, 'mlpIn', async (cap) => {
    const b = await ExpertBatch.of(model, l, cap.mlpIn!);
    for (let e = 0; e < E; e++) {
      const x = b.input(e, cov.usesAll(e));
      if (x.length) await addon.hessianAccumulate(H[e], await expertHidden(model, l, e, x), 2 / inputs.nsamples);
    }
  }, signal);
  H.forEach((h, e) => checkFiniteStatistic(h, `model.layers.${l}.experts.${e}.down`));
  return H;
}

/** The solver options of a spec, as both GPTQ solvers (native/cpu/gptq.cpp, native/cuda/gptq.cu) take them. */
export function gptqOptions(spec: QuantSpec, cancel: Int32Array) {
  const { wbits: bits, groupSize, sym, actOrder, staticGroups, damp, blockSize } = spec;
  return { bits, groupSize, sym, actOrder, staticGroups, damp, blockSize, cancel };
}

/** What a GPTQ solver returns, installed as the linear's fake-quantized weight plus its integers (the GPU
 *  solver leaves the weight out when asked: it is scale·(q − zero), see installDequantizedOnAccess). */
export interface GptqResult {
  weight?: Float32Array;
  qweight: Uint8Array;
  scales: Float32Array;
  zeros: Float32Array;
  gIdx?: Int32Array;
  loss: number;
  deadColumns: number;
}

export function installGptq(lin: Linear, spec: QuantSpec, r: GptqResult): void {
  const q = { bits: spec.wbits, groupSize: spec.groupSize, sym: spec.sym, qweight: r.qweight, scales: r.scales, zeros: r.zeros, gIdx: r.gIdx };
  if (r.weight) install(lin, r.weight, q);
  else installDequantizedOnAccess(lin, q);
}

export function gptqSolver(l: number, spec: QuantSpec, cancel: Int32Array): HessianSolver {
  return async ({ lin, kind: name, expert }: LinearRef, H: Float32Array): Promise<LinearReport> => {
    const r: GptqResult = await addon.gptqQuantize(lin.weight, H, { rows: lin.outFeatures, cols: lin.inFeatures, ...gptqOptions(spec, cancel) });
    installGptq(lin, spec, r);
    return { layer: l, name, expert, loss: r.loss, deadColumns: r.deadColumns };
  };
}
