// The calibration activations entering one decoder layer, kept in batches of whole sequences. Only this
// one layer's inputs live in memory; after a layer is quantized they are pushed through it in place.
import { embedTokens, LayerCaptures, runLayer, throwIfAborted } from '../eval/forward';
import * as os from 'os';
import { ActivationStore, DiskStore, MemoryStore } from '../eval/stream';
import { LowbitError } from '../load/errors';
import type { LoadedModel } from '../load/types';
import type { CalibrationSet } from './calibration';

export class LayerInputs {
  /** The layer whose attention half the activations have gone through already (advanceAttention), or −1. */
  private half = -1;

  private constructor(
    private readonly store: ActivationStore,
    private readonly count: number,
    readonly seqLen: number,
    readonly nsamples: number,
  ) {}

  /**
   * Embeds the calibration windows in batches. With memory.maxMemory, batches whose working set would
   * exceed a quarter of the cap are made smaller, and the activations wait in a temporary file (in
   * memory.spillDir) when they would take more than half of it.
   */
  static async embed(model: LoadedModel, calib: CalibrationSet, memory: { maxMemory?: number; spillDir?: string } = {}): Promise<LayerInputs> {
    const per = calibBatch(model, calib.seqLen, memory.maxMemory);
    const lengths: number[] = [];
    for (let s = 0; s < calib.nsamples; s += per) lengths.push(Math.min(per, calib.nsamples - s) * calib.seqLen * model.config.hiddenSize);
    const total = calib.nsamples * calib.seqLen * model.config.hiddenSize * 4;
    const spill = memory.maxMemory !== undefined && total > memory.maxMemory / 2;
    const store: ActivationStore = spill ? new DiskStore(memory.spillDir ?? os.tmpdir(), lengths) : new MemoryStore();
    try {
      for (let i = 0, s = 0; s < calib.nsamples; i++, s += per) {
        const n = Math.min(per, calib.nsamples - s);
        const b = await embedTokens(model, calib.ids.subarray(s * calib.seqLen, (s + n) * calib.seqLen));
        checkFinite(b, s, calib.seqLen, model.config.hiddenSize, 'the embeddings of');
        store.write(i, b);
      }
    } catch (e) {
      store.close();
      throw e;
    }
    return new LayerInputs(store, lengths.length, calib.seqLen, calib.nsamples);
  }

  /** Batch i's activations (a copy when they wait on disk). */
  batch(i: number): Float32Array {
    return this.store.read(i);
  }

  /** Whether the activations wait on disk between layers. */
  get spilled(): boolean {
    return this.store instanceof DiskStore;
  }

  /** Runs layer l on a copy of every batch as far as the input `upTo` (in layer order: attnIn, oIn, mlpIn, downIn)
   *  and hands each batch's captured linear inputs up to that one to fn. After advanceAttention(l) only the MLP
   *  half runs (upTo mlpIn or downIn). */
  async capture(
    model: LoadedModel,
    l: number,
    upTo: keyof LayerCaptures,
    fn: (c: Partial<LayerCaptures>) => Promise<void>,
    signal?: AbortSignal,
  ): Promise<void> {
    const part = this.half === l ? 'mlp' : undefined;
    for (let i = 0; i < this.count; i++) {
      throwIfAborted(signal);
      const caps = await runLayer(model, l, this.store.read(i).slice(), this.seqLen, { capture: upTo, part });
      await fn(caps!);
    }
  }

  /** Moves the activations through layer l's attention half, once its attention weights are final: the steps
   *  after it (the MLP's inputs, propagate) then run only the MLP half instead of the attention again each time. */
  async advanceAttention(model: LoadedModel, l: number, signal?: AbortSignal): Promise<void> {
    for (let i = 0; i < this.count; i++) {
      throwIfAborted(signal);
      const b = this.store.read(i);
      await runLayer(model, l, b, this.seqLen, { part: 'attn' });
      this.store.write(i, b);
    }
    this.half = l;
  }

  /** Replaces the inputs by layer l's outputs; with capture, fn also sees each batch's linear inputs on the way
   *  (those of the MLP only after advanceAttention(l)). */
  async propagate(model: LoadedModel, l: number, signal?: AbortSignal, fn?: (c: LayerCaptures) => Promise<void>): Promise<void> {
    const part = this.half === l ? 'mlp' : undefined;
    let first = 0;
    for (let i = 0; i < this.count; i++) {
      throwIfAborted(signal);
      const b = this.store.read(i);
      const caps = await runLayer(model, l, b, this.seqLen, { capture: !!fn, part });
      if (fn) await fn(caps!);
      checkFinite(b, first, this.seqLen, model.config.hiddenSize, `the output of model.layers.${l} for`);
      this.store.write(i, b);
      first += b.length / (this.seqLen * model.config.hiddenSize);
    }
    this.half = -1;
  }

  /** Releases the activations (removes a spill file). */
  close(): void {
    this.store.close();
  }
}

/** NaN/Inf in a layer's calibration activations (an overflow, or weights that were already broken) would poison every
 *  statistic after it; stop and say where it first appeared. */
function checkFinite(b: Float32Array, firstSeq: number, seqLen: number, hidden: number, what: string): void {
  for (let i = 0; i < b.length; i++) {
    const v = b[i];
    if (v - v !== 0) throw nonFiniteActivations(what, firstSeq * seqLen * hidden + i, v, seqLen, hidden);
  }
}

/** The error for a non-finite value at element `index` of calibration states [nseq·seqLen, hidden]. */
export function nonFiniteActivations(what: string, index: number, value: number, seqLen: number, hidden: number): LowbitError {
  const tok = Math.floor(index / hidden);
  return new LowbitError(
    'BAD_DATA',
    `calibration activations are not finite: ${what} sequence ${Math.floor(tok / seqLen)}, token ${tok % seqLen} (value ${value})`,
  );
}

/** Sequences per calibration batch: its transient activations in one layer call (≈ 8 floats per token per
 *  intermediate unit) within 768 MiB, and within a quarter of maxMemory. */
function calibBatch(model: LoadedModel, seqLen: number, maxMemory = Infinity): number {
  const perSeq = seqLen * model.config.intermediateSize * 4 * 8;
  return Math.max(1, Math.min(16, Math.floor(Math.min(768 << 20, maxMemory / 4) / perSeq)));
}

/** Statistics gathered from a layer's captured linear inputs (Hessians, channel maxima, means) are finite iff the
 *  inputs were: checking them costs nothing next to scanning every captured activation. */
export function checkFiniteStatistic(stat: Float32Array | Float64Array, inputsOf: string): void {
  for (let i = 0; i < stat.length; i++) {
    const v = stat[i];
    if (v - v !== 0) throw new LowbitError('BAD_DATA', nonFiniteInputs(inputsOf));
  }
}

/** The message for linear inputs whose statistics are not finite (shared with the GPU calibration's check). */
export function nonFiniteInputs(inputsOf: string): string {
  return `calibration activations are not finite: the inputs of ${inputsOf} (an overflow in this layer, or non-finite weights)`;
}
