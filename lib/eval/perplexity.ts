// Perplexity with the GPTQ protocol: non-overlapping windows of seqLen tokens, no BOS; each window's mean
// NLL over its seqLen-1 predicted tokens counts as seqLen tokens; ppl = exp(Σ / (windows·seqLen)).
import type { LoadedModel } from '../load/types';
import { scoreSequences, throwIfAborted } from './forward';

export interface PerplexityOptions {
  seqLen?: number;
  maxWindows?: number;
  /** Windows per forward call (bounded by memory: activations are batch·seqLen·intermediate floats). */
  batch?: number;
  actBits?: number;
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
}

export function defaultBatch(model: LoadedModel, seqLen: number): number {
  const perWindow = seqLen * Math.max(model.config.intermediateSize, model.config.vocabSize / 8) * 4 * 4;
  return Math.max(1, Math.min(8, Math.floor((512 << 20) / perWindow)));
}

export async function perplexity(model: LoadedModel, ids: ArrayLike<number>, opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  const seqLen = opts.seqLen ?? 2048;
  let windows = Math.floor(ids.length / seqLen);
  if (opts.maxWindows !== undefined) windows = Math.min(windows, opts.maxWindows);
  if (windows < 1) throw new Error(`need at least ${seqLen} tokens for one window, have ${ids.length}`);
  const batch = opts.batch ?? defaultBatch(model, seqLen);
  const t0 = performance.now();
  const windowNll: number[] = [];
  for (let w = 0; w < windows; w += batch) {
    throwIfAborted(opts.signal);
    const nb = Math.min(batch, windows - w);
    const chunk = Int32Array.from({ length: nb * seqLen }, (_, i) => ids[w * seqLen + i]);
    const { nll } = await scoreSequences(model, chunk, seqLen, { actBits: opts.actBits, signal: opts.signal });
    for (let s = 0; s < nb; s++) {
      let sum = 0;
      for (let t = 0; t < seqLen - 1; t++) sum += nll[s * seqLen + t];
      windowNll.push(sum / (seqLen - 1));
    }
    opts.onProgress?.({ windows: w + nb, total: windows, tokens: (w + nb) * seqLen });
  }
  const total = windowNll.reduce((a, b) => a + b * seqLen, 0);
  return {
    ppl: Math.exp(total / (windows * seqLen)),
    windows,
    tokens: windows * seqLen,
    windowNll,
    seconds: (performance.now() - t0) / 1000,
  };
}
