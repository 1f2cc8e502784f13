// The calibration activations entering one decoder layer, kept in batches of whole sequences. Only this
// one layer's inputs live in memory; after a layer is quantized they are pushed through it in place.
import { embedTokens, LayerCaptures, runLayer, throwIfAborted } from '../eval/forward';
import type { LoadedModel } from '../load/types';
import type { CalibrationSet } from './calibration';

export class LayerInputs {
  private constructor(
    readonly batches: Float32Array[],
    readonly seqLen: number,
    readonly nsamples: number,
  ) {}

  static async embed(model: LoadedModel, calib: CalibrationSet, batchSeqs?: number): Promise<LayerInputs> {
    const per = batchSeqs ?? defaultCalibBatch(model, calib.seqLen);
    const batches: Float32Array[] = [];
    for (let s = 0; s < calib.nsamples; s += per) {
      const n = Math.min(per, calib.nsamples - s);
      batches.push(await embedTokens(model, calib.ids.subarray(s * calib.seqLen, (s + n) * calib.seqLen)));
    }
    return new LayerInputs(batches, calib.seqLen, calib.nsamples);
  }

  /** Runs layer l on a copy of every batch and hands each batch's captured linear inputs to fn. */
  async capture(model: LoadedModel, l: number, fn: (c: LayerCaptures) => Promise<void>, signal?: AbortSignal): Promise<void> {
    for (const b of this.batches) {
      throwIfAborted(signal);
      const caps = await runLayer(model, l, b.slice(), this.seqLen, { capture: true });
      await fn(caps!);
    }
  }

  /** Replaces the inputs by layer l's outputs; with capture, fn also sees each batch's linear inputs on the way. */
  async propagate(model: LoadedModel, l: number, signal?: AbortSignal, fn?: (c: LayerCaptures) => Promise<void>): Promise<void> {
    for (const b of this.batches) {
      throwIfAborted(signal);
      const caps = await runLayer(model, l, b, this.seqLen, { capture: !!fn });
      if (fn) await fn(caps!);
    }
  }
}

export function defaultCalibBatch(model: LoadedModel, seqLen: number): number {
  // Bounded by the transient activations of one layer call (≈ 8 floats per token per intermediate unit).
  const perSeq = seqLen * model.config.intermediateSize * 4 * 8;
  return Math.max(1, Math.min(16, Math.floor((768 << 20) / perSeq)));
}
