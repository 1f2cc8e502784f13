// Layer-by-layer calibration on a CUDA device: the calibration windows' hidden states stay on the GPU and each
// layer's weights go up one layer at a time. GPTQ and BiLLM accumulate and solve their Hessians there with the CPU
// path's schedule (true-sequential subsets) and semantics; SmoothQuant takes its activation maxima on the way through
// the full-precision layer; AWQ searches its scales and clip ranges and quantizes there (awq.cu). Results come
// back into the same structures as the CPU path's.
import { nonFiniteActivations, nonFiniteInputs } from '../calibrate/activations';
import { LowbitError } from '../load/errors';
import { dequantize } from '../export/pack';
import type { CalibrationSet } from '../calibrate/calibration';
import { throwIfAborted } from '../eval/forward';
import { LINEAR_NAMES, LinearName, LoadedModel } from '../load/types';
import { addon } from '../native/addon';
import { AwqGroupReport, CLIP_TOKENS, GRID } from './awq';
import { BillmResult, billmOptions, installBillm } from './billm';
import { ALL_AT_ONCE, GptqResult, gptqOptions, INPUT_OF, installGptq, LinearReport, SEQUENTIAL_SUBSETS } from './gptq';
import { isPackableGrid } from './packed';
import type { QuantSpec } from './spec';
import { install, installDequantizedOnAccess } from './weights';

/** The widest BiLLM block (group size) the GPU kernels take (8 columns per lane of a warp). */
export const GPU_BILLM_MAX_BLOCK = 256;

export interface GpuQuantInfo {
  device: number;
  batchSeqs: number;
  /** device memory in use at the fullest sampled point of the run, minus what was in use at its start */
  peakBytes: number;
}

interface GpuAwqResult {
  linears?: Record<LinearName, { qweight: Uint8Array; scales: Float32Array; zeros: Float32Array; bias?: Float32Array }>;
  inputNorm?: Float32Array;
  postAttnNorm?: Float32Array;
  groups?: { label: string; ratio: number; loss: number }[];
  /** the layer's output is not finite from this element of [nseq·seqLen, hidden] on (nothing else comes back) */
  nonFinite?: { index: number; value: number };
}

export class GpuCalibration {
  private constructor(
    private handle: unknown,
    private readonly model: LoadedModel,
    private readonly seqLen: number,
  ) {}

  /** Embeds the calibration windows on device `device` (they stay there until free()). */
  static async create(model: LoadedModel, calib: CalibrationSet, device: number): Promise<GpuCalibration> {
    const w = model.weights;
    const handle = await addon.gpuQuantCreate({ cfg: model.config, embed: w.embed }, calib.ids, calib.seqLen, device);
    return new GpuCalibration(handle, model, calib.seqLen);
  }

  /** GPTQ or BiLLM of layer l in place (its linears get the integers or binary codes and the dequantized
   *  weights); propagate() then moves the calibration states through the quantized layer. */
  async layer(l: number, spec: QuantSpec, cancel: Int32Array, signal?: AbortSignal, onStage?: (s: string) => void): Promise<LinearReport[]> {
    const layer = this.model.weights.layers[l];
    onStage?.('upload');
    await addon.gpuQuantLoadLayer(this.handle, layer);
    const reports: LinearReport[] = [];
    for (const subset of spec.trueSequential ? SEQUENTIAL_SUBSETS : ALL_AT_ONCE) {
      throwIfAborted(signal);
      onStage?.(`hessian ${subset.join(',')}`);
      const bad: string[] = await addon.gpuQuantHessians(this.handle, [...new Set(subset.map((n) => INPUT_OF[n]))], cancel);
      // The CPU path's check and message (gptq.ts collectHessians), in the same order.
      for (const k of new Set(subset.map((n) => INPUT_OF[n]))) {
        if (bad.includes(k)) throw new LowbitError('BAD_DATA', nonFiniteInputs(`model.layers.${l}.${subset.filter((n) => INPUT_OF[n] === k).join('/')}`));
      }
      for (const name of subset) {
        throwIfAborted(signal);
        onStage?.(`solve ${name}`);
        reports.push(await (spec.method === 'billm' ? this.billm(l, name, spec, cancel) : this.solve(l, name, spec, cancel)));
      }
    }
    return reports;
  }

