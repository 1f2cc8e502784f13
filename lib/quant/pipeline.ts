// The layer-by-layer quantization pipeline: calibration tokens → embeddings → for each decoder layer,
// the method's statistics from that layer's inputs → quantize → push the inputs through the layer.
import { LayerInputs } from '../calibrate/activations';
import type { CalibrationSet } from '../calibrate/calibration';
import { cudaAttentionSupports, DeviceSpec, deviceName, resolveDevice } from '../eval/cuda';
import { throwIfAborted } from '../eval/forward';
import { LowbitError } from '../load/errors';
import type { ExpertCoverage, MoeCalib } from '../calibrate/experts';
import { layerLinears } from '../load/linears';
import { scanNonFinite } from '../load/model';
import type { LoadedModel } from '../load/types';
import { AwqGroupReport, awqLayer } from './awq';
import { billmSolver } from './billm';
import { gptqSolver, hessianLayer, LinearReport } from './gptq';
import { GPU_BILLM_MAX_BLOCK, GpuCalibration } from './gpu-calibration';
import { rtnLinear } from './rtn';
import { foldSmoothing, quantizeLayerWeightsSym, smoothLayer } from './smoothquant';
import { QuantSpec, specName, validateSpec } from './spec';
import { packLayer } from './packed';
import { roundLayerScales } from '../export/checkpoint';
import { adviseWeight, MemoryOptions } from '../eval/stream';

export interface QuantizeProgress {
  layer: number;
  layers: number;
  stage: string;
}

export interface QuantizeOptions {
  calibration?: CalibrationSet;
  signal?: AbortSignal;
  onProgress?: (p: QuantizeProgress) => void;
  /** Where GPTQ, AWQ, BiLLM and SmoothQuant's statistics run: cpu, cuda or cuda:N (default: cuda when a GPU and a
   *  CUDA build are there, else cpu). RTN runs on the CPU. */
  device?: DeviceSpec | string;
  /** Round each finished layer's scales to fp16, as GPTQ/AWQ checkpoints store them, so that the model in
   *  memory is exactly what the checkpoint will load as. */
  f16Scales?: boolean;
  /** Called once layer l is quantized, its calibration outputs propagated and its linears packed
   *  (e.g. to write the layer out and release it). */
  onLayer?: (l: number) => void | Promise<void>;
  /** Bounds the calibration activations (batch size, spill to disk), as evaluation's streaming does. */
  memory?: Pick<MemoryOptions, 'maxMemory' | 'spillDir'>;
}

export interface QuantizeReport {
  spec: QuantSpec;
  name: string;
  seconds: number;
  calibration?: string;
  linears: LinearReport[];
  /** AWQ: the scale ratio chosen for each group of each layer, and its block output MSE. */
  awqGroups?: AwqGroupReport[];
  /** BiLLM: weighted mean bits per weight over all quantized linears. */
  avgBits?: number;
  /** where the quantization ran ("cpu", "cuda:0") */
  device: string;
  /** GPU runs: device memory in use at the fullest point, beyond what was in use before (bytes) */
  gpuPeakBytes?: number;
  /** MoE models with a calibrated method: per sparse layer, the tokens routed to each expert and the
   *  tokens its statistics came from. */
  experts?: { mode: MoeCalib; layers: ExpertCoverage[] };
  /** Where the calibration activations waited between layers (CPU calibration only). */
  activations?: 'memory' | 'disk';
}

/** Quantizing NaN/Inf weights yields garbage that looks like a model; checked a layer at a time as the pass reaches it. */
function refuseNonFinite(model: LoadedModel, prefix: string): void {
  const bad = scanNonFinite(model, prefix);
  if (bad.length) {
    const list = bad.map((b) => `${b.name} (${b.count})`).join(', ');
    throw new LowbitError('BAD_DATA', `cannot quantize ${model.dir}: non-finite values (NaN/Inf) in ${list}`);
  }
}

export function needsCalibration(spec: QuantSpec): boolean {
  return spec.method === 'gptq' || spec.method === 'awq' || spec.method === 'billm' || (spec.method === 'smoothquant' && spec.alpha > 0);
}

