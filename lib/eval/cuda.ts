// The CUDA backend from TypeScript: which devices there are, --device parsing, and a GpuModel handle that
// holds a model's weights resident on one GPU (or split by layers across several) for evaluation. scoreSequences (forward.ts) uses the GPU for
// a model attached with toDevice(); everything else keeps running on the CPU.
import { LowbitError } from '../load/errors';
import type { PackedLinear } from '../quant/packed';
import type { LoadedModel } from '../load/types';
import { addon } from '../native/addon';

export interface CudaDevice {
  index: number;
  name: string;
  /** "9.0" for H100/H200 */
  computeCapability: string;
  multiProcessors: number;
  /** bytes */
  totalMemory: number;
}

/** Weight and activation type on the GPU (accumulation is always fp32, the residual stream fp32). */
export type GpuDType = 'bf16' | 'fp16' | 'fp32';
export const GPU_DTYPES: readonly GpuDType[] = ['bf16', 'fp16', 'fp32'];

/**
 * cuda: `index` is the GPU a model goes to; `group` (from "cuda:0,1" or a worker's share of the host) is the set of
 * GPUs it may use when it must be split by layers — without one, any of the host's.
 */
export type CudaSpec = { type: 'cuda'; index: number; group?: number[] };
export type DeviceSpec = { type: 'cpu' } | CudaSpec;

export interface CudaInfo {
  built: boolean;
  runtimeVersion?: number;
  driverVersion?: number;
  /** why there is no device (no driver, no GPU, built without CUDA) */
  error?: string;
}

export function cudaInfo(): CudaInfo {
  return typeof addon.cudaInfo === 'function' ? addon.cudaInfo() : { built: false, error: 'lowbit was built without CUDA' };
}

/** The CUDA devices this process can use; [] without a GPU, without a driver, or in a CPU-only build. */
export function cudaDevices(): CudaDevice[] {
  if (typeof addon.cudaDevices !== 'function') return [];
  try {
    return addon.cudaDevices() as CudaDevice[];
  } catch {
    return [];
  }
}

export function deviceName(d: DeviceSpec): string {
  return d.type === 'cpu' ? 'cpu' : `cuda:${d.group && d.group.length > 1 ? d.group.join(',') : d.index}`;
}

/** "cpu" | "cuda" | "cuda:N" | "cuda:N,M,…" (these GPUs only, the first one first) → a DeviceSpec (syntax only). */
export function parseDevice(s: string): DeviceSpec {
  const v = s.trim().toLowerCase();
  if (v === 'cpu') return { type: 'cpu' };
  const m = /^cuda(?::(\d+(?:,\d+)*))?$/.exec(v);
  if (!m) throw new LowbitError('BAD_ARGUMENT', `--device must be cpu, cuda, cuda:N or cuda:N,M,…, got "${s}"`);
  if (m[1] === undefined) return { type: 'cuda', index: 0 };
  const ids = m[1].split(',').map(Number);
  if (new Set(ids).size !== ids.length) throw new LowbitError('BAD_ARGUMENT', `--device ${s}: a GPU is named twice`);
  return ids.length === 1 ? { type: 'cuda', index: ids[0] } : { type: 'cuda', index: ids[0], group: ids };
}

/** Head sizes the CUDA attention kernels take (native/cuda/attention.cu). */
export function cudaAttentionSupports(headDim: number): boolean {
  return headDim % 32 === 0 && headDim <= 256;
}

