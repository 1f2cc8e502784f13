// Packed low-bit weights for inference: a QuantizedTensor (integers + group scales/zeros) packed into the
// CPU kernels' layout (native/cpu/packed.h), BiLLM binary weights (native/cpu/binary.h), and a model whose
// linears run from packed weights only.
import { layerLinears } from '../load/linears';
import { PACKED_BITS } from '../load/quantized';
import type { LayerWeights, LoadedModel } from '../load/types';
import { addon } from '../native/addon';
import type { BinaryTensor, QuantizedLinear, QuantizedTensor } from './weights';

/** 2/3/4/8-bit weights in the kernels' layout. Buffers are ordinary JS typed arrays (GC-owned). */
export interface PackedWeight {
  kind: 'packed';
  bits: number;
  rows: number;
  cols: number;
  groupSize: number; // -1: one group per row
  data: Uint8Array;
  scales: Float32Array; // [rows rounded up to 4 / 4, ngroups, 4] (native/cpu/packed.h)
  zeros: Float32Array; // [rows rounded up to 4 / 4, ngroups, 4]
  perm?: Int32Array; // act-order: packed column j holds original column perm[j]
}

/** W8A8: int8 weights with per-channel scales, run with per-token int8 activations. */
export interface Int8Weight {
  kind: 'int8';
  rows: number;
  cols: number;
  kpad: number;
  data: Int8Array; // [rows, kpad]
  scales: Float32Array; // [rows]
  wsum: Int32Array; // [rows] Σ_k w
}

/**
 * BiLLM binary weights: the BinaryTensor's own arrays (from a checkpoint, views of the mapped file) and, when
 * the block is a multiple of 16, `packed`, their copy in the SIMD kernels' layout (native/cpu/binary.h).
 */
export interface BinaryWeight extends BinaryTensor {
  kind: 'binary';
  rows: number;
  cols: number;
  packed?: Uint8Array;
}

export type AnyPackedWeight = PackedWeight | Int8Weight | BinaryWeight;

export interface PackedLinear extends QuantizedLinear {
  packed?: AnyPackedWeight;
}

/** Packs a quantized [rows, cols] weight (bits 2, 3, 4 or 8; act-order gIdx supported). */
export function packLinear(q: QuantizedTensor, rows: number, cols: number): PackedWeight {
  return addon.packLinear(q.qweight, q.scales, q.zeros, q.gIdx ?? null, { rows, cols, bits: q.bits, groupSize: q.groupSize }) as PackedWeight;
}

/** The integers, scales and zeros back (original column order), bit for bit. */
export function unpackLinear(p: PackedWeight): { qweight: Uint8Array; scales: Float32Array; zeros: Float32Array; gIdx?: Int32Array } {
  return addon.unpackLinear(p);
}

/**
 * Makes `lin.quantized` a getter that unpacks the integers, scales and zeros from `p` on each access (bit for
 * bit the QuantizedTensor that was packed, gIdx present only for act-order), so a loaded model does not hold
 * its integers twice (1 byte per weight unpacked beside bits/8 packed). Assigning `lin.quantized` replaces
 * the getter with the value.
 */
export function unpackOnAccess(lin: PackedLinear, p: PackedWeight, q: Pick<QuantizedTensor, 'bits' | 'groupSize' | 'sym'>): void {
  const { bits, groupSize, sym } = q;
  Object.defineProperty(lin, 'quantized', {
    configurable: true,
    enumerable: true,
    get: (): QuantizedTensor => ({ bits, groupSize, sym, ...unpackLinear(p) }),
    set: (v: QuantizedTensor | undefined) => Object.defineProperty(lin, 'quantized', { value: v, writable: true, enumerable: true, configurable: true }),
  });
}

/** Whether a QuantizedTensor is a per-channel 8-bit grid with integer zeros (W8A8-packable). */
export function isInt8Packable(q: QuantizedTensor): boolean {
  return q.bits === 8 && q.groupSize <= 0 && !q.gIdx && q.zeros.every((z) => Number.isInteger(z));
}

/** Packs a per-channel 8-bit QuantizedTensor as int8 weights for the W8A8 GEMM. */
export function packInt8(q: QuantizedTensor, rows: number, cols: number): Int8Weight {
  if (!isInt8Packable(q)) throw new Error('packInt8: needs 8-bit per-channel weights with integer zeros');
  return addon.packInt8(q.qweight, q.scales, q.zeros, { rows, cols }) as Int8Weight;
}

export function binaryWeight(b: BinaryTensor, rows: number, cols: number): BinaryWeight {
  const w: BinaryWeight = { kind: 'binary', rows, cols, block: b.block, salient: b.salient, codes: b.codes, scales: b.scales };
  if (b.block % 16 === 0) w.packed = addon.packBinary(w);
  return w;
}

/** y [M, rows] = x [M, cols] · Wᵀ from packed weights. */
export function packedMatmul(x: Float32Array, p: AnyPackedWeight): Promise<Float32Array> {
  if (p.kind === 'binary') return addon.binaryMatmul(x, p);
  return p.kind === 'int8' ? addon.int8Matmul(x, p) : addon.packedMatmul(x, p);
}

export interface AttachOptions {
  /** Use the int8×int8 path for 8-bit per-channel weights when the model runs 8-bit activations
   *  (W8A8: SmoothQuant / naive). Default true. */
  int8?: boolean;
}

/** Whether the packed kernels take q for a [rows, cols] linear (2/3/4/8 bits, whole groups; or W8A8 int8). */
export function isPackable(q: QuantizedTensor, cols: number, w8a8: boolean): boolean {
  if (w8a8 && isInt8Packable(q)) return true;
  return isPackableGrid(q.bits, q.groupSize, cols);
}

/** Whether the packed kernels hold weights of this bit width and group size (cols input features). */
export function isPackableGrid(bits: number, groupSize: number, cols: number): boolean {
  return PACKED_BITS.includes(bits) && (groupSize <= 0 || cols % groupSize === 0);
}

/**
 * Converts the linears of one layer that have a packable `quantized` (or BiLLM's `binary`) into packed form
 * and drops their fp32 weight (the integers stay for export); others keep their weight. Returns the number
 * converted.
 */
export function packLayer(layer: LayerWeights, w8a8: boolean): number {
  let n = 0;
  for (const ref of layerLinears(layer)) {
    const lin = ref.lin as PackedLinear;
    const q = lin.quantized;
    if (lin.binary) lin.packed = binaryWeight(lin.binary, lin.outFeatures, lin.inFeatures);
    else if (!q || !isPackable(q, lin.inFeatures, w8a8)) continue;
    else lin.packed = w8a8 && isInt8Packable(q) ? packInt8(q, lin.outFeatures, lin.inFeatures) : packLinear(q, lin.outFeatures, lin.inFeatures);
    (lin as { weight?: unknown }).weight = undefined;
    n++;
  }
  return n;
}

/**
 * Converts every linear that has `quantized` (or BiLLM's `binary`) into packed form and drops its fp32
 * weight, so the model is never held in fp32 again; the forward (layerForward etc.) then runs the packed
 * kernels. Returns the number of linears converted.
 */
export function attachPacked(model: LoadedModel, opts: AttachOptions = {}): number {
  const w8a8 = (opts.int8 ?? true) && model.quantization?.actBits === 8;
  return model.weights.layers.reduce((n, layer) => n + packLayer(layer, w8a8), 0);
}
