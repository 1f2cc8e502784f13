// Evaluation of a model larger than memory: layer-major instead of batch-major. Every batch is embedded
// first; then each decoder layer runs over all batches before the next one is touched, so only one
// layer's weights need to be resident: the finished layer's pages of the memory-mapped checkpoint are
// handed back to the kernel and the next layer's are read ahead. The activations of all batches
// ([windows, seqLen, hidden] floats) wait between layers in memory or, when they do not fit either, in a
// temporary file. Each batch goes through the same kernels with the same rows as in the resident path,
// so the results are identical.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LowbitError } from '../load/errors';
import { layerLinears } from '../load/linears';
import { NonFiniteTensor, scanNonFinite } from '../load/model';
import type { LayerWeights, LoadedModel } from '../load/types';
import { addon, isF32Array, Weight } from '../native/addon';
import { embedTokens, runLayer, throwIfAborted } from './forward';

export interface MemoryOptions {
  /** Always stream layers. */
  stream?: boolean;
  /** Bytes the evaluation may use; a model (plus the resident path's working set) above it is streamed. */
  maxMemory?: number;
  /** Where activations go when they do not fit in memory (default: the OS temp folder). */
  spillDir?: string;
}

export type ForwardMode = 'resident' | 'streamed' | 'streamed, activations on disk';

export interface MemoryPlan {
  mode: ForwardMode;
  /** Bytes of the checkpoint's files. */
  modelBytes: number;
  /** The largest decoder layer's weight bytes (what streaming keeps resident). */
  layerBytes: number;
  /** All batches' activations between layers. */
  activationBytes: number;
}

function weightBytes(w: Weight | undefined): number {
  if (!w) return 0;
  return isF32Array(w) ? w.byteLength : w.data.byteLength;
}

function layerWeights(layer: LayerWeights): Weight[] {
  const ws: Weight[] = layerLinears(layer).map((r) => r.lin.weight).filter((w): w is Weight => !!w);
  if (layer.moe) ws.push(layer.moe.router);
  return ws;
}

/**
 * Resident or streamed, for `tokens` tokens scored in batches whose working set is `batchBytes`
 * (the transient activations of one forward call).
 */
export function planMemory(model: LoadedModel, tokens: number, batchBytes: number, opts: MemoryOptions = {}): MemoryPlan {
  const modelBytes = model.files.reduce((s, f) => s + fs.statSync(f).size, 0);
  const layerBytes = Math.max(...model.weights.layers.map((l) => layerWeights(l).reduce((s, w) => s + weightBytes(w), 0)));
  const activationBytes = tokens * model.config.hiddenSize * 4;
  const cap = opts.maxMemory ?? Infinity;
  const plan = (mode: ForwardMode): MemoryPlan => ({ mode, modelBytes, layerBytes, activationBytes });
  if (!opts.stream && modelBytes + batchBytes <= cap) return plan('resident');
  const headBytes = weightBytes(model.weights.lmHead) + (model.weights.lmHead === model.weights.embed ? 0 : weightBytes(model.weights.embed));
  return plan(headBytes + layerBytes + batchBytes + activationBytes <= cap ? 'streamed' : 'streamed, activations on disk');
}

/** Sizes like 4G, 512M, 1.5GB, 800MiB or a plain byte count (binary units: 1K = 1024). */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new LowbitError('BAD_ARGUMENT', `--max-memory: cannot read "${text}" as a size (e.g. 4G, 512M, 1.5GB)`);
  const n = Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
  if (!(n >= 1)) throw new LowbitError('BAD_ARGUMENT', `--max-memory must be at least one byte, got "${text}"`);
  return Math.floor(n);
}

/** Advises the kernel about a layer's mapped weight pages (bytes advised); weights off the mapping (quantized) are skipped. */
export function adviseLayer(model: LoadedModel, l: number, advice: 'dontneed' | 'willneed'): number {
  return layerWeights(model.weights.layers[l]).reduce((s, w) => s + adviseWeight(w, advice), 0);
}

function adviseWeight(w: Weight, advice: 'dontneed' | 'willneed'): number {
  return addon.adviseMapped(isF32Array(w) ? w : w.data, advice);
}

/**
 * scanNonFinite for a model about to be streamed: a tensor group at a time, handing each group's pages
 * back to the kernel once read, so the scan does not make the whole checkpoint resident.
 */
export function scanNonFiniteStreaming(model: LoadedModel): NonFiniteTensor[] {
  const found = scanNonFinite(model, 'model.embed_tokens.');
  adviseWeight(model.weights.embed, 'dontneed');
  for (let l = 0; l < model.config.numLayers; l++) {
    found.push(...scanNonFinite(model, `model.layers.${l}.`));
    adviseLayer(model, l, 'dontneed');
  }
  found.push(...scanNonFinite(model, 'model.norm.'), ...scanNonFinite(model, 'lm_head.'));
  adviseWeight(model.weights.lmHead, 'dontneed');
  return found;
}