  /** Moves the calibration states through the quantized layer (on the GPU; the host is free meanwhile). */
  propagate(cancel: Int32Array): Promise<void> {
    return addon.gpuQuantPropagate(this.handle, cancel);
  }

  /** AWQ of layer l (awq.ts's semantics): the device captures the layer's inputs while moving the calibration
   *  states through it unmodified, searches and folds the scales, searches the clip ranges and quantizes on the
   *  grid of awq.ts's final rtnQuantize (grid 'awq'), with the same arithmetic; the integers, norms and biases
   *  come back. */
  async awqLayer(l: number, spec: QuantSpec, cancel: Int32Array, onStage?: (s: string) => void): Promise<AwqGroupReport[]> {
    const layer = this.model.weights.layers[l];
    onStage?.('upload');
    await addon.gpuQuantLoadLayer(this.handle, layer);
    onStage?.('awq search');
    const r: GpuAwqResult = await addon.gpuQuantAwq(this.handle, { bits: spec.wbits, groupSize: spec.groupSize, grid: GRID, clipTokens: CLIP_TOKENS, cancel });
    if (r.nonFinite) {
      throw nonFiniteActivations(`the output of model.layers.${l} for`, r.nonFinite.index, r.nonFinite.value, this.seqLen, this.model.config.hiddenSize);
    }
    layer.inputNorm = r.inputNorm!;
    layer.postAttnNorm = r.postAttnNorm!;
    for (const name of LINEAR_NAMES) {
      const lin = layer.linears[name]!;
      const o = r.linears![name];
      if (o.bias) lin.bias = o.bias;
      const q = { bits: spec.wbits, groupSize: spec.groupSize, sym: false, qweight: o.qweight, scales: o.scales, zeros: o.zeros };
      // A packable result is packed with the layer and needs no fp32 copy (recomputed on access, bit for bit).
      if (isPackableGrid(spec.wbits, spec.groupSize, lin.inFeatures)) installDequantizedOnAccess(lin, q);
      else install(lin, dequantize(q, lin.inFeatures), q);
    }
    return r.groups!.map((g) => ({ layer: l, ...g }));
  }

  /** SmoothQuant's statistics of layer l: the states go through the layer as it is (full precision) and the
   *  per-channel max |x| of its attention and MLP inputs (after their norms) come back. */
  async absmaxLayer(l: number, cancel: Int32Array): Promise<{ attnMax: Float32Array; mlpMax: Float32Array }> {
    await addon.gpuQuantLoadLayer(this.handle, this.model.weights.layers[l]);
    return addon.gpuQuantAbsmaxPropagate(this.handle, cancel);
  }

  private async solve(l: number, name: LinearName, spec: QuantSpec, cancel: Int32Array): Promise<LinearReport> {
    // Dense layers only: pipeline.ts keeps Qwen3-MoE models on the CPU path.
    const lin = this.model.weights.layers[l].linears[name]!;
    // A packable result is packed with the layer and its fp32 weight dropped: leave it on the device (its
    // values are scale·(q − zero), recomputed on access) instead of copying rows×cols floats back.
    const weight = !isPackableGrid(spec.wbits, spec.groupSize, lin.inFeatures);
    const r: GptqResult = await addon.gpuQuantGptq(this.handle, name, { ...gptqOptions(spec, cancel), weight });
    installGptq(lin, spec, r);
    return { layer: l, name, loss: r.loss, deadColumns: r.deadColumns };
  }

  private async billm(l: number, name: LinearName, spec: QuantSpec, cancel: Int32Array): Promise<LinearReport> {
    const lin = this.model.weights.layers[l].linears[name]!;
    const r: BillmResult = await addon.gpuQuantBillm(this.handle, name, billmOptions(spec, cancel));
    return { layer: l, name, avgBits: installBillm(lin, r), loss: r.loss, deadColumns: r.deadColumns };
  }

  info(): GpuQuantInfo {
    return addon.gpuQuantInfo(this.handle);
  }

  free(): void {
    addon.gpuQuantFree(this.handle);
  }
}