/** Checks a spec against a model's shapes before any work starts. */
export function checkSpecForModel(model: LoadedModel, spec: QuantSpec): void {
  validateSpec(spec);
  if (model.quantization) {
    throw new LowbitError('BAD_ARGUMENT', `${model.dir} is already quantized (${model.quantization.spec?.method ?? 'unknown method'}); quantize the full-precision checkpoint`);
  }
  if (spec.groupSize <= 0) return;
  model.weights.layers.forEach((layer, l) => {
    for (const { lin, kind, expert } of layerLinears(layer)) {
      if (lin.inFeatures % spec.groupSize) {
        const name = `model.layers.${l}.${expert === undefined ? '' : `experts.${expert}.`}${kind}`;
        throw new LowbitError(
          'BAD_ARGUMENT',
          `--group-size ${spec.groupSize} does not divide in_features ${lin.inFeatures} of ${name} (use a divisor or perchannel)`,
        );
      }
    }
  });
}

/** The methods whose calibration runs on the GPU (GPTQ, AWQ, BiLLM; SmoothQuant's statistics); RTN stays on the CPU. */
function onGpuWhenAsked(spec: QuantSpec): boolean {
  return spec.method === 'gptq' || spec.method === 'awq' || spec.method === 'billm' || (spec.method === 'smoothquant' && spec.alpha > 0);
}

/** The GPU calibration session has no sparse (MoE) layers: those models quantize on the CPU (the report's device
 *  says so). Nor does an automatic choice send it a head size its attention kernels lack, or a BiLLM block wider
 *  than its kernels take; `--device cuda` does, and gets the kernel's error. */
function calibrationDevice(model: LoadedModel, spec: QuantSpec, requested: QuantizeOptions['device']): DeviceSpec {
  if (model.config.moe) return { type: 'cpu' };
  if (typeof requested === 'object') return requested;
  const d = resolveDevice(requested);
  const auto = requested === undefined || requested === '' || requested === 'auto';
  const unsupported = !cudaAttentionSupports(model.config.headDim) || (spec.method === 'billm' && spec.groupSize > GPU_BILLM_MAX_BLOCK);
  return auto && unsupported ? { type: 'cpu' } : d;
}

/**
 * Quantizes the model in place, a layer at a time. Once a layer is done its linears hold the integers a
 * checkpoint needs and run from the packed kernels (`lin.packed`, no fp32 weight), so the model is never
 * held in fp32 as a whole; widths the kernels lack (1, 5, 6, 7 bits) and BiLLM keep an fp32 weight. On abort it throws an AbortError and the in-memory model is partly quantized: discard it.
 */