/** All batches' hidden states between two layers. */
interface ActivationStore {
  read(i: number): Float32Array;
  write(i: number, h: Float32Array): void;
  close(): void;
}

class MemoryStore implements ActivationStore {
  private readonly h: Float32Array[] = [];
  read(i: number): Float32Array {
    return this.h[i];
  }
  write(i: number, h: Float32Array): void {
    this.h[i] = h;
  }
  close(): void {
    this.h.length = 0;
  }
}

/** One temporary file, a fixed slot per batch; unlinked on close. */
class DiskStore implements ActivationStore {
  private readonly fd: number;
  private readonly file: string;
  private readonly offsets: number[] = [];
  private readonly lengths: number[];

  constructor(dir: string, lengths: number[]) {
    this.lengths = lengths;
    let off = 0;
    for (const n of lengths) {
      this.offsets.push(off);
      off += n * 4;
    }
    this.file = path.join(dir, `lowbit-activations-${process.pid}-${Date.now()}.f32`);
    try {
      this.fd = fs.openSync(this.file, 'wx+', 0o600);
    } catch (e) {
      throw new LowbitError('IO_ERROR', `${this.file}: cannot create the activation spill file (${(e as Error).message})`, { cause: e });
    }
  }

  read(i: number): Float32Array {
    const h = new Float32Array(this.lengths[i]);
    const bytes = new Uint8Array(h.buffer);
    for (let done = 0; done < bytes.length; ) {
      const n = fs.readSync(this.fd, bytes, done, Math.min(bytes.length - done, 1 << 30), this.offsets[i] + done);
      if (n <= 0) throw new LowbitError('IO_ERROR', `${this.file}: short read`);
      done += n;
    }
    return h;
  }

  write(i: number, h: Float32Array): void {
    const bytes = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    try {
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(this.fd, bytes, done, Math.min(bytes.length - done, 1 << 30), this.offsets[i] + done);
    } catch (e) {
      throw new LowbitError('IO_ERROR', `${this.file}: cannot write activations (${(e as Error).message})`, { cause: e });
    }
  }

  close(): void {
    fs.closeSync(this.fd);
    fs.rmSync(this.file, { force: true });
  }
}

export interface StreamRunOptions {
  actBits?: number;
  signal?: AbortSignal;
  /** Where the activations wait between layers; 'disk' is a temporary file in spillDir (default: the OS temp folder). */
  activations?: 'memory' | 'disk';
  spillDir?: string;
  /** After each (layer, batch) step and each final batch: steps done of (numLayers + 1) × batches. */
  onStep?: (done: number, total: number) => void;
}

/** Equal-length sequences: ids [nseq·seqLen]. */
export interface SequenceBatch {
  ids: Int32Array;
  seqLen: number;
}

/**
 * Runs batches of sequences through the whole decoder layer by layer and hands each batch's final hidden
 * states to `consume`, in batch order.
 */
export async function streamLayers(
  model: LoadedModel,
  batches: SequenceBatch[],
  opts: StreamRunOptions,
  consume: (i: number, h: Float32Array) => Promise<void>,
): Promise<void> {
  const L = model.config.numLayers;
  const hidden = model.config.hiddenSize;
  const store: ActivationStore =
    opts.activations === 'disk' ? new DiskStore(opts.spillDir ?? os.tmpdir(), batches.map((b) => b.ids.length * hidden)) : new MemoryStore();
  const total = (L + 1) * batches.length;
  let done = 0;
  try {
    for (let i = 0; i < batches.length; i++) {
      throwIfAborted(opts.signal);
      store.write(i, await embedTokens(model, batches[i].ids));
    }
    // The embedding table is needed again only as a tied LM head.
    if (model.weights.embed !== model.weights.lmHead) adviseWeight(model.weights.embed, 'dontneed');
    for (let l = 0; l < L; l++) {
      if (l + 1 < L) adviseLayer(model, l + 1, 'willneed');
      for (let i = 0; i < batches.length; i++) {
        throwIfAborted(opts.signal);
        const h = store.read(i);
        await runLayer(model, l, h, batches[i].seqLen, { actBits: opts.actBits ?? model.quantization?.actBits ?? 0 });
        store.write(i, h);
        opts.onStep?.(++done, total);
      }
      adviseLayer(model, l, 'dontneed');
    }
    for (let i = 0; i < batches.length; i++) {
      throwIfAborted(opts.signal);
      await consume(i, store.read(i));
      opts.onStep?.(++done, total);
    }
  } finally {
    store.close();
  }
}
