// Token-by-token decoding with a KV cache (batch 1): each step runs one token through every layer
// (addon.layerDecode: the same math as layerForward, attention over the cached keys/values), then the
// final norm + LM head (addon.headNll, which also gives the argmax for greedy decoding).
import { addon } from '../native/addon';
import type { LoadedModel } from '../load/types';
import { embedTokens } from './forward';

/** Per-layer key/value caches, each [maxLen, numKvHeads*headDim]. */
export interface KvCache {
  maxLen: number;
  k: Float32Array[];
  v: Float32Array[];
}

export function createKvCache(model: LoadedModel, maxLen: number): KvCache {
  const c = model.config;
  const n = maxLen * c.numKvHeads * c.headDim;
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    k.push(new Float32Array(n));
    v.push(new Float32Array(n));
  }
  return { maxLen, k, v };
}

export interface DecodeStep {
  /** Hidden state after the last layer (before the final norm), [hidden]. */
  h: Float32Array;
  /** NLL of `target` (0 when no target was given). */
  nll: number;
  /** The most likely next token. */
  next: number;
}

/**
 * Runs `token` at position `pos` (positions 0..pos-1 must already be in the cache) and returns the
 * next-token prediction; `target` (optional) is scored.
 */
export async function decodeStep(
  model: LoadedModel,
  token: number,
  pos: number,
  cache: KvCache,
  opts: { target?: number; actBits?: number } = {},
): Promise<DecodeStep> {
  if (pos < 0 || pos >= cache.maxLen) throw new Error(`decodeStep: position ${pos} outside the cache (maxLen ${cache.maxLen})`);
  const c = model.config;
  const h = await embedTokens(model, Int32Array.of(token));
  const actBits = opts.actBits ?? model.quantization?.actBits ?? 0;
  for (let l = 0; l < c.numLayers; l++) {
    addon.layerDecode(h, { cfg: c, layer: model.weights.layers[l], pos, kCache: cache.k[l], vCache: cache.v[l], actBits });
  }
  const w = model.weights;
  const r = await addon.headNll(h, {
    norm: w.finalNorm,
    head: w.lmHead,
    vocab: c.vocabSize,
    eps: c.rmsNormEps,
    targets: Int32Array.of(opts.target ?? -1),
    topk: 1,
  });
  return { h, nll: opts.target === undefined ? 0 : r.nll[0], next: r.topIdx[0] };
}

/** Greedy generation: feeds `prompt`, then `steps` argmax tokens. Returns the generated tokens. */
export async function greedyDecode(model: LoadedModel, prompt: Int32Array, steps: number, cache?: KvCache): Promise<Int32Array> {
  const kv = cache ?? createKvCache(model, prompt.length + steps);
  const out = new Int32Array(steps);
  let next = 0;
  for (let i = 0; i < prompt.length; i++) next = (await decodeStep(model, prompt[i], i, kv)).next;
  for (let s = 0; s < steps; s++) {
    out[s] = next;
    if (s + 1 < steps) next = (await decodeStep(model, next, prompt.length + s, kv)).next;
  }
  return out;
}
