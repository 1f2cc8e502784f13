// The CUDA backend from TypeScript: which devices there are, --device parsing, and a GpuModel handle that
// holds a model's weights resident on one GPU for evaluation. scoreSequences (forward.ts) uses the GPU for
// a model attached with toDevice(); everything else keeps running on the CPU.
import { dequantize } from '../export/pack';
import { LowbitError } from '../load/errors';
import { layerLinears } from '../load/linears';
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

export type DeviceSpec = { type: 'cpu' } | { type: 'cuda'; index: number };

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
  return d.type === 'cpu' ? 'cpu' : `cuda:${d.index}`;
}

/** "cpu" | "cuda" | "cuda:N" → a DeviceSpec (syntax only). */
export function parseDevice(s: string): DeviceSpec {
  const v = s.trim().toLowerCase();
  if (v === 'cpu') return { type: 'cpu' };
  const m = /^cuda(?::(\d+))?$/.exec(v);
  if (!m) throw new LowbitError('BAD_ARGUMENT', `--device must be cpu, cuda or cuda:N, got "${s}"`);
  return { type: 'cuda', index: m[1] === undefined ? 0 : Number(m[1]) };
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
  if (d.index >= devs.length) {
    throw new LowbitError(
      'BAD_ARGUMENT',
      `--device ${requested}: no CUDA device ${d.index} (found ${devs.length}: ${devs.map((x) => `cuda:${x.index} ${x.name}`).join(', ')})`,
    );
  }
  return d;
}

export interface GpuOptions {
  dtype?: GpuDType;
  actFp32?: boolean;
}

export interface GpuModelInfo {
  device: number;
  dtype: GpuDType;
  actFp32: boolean;
  weightBytes: number;
  /** device time of the last score() call (CUDA events), ms */
  lastGpuMs: number;
}

/** A model's weights resident on one GPU. Upload once, score many batches; free() (or GC) releases it. */
export class GpuModel {
  private constructor(private handle: unknown) {}

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
    const packed = firstPackedLinear(model);
    if (packed) throw new LowbitError('UNSUPPORTED', `${model.dir}: ${packed} holds packed low-bit weights; the CUDA backend runs dense weights only, evaluate it with --device cpu`);
    const w = model.weights;
    const handle = await addon.gpuModelCreate(
      { cfg: model.config, layers: w.layers, embed: w.embed, lmHead: w.lmHead, finalNorm: w.finalNorm },
      { device: opts.device ?? 0, dtype, actFp32: opts.actFp32 ?? false },
    );
    return new GpuModel(handle);
  }

  /** Per-position next-token NLL of ids [nseq, seqLen]; the last position of each sequence is 0. */
  async score(ids: Int32Array, seqLen: number): Promise<Float64Array> {
    return addon.gpuScore(this.handle, ids, seqLen);
  }

  info(): GpuModelInfo {
    return addon.gpuModelInfo(this.handle);
  }

  free(): void {
    addon.gpuModelFree(this.handle);
  }
}

/**
 * The CUDA backend runs dense weights: a model quantized in memory (packed, its integers kept) gets back the
 * fp32 weights the quantizer computed, for the upload. BiLLM's binary linears stay packed (CPU only).
 */
export function densifyForGpu(model: LoadedModel): void {
  for (const layer of model.weights.layers) {
    for (const { lin } of layerLinears(layer) as { lin: PackedLinear }[]) {
      if (!lin.packed || !lin.quantized) continue;
      lin.weight = dequantize(lin.quantized, lin.inFeatures);
      lin.packed = undefined;
    }
  }
}

/** The first linear without a dense weight (a loaded GPTQ/AWQ/lowbit checkpoint, or a compact quantized model). */
export function firstPackedLinear(model: LoadedModel): string | undefined {
  for (const [l, layer] of model.weights.layers.entries()) {
    for (const [n, lin] of Object.entries(layer.linears)) if (lin && !lin.weight) return `model.layers.${l}.${n}`;
  }
  return undefined;
}

const attached = new WeakMap<LoadedModel, GpuModel>();

/** The GPU copy scoreSequences uses for this model, if any. */
export function gpuOf(model: LoadedModel): GpuModel | undefined {
  return attached.get(model);
}

/**
 * Puts the model on a device for evaluation: cuda uploads every weight once (call it again after changing
 * the weights, e.g. after quantizing; a model quantized in memory gets its dense weights back for the upload,
 * see densifyForGpu); cpu drops any GPU copy. Returns the GPU model, if any.
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
  densifyForGpu(model);
  const gpu = await GpuModel.create(model, { ...opts, device: d.index });
  attached.set(model, gpu);
  return gpu;
}
