// BiLLM 1-bit post-training quantization (Huang et al. 2024): Hessian-salient columns get a second-order
// residual binarization, the rest a concentrated/sparse split binarization, with GPTQ-style block error
// feedback. The native core is native/cpu/billm.cpp (its header comment lists where it departs from the
// reference code and why).
import type { LinearRef } from '../load/linears';
import type { Linear } from '../load/types';
import { addon, Weight } from '../native/addon';
import type { HessianSolver, LinearReport } from './gptq';
import type { QuantSpec } from './spec';
import { BinaryTensor, install } from './weights';

export interface BillmOptions {
  rows: number;
  cols: number;
  /** Columns per block (salient selection, split search and error feedback are per block). Default 128. */
  blockSize?: number;
  /** Dampening as a fraction of the mean Hessian diagonal. Default 0.01. */
  damp?: number;
  /** Search the number of salient columns per block (reference: 1..maxSalient-1). Default true;
   *  false uses `fixedSalient` columns per block (0 by default: split binarization only). */
  saliencySearch?: boolean;
  fixedSalient?: number;
  /** The reference's up_lim: salient counts 1..maxSalient-1 are searched. Default 50. */
  maxSalient?: number;
  /** 'hessian' (s_j = Σ w²/Hinv_jj², default) or 'magnitude' (Σ|w|). */
  salientMetric?: 'hessian' | 'magnitude';
  /** Run both searches on W²/Hinv_jj² as the reference's hessian path does (default: on the weights). */
  searchOnSaliency?: boolean;
  /** GPTQ-style error feedback to the following blocks. Default true (false = the reference's disable_gptq). */
  errorFeedback?: boolean;
  /** Also propagate the error inside the block (exact OBS feedback for the tail). Default false, as the reference. */
  exactFeedback?: boolean;
  /** Subtract the per-row group mean before each sign (the reference code). Default true; false = the paper's α·sign(w). */
  centered?: boolean;
  /** Set element 0 non-zero to cancel; the promise then rejects with an AbortError. */
  cancel?: Int32Array;
}

export interface BillmResult {
  /** Dequantized binarized weights, [rows, cols] row-major: exactly what `binary` decodes to. */
  weight: Float32Array;
  /** The binary structure (2-bit codes, salient bitmap, fp16 scales) the lowbit format stores and the 1-bit kernels run. */
  binary: BinaryTensor;
  /** The paper's W-bits: 2·r_salient + 1·(1 − r_salient). */
  avgBits: number;
  /** The paper's extra storing bits per weight: 1 + 1/blockSize (group bitmap + salient-column bitmap). */
  storingBits: number;
  /** Salient columns, summed over blocks. */
  salientColumns: number;
  /** Salient columns per block. */
  blockSalient: Int32Array;
  /** [cols]: 1 where a column was binarized as salient. */
  salientMask: Uint8Array;
  /** Σ (w − q)² / Hinv_jj² / 2 (0 without error feedback). */
  loss: number;
  deadColumns: number;
}

/** Argument errors (shapes, options, a non-finite weight, a Hessian not positive definite after damping)
 *  reject the promise; they never throw synchronously. */
export async function billmQuantize(weight: Weight, hessian: Float32Array, opts: BillmOptions): Promise<BillmResult> {
  return (await addon.billmQuantize(weight, hessian, opts)) as BillmResult;
}

/**
 * The salient-column search limit per block. The reference searches 1..49 of 128 columns; on the bundled
 * models that picks ~19% salient columns (1.19 bits/weight), above the paper's ~1.1. Capping the search at
 * 15% of the block keeps the average at most 1.15 bits (salient columns cost 2 bits, the rest 1).
 */
export function billmMaxSalient(block: number): number {
  return Math.max(2, Math.floor(0.15 * block) + 1);
}

/** The pipeline's options for a spec (its group size is BiLLM's block), on either path. */
export function billmOptions(spec: QuantSpec, cancel: Int32Array): Omit<BillmOptions, 'rows' | 'cols'> {
  return { blockSize: spec.groupSize, damp: spec.damp, maxSalient: billmMaxSalient(spec.groupSize), cancel };
}

/** The linear takes the binarized weight (BiLLM keeps an fp32 copy beside the binary structure). */
export function installBillm(lin: Linear, r: BillmResult): LinearReport['avgBits'] {
  install(lin, r.weight, undefined, r.binary);
  return r.avgBits;
}

export function billmSolver(l: number, spec: QuantSpec, cancel: Int32Array): HessianSolver {
  return async ({ lin, kind: name, expert }: LinearRef, H: Float32Array): Promise<LinearReport> => {
    const r = await billmQuantize(lin.weight, H, { rows: lin.outFeatures, cols: lin.inFeatures, ...billmOptions(spec, cancel) });
    return { layer: l, name, expert, avgBits: installBillm(lin, r), loss: r.loss, deadColumns: r.deadColumns };
  };
}