export async function quantize(model: LoadedModel, spec: QuantSpec, opts: QuantizeOptions = {}): Promise<QuantizeReport> {
  checkSpecForModel(model, spec);
  const t0 = performance.now();
  const { signal } = opts;
  const layers = model.config.numLayers;
  const cancel = new Int32Array(1);
  const onAbort = () => (cancel[0] = 1);
  signal?.addEventListener('abort', onAbort);
  const device = onGpuWhenAsked(spec) ? calibrationDevice(model, spec, opts.device) : ({ type: 'cpu' } as const);
  const linears: LinearReport[] = [];
  let gpu: GpuCalibration | undefined;
  let gpuPeakBytes: number | undefined;
  let moving: Promise<void> | undefined; // the GPU's propagation of the last layer, still running
  const settle = async (): Promise<void> => {
    const m = moving;
    moving = undefined;
    await m;
  };
  const coverage: ExpertCoverage[] = [];
  const awqGroups: AwqGroupReport[] = [];
  const covered = (c: ExpertCoverage | undefined) => c && coverage.push(c);
  let bitsWeighted = 0;
  let weights = 0;
  let inputs: LayerInputs | undefined;
  try {
    refuseNonFinite(model, 'model.embed_tokens.');
    if (needsCalibration(spec)) {
      const calib = opts.calibration;
      if (!calib) throw new LowbitError('BAD_ARGUMENT', `${spec.method} needs calibration data`);
      if (calib.seqLen !== spec.calibSeqLen || calib.nsamples !== spec.nsamples) {
        throw new LowbitError('BAD_ARGUMENT', `calibration set is ${calib.nsamples}×${calib.seqLen}, the spec asks for ${spec.nsamples}×${spec.calibSeqLen}`);
      }
      opts.onProgress?.({ layer: 0, layers, stage: 'embed calibration' });
      if (device.type === 'cuda') gpu = await GpuCalibration.create(model, calib, device.index);
      else inputs = await LayerInputs.embed(model, calib, opts.memory);
    }
    for (let l = 0; l < layers; l++) {
      throwIfAborted(signal);
      refuseNonFinite(model, `model.layers.${l}.`);
      await settle();
      const stage = (s: string) => opts.onProgress?.({ layer: l, layers, stage: s });
      const layer = model.weights.layers[l];
      const mapped = layerLinears(layer).map((r) => r.lin.weight);
      switch (spec.method) {
        case 'rtn':
          stage('rtn');
          for (const { lin } of layerLinears(layer)) await rtnLinear(lin, spec);
          break;
        case 'gptq':
        case 'billm': {
          let reports: LinearReport[];
          if (gpu) {
            reports = await gpu.layer(l, spec, cancel, signal, stage);
            stage('propagate');
            // The GPU moves the calibration states on while the host packs (and writes) this layer and checks
            // the next one; settle() waits for it before the GPU is used again.
            moving = gpu.propagate(cancel);
            moving.catch(() => undefined); // a failure surfaces at settle(), not as an unhandled rejection
          } else {
            const solver = spec.method === 'gptq' ? gptqSolver(l, spec, cancel) : billmSolver(l, spec, cancel);
            const r = await hessianLayer(model, l, inputs!, spec, solver, signal, stage);
            reports = r.linears;
            covered(r.coverage);
            stage('propagate');
            await inputs!.propagate(model, l, signal);
          }
          linears.push(...reports);
          for (const r of reports) {
            if (r.avgBits === undefined) continue;
            const { lin } = layerLinears(layer).find((x) => x.kind === r.name && x.expert === r.expert)!;
            bitsWeighted += r.avgBits * lin.outFeatures * lin.inFeatures;
            weights += lin.outFeatures * lin.inFeatures;
          }
          break;
        }
        case 'awq': {
          // On the GPU the layer's capture also moves the calibration states on (from the unmodified layer).
          const r = gpu ? { groups: await gpu.awqLayer(l, spec, cancel, stage) } : await awqLayer(model, l, inputs!, spec, cancel, signal, stage);
          awqGroups.push(...r.groups);
          covered(r.coverage);
          break;
        }
        case 'smoothquant':
        case 'naive':
          if (gpu) {
            stage('smooth');
            const { attnMax, mlpMax } = await gpu.absmaxLayer(l, cancel);
            foldSmoothing(model, l, attnMax, mlpMax, spec.alpha);
          } else if (inputs) {
            stage('smooth');
            covered(await smoothLayer(model, l, inputs, spec.alpha, signal));
          }
          stage('quantize');
          await quantizeLayerWeightsSym(layer, spec);
          break;
      }
      if (opts.f16Scales) roundLayerScales(layer);
      packLayer(layer, spec.abits === 8);
      // The layer's checkpoint pages are not read again: hand them back rather than keep the model resident.
      for (const w of mapped) adviseWeight(w, 'dontneed');
      await opts.onLayer?.(l);
    }
    await settle();
    gpuPeakBytes = gpu?.info().peakBytes;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await moving?.catch(() => undefined); // never free the session under a running propagation
    gpu?.free();
    inputs?.close();
  }
  model.quantization = { spec, actBits: spec.abits };
  return {
    spec,
    name: specName(spec),
    seconds: (performance.now() - t0) / 1000,
    calibration: needsCalibration(spec) ? opts.calibration?.source : undefined,
    linears,
    awqGroups: spec.method === 'awq' ? awqGroups : undefined,
    avgBits: weights ? bitsWeighted / weights : undefined,
    device: deviceName(device),
    gpuPeakBytes,
    activations: inputs && (inputs.spilled ? 'disk' : 'memory'),
    experts: coverage.length ? { mode: spec.moeCalib ?? 'all', layers: coverage } : undefined,
  };
}
