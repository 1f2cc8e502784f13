// Perplexity with the GPTQ protocol: non-overlapping windows of seqLen tokens, no BOS; each window's mean
// NLL over its seqLen-1 predicted tokens counts as seqLen tokens; ppl = exp(Σ / (windows·seqLen)).
import type { LoadedModel } from '../load/types';
import { gpuFor } from './cuda';
import { scoreHidden, scoreSequences, throwIfAborted } from './forward';
import { ForwardMode, MemoryOptions, planMemory, streamLayers } from './stream';

export interface PerplexityOptions {
  seqLen?: number;
  maxWindows?: number;
  /** Windows per forward call (default: bounded by host memory on the CPU — activations are batch·seqLen·intermediate
   *  floats —, by the free device memory on a GPU). */
  batch?: number;
  actBits?: number;
  /** Stream layers (stream.ts) when asked, or when the model does not fit maxMemory. */
  memory?: MemoryOptions;
  signal?: AbortSignal;
  onProgress?: (p: { windows: number; total: number; tokens: number }) => void;
}

export interface PerplexityResult {
  ppl: number;
  windows: number;
  /** Tokens scored (windows × seqLen, as the protocol counts them). */
  tokens: number;
  /** Mean NLL of each window. */
  windowNll: number[];
  seconds: number;
  /** Which forward ran: all layers per batch, or layer by layer over all batches. */
  mode: ForwardMode;
}

/** Transient activation bytes of one window in a forward call. */
function windowBytes(model: LoadedModel, seqLen: number): number {
  return seqLen * Math.max(model.config.intermediateSize, model.config.vocabSize / 8) * 4 * 4;
}

/** Windows per forward: transient activations near 512 MiB, or a quarter of a memory cap. */
export function defaultBatch(model: LoadedModel, seqLen: number, maxMemory = Infinity): number {
  return Math.max(1, Math.min(8, Math.floor(Math.min(512 << 20, maxMemory / 4) / windowBytes(model, seqLen))));
}

export async function perplexity(model: LoadedModel, ids: ArrayLike<number>, opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  const seqLen = opts.seqLen ?? 2048;
  let windows = Math.floor(ids.length / seqLen);
  if (opts.maxWindows !== undefined) windows = Math.min(windows, opts.maxWindows);
  if (windows < 1) throw new Error(`need at least ${seqLen} tokens for one window, have ${ids.length}`);
  // On a GPU the activations live in device memory: as many windows per call as it holds (GpuModel.batchTokens).
  const gpu = gpuFor(model, opts.actBits);
  const batch = opts.batch ?? (gpu ? Math.max(1, Math.floor(gpu.batchTokens() / seqLen)) : defaultBatch(model, seqLen, opts.memory?.maxMemory));
  const plan = planMemory(model, windows * seqLen, gpu ? 0 : batch * windowBytes(model, seqLen), opts.memory);
  const t0 = performance.now();
  const windowNll: number[] = [];
  const addWindows = (nll: Float64Array, nb: number) => {
    for (let s = 0; s < nb; s++) {
      let sum = 0;
      for (let t = 0; t < seqLen - 1; t++) sum += nll[s * seqLen + t];
      windowNll.push(sum / (seqLen - 1));
    }
  };
  const chunks: Int32Array[] = [];
  for (let w = 0; w < windows; w += batch) {
    const nb = Math.min(batch, windows - w);
    chunks.push(Int32Array.from({ length: nb * seqLen }, (_, i) => ids[w * seqLen + i]));
  }
  if (plan.mode === 'resident') {
    for (const chunk of chunks) {
      throwIfAborted(opts.signal);
      const { nll } = await scoreSequences(model, chunk, seqLen, { actBits: opts.actBits, signal: opts.signal });
      addWindows(nll, chunk.length / seqLen);
      opts.onProgress?.({ windows: windowNll.length, total: windows, tokens: windowNll.length * seqLen });
    }
  } else {
    // Progress in window-equivalents of the (layers + 1) passes over all windows.
    const progress = (done: number, steps: number) => {
      const w = Math.floor((windows * done) / steps);
      opts.onProgress?.({ windows: w, total: windows, tokens: w * seqLen });
    };
    await streamLayers(
      model,
      chunks.map((ids) => ({ ids, seqLen })),
      {
        actBits: opts.actBits,
        signal: opts.signal,
        activations: plan.mode === 'streamed' ? 'memory' : 'disk',
        spillDir: opts.memory?.spillDir,
        onStep: progress,
      },
      async (i, h) => addWindows((await scoreHidden(model, h, chunks[i], seqLen)).nll, chunks[i].length / seqLen),
    );
  }
  const total = windowNll.reduce((a, b) => a + b * seqLen, 0);
  return {
    ppl: Math.exp(total / (windows * seqLen)),
    windows,
    tokens: windows * seqLen,
    windowNll,
    seconds: (performance.now() - t0) / 1000,
    mode: plan.mode,
  };
}
