// Token-by-token decoding with a KV cache (batch 1): addon.decodeStep runs one token through the embedding, every
// layer (the same math as layerForward, attention over the cached keys/values) and the final norm + LM head (with the
// argmax for greedy decoding), as one job off the event loop. One step at a time per cache: a step writes its row.
import { LowbitError } from '../load/errors';
import { addon } from '../native/addon';
import type { LoadedModel } from '../load/types';
import { throwIfAborted } from './forward';

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
  if (!Number.isInteger(pos) || pos < 0 || pos >= cache.maxLen)
    throw new LowbitError('BAD_ARGUMENT', `decodeStep: position ${pos} outside the cache (maxLen ${cache.maxLen})`);
  if (!Number.isInteger(token)) throw new LowbitError('BAD_ARGUMENT', `decodeStep: token ${token} is not a token id`);
  const c = model.config;
  const w = model.weights;
  const r = await addon.decodeStep(token, {
    cfg: c,
    layers: w.layers,
    kCaches: cache.k,
    vCaches: cache.v,
    pos,
    embed: w.embed,
    finalNorm: w.finalNorm,
    lmHead: w.lmHead,
    vocab: c.vocabSize,
    target: opts.target,
    actBits: opts.actBits ?? model.quantization?.actBits ?? 0,
  });
  return { h: r.h, nll: r.nll, next: r.next };
}

/** Greedy generation: feeds `prompt`, then `steps` argmax tokens. Returns the generated tokens. */
export async function greedyDecode(
  model: LoadedModel,
  prompt: Int32Array,
  steps: number,
  opts: { cache?: KvCache; signal?: AbortSignal } = {},
): Promise<Int32Array> {
  const kv = opts.cache ?? createKvCache(model, prompt.length + steps);
  const out = new Int32Array(steps);
  let next = 0;
  const step = async (token: number, pos: number) => {
    throwIfAborted(opts.signal);
    return (await decodeStep(model, token, pos, kv)).next;
  };
  for (let i = 0; i < prompt.length; i++) next = await step(prompt[i], i);
  for (let s = 0; s < steps; s++) {
    out[s] = next;
    if (s + 1 < steps) next = await step(next, prompt.length + s);
  }
  return out;
}
