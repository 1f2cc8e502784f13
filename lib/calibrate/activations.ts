// The calibration activations entering one decoder layer, kept in batches of whole sequences. Only this
// one layer's inputs live in memory; after a layer is quantized they are pushed through it in place.
import { embedTokens, LayerCaptures, runLayer, throwIfAborted } from '../eval/forward';
import { LowbitError } from '../load/errors';
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
      const b = await embedTokens(model, calib.ids.subarray(s * calib.seqLen, (s + n) * calib.seqLen));
      checkFinite(b, s, calib.seqLen, model.config.hiddenSize, 'the embeddings of');
      batches.push(b);
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
    let first = 0;
    for (const b of this.batches) {
      throwIfAborted(signal);
      const caps = await runLayer(model, l, b, this.seqLen, { capture: !!fn });
      if (fn) await fn(caps!);
      checkFinite(b, first, this.seqLen, model.config.hiddenSize, `the output of model.layers.${l} for`);
      first += b.length / (this.seqLen * model.config.hiddenSize);
    }
  }
}

/** NaN/Inf in a layer's calibration activations (an overflow, or weights that were already broken) would poison every
 *  statistic after it; stop and say where it first appeared. */
function checkFinite(b: Float32Array, firstSeq: number, seqLen: number, hidden: number, what: string): void {
  for (let i = 0; i < b.length; i++) {
    const v = b[i];
    if (v - v !== 0) {
      const tok = Math.floor(i / hidden);
      throw new LowbitError(
        'BAD_DATA',
        `calibration activations are not finite: ${what} sequence ${firstSeq + Math.floor(tok / seqLen)}, token ${tok % seqLen} (value ${v})`,
      );
    }
  }
}

export function defaultCalibBatch(model: LoadedModel, seqLen: number): number {
  // Bounded by the transient activations of one layer call (≈ 8 floats per token per intermediate unit).
  const perSeq = seqLen * model.config.intermediateSize * 4 * 8;
  return Math.max(1, Math.min(16, Math.floor((768 << 20) / perSeq)));
}

/** Statistics gathered from a layer's captured linear inputs (Hessians, channel maxima, means) are finite iff the
 *  inputs were: checking them costs nothing next to scanning every captured activation. */
export function checkFiniteStatistic(stat: Float32Array | Float64Array, inputsOf: string): void {
  for (let i = 0; i < stat.length; i++) {
    const v = stat[i];
    if (v - v !== 0) throw new LowbitError('BAD_DATA', `calibration activations are not finite: the inputs of ${inputsOf} (an overflow in this layer, or non-finite weights)`);
  }
}
