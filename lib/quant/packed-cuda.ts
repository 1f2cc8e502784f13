// Packed low-bit linears on the GPU (native/cuda/qmatmul.cu): a PackedWeight (2/3/4/8 bits, group scales and
// zeros, act-order) or an Int8Weight (W8A8) uploaded once in the device layout, then y = x·Wᵀ for any batch —
// what an inference server embeds to run a quantized linear from its packed bytes.
import { LowbitError } from '../load/errors';
import { resolveDevice } from '../eval/cuda';
import { addon } from '../native/addon';
import type { AnyPackedWeight } from './packed';

/** Activation type the packed kernels round x to (fp32 accumulation either way); int8 weights ignore it. */
export type PackedActDType = 'fp16' | 'bf16';

/**
 * Which packed kernel runs: 'auto' picks per batch (the Hopper wgmma GEMM from `gemmFrom` tokens on where the GPU
 * and build have it, else the mma.sync kernel); 'mma' and 'wgmma' force one (to compare them; 'wgmma' is an error
 * where it does not exist). Numerics: the mma.sync kernel multiplies exact integers and applies scales and zeros in
 * fp32 per group; the wgmma kernel rounds each dequantized weight to the activation type (as a dense fp16/bf16
 * model is rounded), so the two differ by that rounding (relative 2^-11 fp16, 2^-8 bf16 per weight).
 */
export type PackedKernel = 'auto' | 'mma' | 'wgmma';

export interface GpuPackedInfo {
  device: number;
  bits: number;
  /** W8A8: int8 weights, per-token int8 activations (cuBLAS int8 GEMM) */
  int8: boolean;
  rows: number;
  cols: number;
  /** bytes the weights take on the GPU (integers, fp16 scales/zeros, act-order permutation) */
  deviceBytes: number;
  /** K splits of the last packed launch */
  lastSplits: number;
  /** the kernel of the last launch */
  lastKernel: 'mma' | 'wgmma' | 'int8';
  /** whether the last launch's mma.sync kernel converted x itself (no separate conversion launch) */
  lastFusedX: boolean;
  /** whether the wgmma GEMM kernel exists for this GPU in this build (compute capability 9.0, built with sm_90a) */
  wgmma: boolean;
  /** the batch from which 'auto' runs the wgmma kernel */
  gemmFrom: number;
}

export interface GpuPackedBench {
  /** median kernel time of the packed path (x conversion, kernel, split sum), µs */
  oursUs: number;
  /** the main kernel alone (without the x conversion and the sum of K splits), µs */
  kernelUs: number;
  /** the x conversion alone, µs (0 where the kernel converts x itself) */
  prepUs: number;
  /** the sum of K splits alone (0 with one split), µs */
  finishUs: number;
  /** cuBLAS on the same weights dense in fp16 (bf16 with bf16 activations), same x, µs */
  denseUs: number;
  /** device-to-device copy bandwidth measured in the same call (bytes read + written per second), GB/s */
  copyGBs: number;
  oursBytes: number;
  denseBytes: number;
  /** ‖y_ours − y_cuBLAS‖ / ‖y_cuBLAS‖ */
  relErr: number;
  /** whether the mma.sync kernel converted x itself */
  fusedX: boolean;
  splits: number;
  /** whether the packed path ran the wgmma kernel */
  wgmma: boolean;
}

export class GpuPackedLinear {
  private constructor(
    private handle: unknown,
    readonly rows: number,
    readonly cols: number,
  ) {}

  /** Uploads `w` to `device` ('cuda', 'cuda:N' or an index; default cuda:0). */
  static async create(w: AnyPackedWeight, opts: { device?: string | number } = {}): Promise<GpuPackedLinear> {
    if (w.kind === 'binary') throw new LowbitError('UNSUPPORTED', 'BiLLM binary weights run on the CPU only (no CUDA kernel for them yet)');
    const d = resolveDevice(typeof opts.device === 'number' ? `cuda:${opts.device}` : (opts.device ?? 'cuda'));
    if (d.type !== 'cuda') throw new LowbitError('BAD_ARGUMENT', 'GpuPackedLinear needs a CUDA device');
    const handle = await addon.gpuQLinearCreate(w, { device: d.index });
    return new GpuPackedLinear(handle, w.rows, w.cols);
  }

  /**
   * y [M, rows] = x [M, cols] · Wᵀ (x in the original column order). fuseX (default true): the mma.sync kernel
   * converts x to fp16/bf16 itself where that costs it no occupancy, instead of a separate launch before it.
   */
  async matmul(x: Float32Array, opts: { dtype?: PackedActDType; kernel?: PackedKernel; fuseX?: boolean } = {}): Promise<Float32Array> {
    return addon.gpuQLinearMatmul(this.live(), x, { dtype: opts.dtype ?? 'fp16', kernel: opts.kernel ?? 'auto', fuseX: opts.fuseX ?? true });
  }

  /**
   * Times the packed path against cuBLAS dense and the copy bandwidth, in one call (bench/cuda-packed.ts).
   * stages / warpsPerSm override the launch tuning (copy stages; warps per SM the mma.sync kernel's K split aims for)
   * for it.
   */
  async bench(opts: {
    batch: number;
    dtype?: PackedActDType;
    kernel?: PackedKernel;
    iters?: number;
    stages?: number;
    warpsPerSm?: number;
    fuseX?: boolean;
  }): Promise<GpuPackedBench> {
    return addon.gpuQLinearBench(this.live(), { dtype: 'fp16', iters: 50, ...opts });
  }

  info(): GpuPackedInfo {
    return addon.gpuQLinearInfo(this.live());
  }

  free(): void {
    if (this.handle !== undefined) addon.gpuQLinearFree(this.handle);
    this.handle = undefined;
  }

  private live(): unknown {
    if (this.handle === undefined) throw new LowbitError('BAD_ARGUMENT', 'this GpuPackedLinear was freed');
    return this.handle;
  }
}