/** The device to run on: the requested one, checked; by default cuda:0 when a GPU is there, else cpu. */
export function resolveDevice(requested?: string): DeviceSpec {
  if (requested === undefined || requested === '' || requested === 'auto') {
    return cudaInfo().built && cudaDevices().length > 0 ? { type: 'cuda', index: 0 } : { type: 'cpu' };
  }
  const d = parseDevice(requested);
  if (d.type === 'cpu') return d;
  const info = cudaInfo();
  if (!info.built) {
    throw new LowbitError(
      'UNSUPPORTED',
      `--device ${requested}: lowbit was built without CUDA (build the CUDA addon with \`npm run build:cuda\`, or use --device cpu)`,
    );
  }
  const devs = cudaDevices();
  if (devs.length === 0) {
    throw new LowbitError('BAD_ARGUMENT', `--device ${requested}: no CUDA device found${info.error ? ` (${info.error})` : ''}`);
  }
  const missing = (d.group ?? [d.index]).find((i) => i >= devs.length);
  if (missing !== undefined) {
    throw new LowbitError(
      'BAD_ARGUMENT',
      `--device ${requested}: no CUDA device ${missing} (found ${devs.length}: ${devs.map((x) => `cuda:${x.index} ${x.name}`).join(', ')})`,
    );
  }
  return d;
}

export interface GpuOptions {
  dtype?: GpuDType;
  actFp32?: boolean;
  /** Activation fake-quantization before every linear, per token, to this many bits (default: the model's
   *  quantization.actBits; 0: none), as the CPU forward applies it. */
  actBits?: number;
  /**
   * Split the layers across these GPUs (a pipeline: the first embeds, the last applies the head; hidden
   * states pass between them through host memory). By default one GPU, or (toDevice) every GPU of the device's
   * group — of the host without one — when the model does not fit on the requested one.
   */
  devices?: number[];
}

export interface GpuModelInfo {
  /** the first stage's GPU */
  device: number;
  /** 'single': the whole model on one GPU; 'layer-split': runs of layers on several */
  mode: 'single' | 'layer-split';
  devices: number[];
  /** layers held by each of `devices` */
  layersPerDevice: number[];
  dtype: GpuDType;
  actFp32: boolean;
  actBits: number;
  weightBytes: number;
  /** device time of the last score() call (CUDA events, summed over the stages), ms */
  lastGpuMs: number;
}

interface Stage {
  handle: unknown;
  device: number;
  layers: number;
}

/** Runs of layers for n devices, as even as the layer count allows (earlier devices take the remainder). */
export function splitLayers(numLayers: number, n: number): number[] {
  if (n < 1 || n > numLayers) throw new LowbitError('BAD_ARGUMENT', `cannot split ${numLayers} layers across ${n} GPUs`);
  return Array.from({ length: n }, (_, i) => Math.floor(numLayers / n) + (i < numLayers % n ? 1 : 0));
}

/** Bytes the weights take on a GPU as `dtype` (linears, embedding, untied head). */
export function gpuWeightBytes(model: LoadedModel, dtype: GpuDType): number {
  const c = model.config;
  const perLayer = c.hiddenSize * (c.numHeads + 2 * c.numKvHeads) * c.headDim + c.numHeads * c.headDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize;
  const vocab = c.vocabSize * c.hiddenSize * (model.weights.lmHead === model.weights.embed ? 1 : 2);
  return (c.numLayers * perLayer + vocab) * (dtype === 'fp32' ? 4 : 2);
}

/**
 * A model's weights resident on one GPU, or split by layers across several. Upload once, score many
 * batches; free() (or GC) releases it.
 */
export class GpuModel {
  private constructor(
    private stages: Stage[],
    private hiddenSize: number,
    /** the activation bits the forward fake-quantizes to (0: none) */
    readonly actBits: number,
  ) {}

  /**
   * dtype: the weights' type on the GPU. By default activations use it too (bf16/fp16 tensor cores all the
   * way, like a framework's bf16 run); actFp32 keeps activations fp32 with 16-bit weights (each GEMM input
   * split into two 16-bit halves, fp32 attention): within ~1e-4 of the fp32 forward, slower.
   */
  static async create(model: LoadedModel, opts: GpuOptions & { device?: number } = {}): Promise<GpuModel> {
    const dtype = opts.dtype ?? 'bf16';
    if (!GPU_DTYPES.includes(dtype)) throw new LowbitError('BAD_ARGUMENT', `dtype must be one of ${GPU_DTYPES.join(', ')}, got "${dtype}"`);
    if (typeof addon.gpuModelCreate !== 'function') throw new LowbitError('UNSUPPORTED', 'lowbit was built without CUDA');
    if (model.config.moe) throw new LowbitError('UNSUPPORTED', `${model.dir}: the CUDA backend has no Qwen3-MoE (sparse) layers; evaluate it with --device cpu`);
    const bare = firstLinearWithoutWeight(model);
    if (bare) throw new LowbitError('UNSUPPORTED', `${model.dir}: ${bare} has neither a dense nor a packed weight to upload; evaluate it with --device cpu`);
    const w = model.weights;
    const actBits = opts.actBits ?? model.quantization?.actBits ?? 0;
    const devices = opts.devices ?? [opts.device ?? 0];
    const counts = splitLayers(w.layers.length, devices.length);
    const stages: Stage[] = [];
    try {
      let l0 = 0;
      for (const [i, device] of devices.entries()) {
        const layers = w.layers.slice(l0, l0 + counts[i]);
        l0 += counts[i];
        const handle = await addon.gpuModelCreate(
          { cfg: model.config, layers, embed: w.embed, lmHead: w.lmHead, finalNorm: w.finalNorm },
          { device, dtype, actFp32: opts.actFp32 ?? false, actBits, first: i === 0, last: i === devices.length - 1 },
        );
        stages.push({ handle, device, layers: counts[i] });
      }
    } catch (e) {
      for (const s of stages) addon.gpuModelFree(s.handle);
      throw e;
    }
    return new GpuModel(stages, model.config.hiddenSize, actBits);
  }

  /** Per-position next-token NLL of ids [nseq, seqLen]; the last position of each sequence is 0. */
  async score(ids: Int32Array, seqLen: number): Promise<Float64Array> {
    if (this.stages.length === 1) return addon.gpuScore(this.stages[0].handle, ids, seqLen);
    // The hidden states leaving each run of layers enter the next one's (fp32, through host memory).
    const hidden = new Float32Array(ids.length * this.hiddenSize);
    for (const s of this.stages.slice(0, -1)) await addon.gpuScore(s.handle, ids, seqLen, hidden);
    return addon.gpuScore(this.stages[this.stages.length - 1].handle, ids, seqLen, hidden);
  }

  /**
   * The NLL of chosen (row, target) pairs of ids [nseq, seqLen] (row = s·seqLen + t; a row may come with several
   * targets) and whether each target is its row's greedy token (the first index of the largest logit, as
   * torch.argmax): the LM head runs on those rows only, as loglikelihood requests need.
   */
  async scoreRows(ids: Int32Array, seqLen: number, rows: Int32Array, targets: Int32Array): Promise<{ nll: Float64Array; greedy: Uint8Array }> {
    const select = { rows, targets };
    const last = this.stages[this.stages.length - 1];
    if (this.stages.length === 1) return addon.gpuScore(last.handle, ids, seqLen, undefined, select);
    const hidden = new Float32Array(ids.length * this.hiddenSize);
    for (const s of this.stages.slice(0, -1)) await addon.gpuScore(s.handle, ids, seqLen, hidden);
    return addon.gpuScore(last.handle, ids, seqLen, hidden, select);
  }

  /**
   * Tokens per score() call: GPU_BATCH_TOKENS (enough rows for the GEMMs to run at full rate), or what the device
   * memory free now holds next to the weights on every stage; at least 1.
   */
  batchTokens(cap = GPU_BATCH_TOKENS): number {
    return Math.max(1, Math.min(...this.stages.map((s) => addon.gpuBatchTokens(s.handle, cap) as number)));
  }

  info(): GpuModelInfo {
    const parts = this.stages.map((s) => addon.gpuModelInfo(s.handle) as Omit<GpuModelInfo, 'mode' | 'devices' | 'layersPerDevice'>);
    return {
      ...parts[0],
      mode: this.stages.length > 1 ? 'layer-split' : 'single',
      devices: this.stages.map((s) => s.device),
      layersPerDevice: this.stages.map((s) => s.layers),
      weightBytes: parts.reduce((a, p) => a + p.weightBytes, 0),
      lastGpuMs: parts.reduce((a, p) => a + p.lastGpuMs, 0),
    };
  }

  free(): void {
    for (const s of this.stages) addon.gpuModelFree(s.handle);
  }
}

/**
 * The name of the first linear the CUDA backend cannot upload (one with neither a dense nor a packed weight), if
 * any. Dense weights upload as they are; packed 2/3/4/8-bit, BiLLM binary and W8A8 int8 ones are expanded to the
 * GPU's dtype a run of rows at a time during the upload (native/cuda/napi_host.h), the host keeping only the packed
 * copy.
 */
export function firstLinearWithoutWeight(model: LoadedModel): string | undefined {
  for (const [l, layer] of model.weights.layers.entries()) {
    for (const [n, lin] of Object.entries(layer.linears) as [string, PackedLinear | undefined][]) {
      if (!lin || lin.weight || lin.packed) continue;
      return `model.layers.${l}.${n}`;
    }
  }
  return undefined;
}

/**
 * The GPUs to split a model over when its weights (plus 2 GiB for activations) do not fit on `device`: `device`
 * first, then the others of `allowed` (default: every GPU of the host); undefined when it fits or there is no other.
 */
export function planSplit(weightBytes: number, devs: CudaDevice[], device: number, allowed?: number[]): number[] | undefined {
  const here = devs.find((x) => x.index === device);
  const pool = devs.map((x) => x.index).filter((i) => !allowed || allowed.includes(i));
  if (!here || pool.length < 2 || weightBytes + 2 * 2 ** 30 <= here.totalMemory) return undefined;
  return [device, ...pool.filter((i) => i !== device)];
}

/** Tokens per forward call on a GPU by default: 8 windows of 2048. */
export const GPU_BATCH_TOKENS = 16384;

const attached = new WeakMap<LoadedModel, GpuModel>();

/** The GPU copy of this model (toDevice), if any. */
export function gpuOf(model: LoadedModel): GpuModel | undefined {
  return attached.get(model);
}

/**
 * The GPU copy that runs a forward of this model with activations fake-quantized to actBits (default: the model's
 * own), if any: the GPU forward applies the bits it was created with, so any other request runs on the CPU.
 */
export function gpuFor(model: LoadedModel, actBits?: number): GpuModel | undefined {
  const gpu = attached.get(model);
  return gpu && gpu.actBits === (actBits ?? model.quantization?.actBits ?? 0) ? gpu : undefined;
}

/**
 * Puts the model on a device for evaluation: cuda uploads every weight once (call it again after changing
 * the weights, e.g. after quantizing; packed weights are expanded on the way, see firstLinearWithoutWeight); cpu drops
 * any GPU copy. Returns the GPU model, if any.
 */
export async function toDevice(
  model: LoadedModel,
  device: DeviceSpec | string,
  opts: GpuOptions = {},
): Promise<GpuModel | undefined> {
  const d = typeof device === 'string' ? resolveDevice(device) : device;
  attached.get(model)?.free();
  attached.delete(model);
  if (d.type === 'cpu') return undefined;
  const split = () => planSplit(gpuWeightBytes(model, opts.dtype ?? 'bf16'), cudaDevices(), d.index, d.group);
  const gpu = await GpuModel.create(model, { ...opts, device: d.index, devices: opts.devices ?? split()?.slice(0, model.config.numLayers) });
  attached.set(model, gpu);
  return gpu;
}
