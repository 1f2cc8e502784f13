// The full-model forward for scoring: embeddings → decoder layers → final norm → LM head with a fused
// log-softmax/NLL, a batch of equal-length sequences at a time, off the event loop.
import { addon } from '../native/addon';
import type { LoadedModel } from '../load/types';
import { gpuFor } from './cuda';

export interface ForwardOptions {
  /** Per-token dynamic symmetric activation fake quantization at every linear input (W/A methods);
   *  defaults to what the model was quantized with. */
  actBits?: number;
  /** Also return the top-k logits of every position (exactness tests). */
  topk?: number;
  signal?: AbortSignal;
}

export interface SequenceScores {
  /** [nseq, seqLen] NLL of predicting token t+1 at position t; the last position of each row is 0 (no target). */
  nll: Float64Array;
  topIdx?: Int32Array;
  topVal?: Float32Array;
}

function abortError(): Error {
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  return e;
}

export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortError();
}

/** Hidden states after the embedding for ids [nseq*seqLen]. */
export async function embedTokens(model: LoadedModel, ids: Int32Array): Promise<Float32Array> {
  const c = model.config;
  return addon.embed(ids, model.weights.embed, c.hiddenSize, c.vocabSize);
}

/** Runs one decoder layer in place on h [nseq*seqLen, hidden]. capture: true returns every linear's input; the name
 *  of one returns those up to it and stops there (the later fields absent, h left partly updated: pass a copy).
 *  part: 'attn' runs only the attention half (h becomes the residual stream after attention), 'mlp' only the MLP
 *  half on such a stream. */
export async function runLayer(
  model: LoadedModel,
  index: number,
  h: Float32Array,
  seqLen: number,
  opts: { actBits?: number; capture?: boolean | keyof LayerCaptures; part?: 'attn' | 'mlp' } = {},
): Promise<LayerCaptures | undefined> {
  return addon.layerForward(h, {
    cfg: model.config,
    layer: model.weights.layers[index],
    seqLen,
    actBits: opts.actBits ?? 0,
    capture: opts.capture ?? false,
    part: opts.part,
  });
}

/** The inputs each linear of a layer saw in one forward (what calibration statistics are built from). */
export interface LayerCaptures {
  attnIn: Float32Array; // input of q, k, v  [T, hidden]
  oIn: Float32Array; // input of o          [T, heads*headDim]
  mlpIn: Float32Array; // input of gate, up [T, hidden]
  downIn?: Float32Array; // input of down  [T, intermediate] (dense MLP only: a sparse layer's experts each have their own)
}

/** Per-position NLL of next-token prediction for sequences ids [nseq, seqLen] (row-major). */
export async function scoreSequences(
  model: LoadedModel,
  ids: Int32Array,
  seqLen: number,
  opts: ForwardOptions = {},
): Promise<SequenceScores> {
  const nseq = ids.length / seqLen;
  if (!Number.isInteger(nseq)) throw new Error(`ids length ${ids.length} is not a multiple of seqLen ${seqLen}`);
  throwIfAborted(opts.signal);
  // On a GPU (toDevice): the whole forward and the NLL there, when it fake-quantizes activations to the bits
  // asked for. Top-k logits are CPU-only.
  const gpu = gpuFor(model, opts.actBits);
  if (gpu && !opts.topk) return { nll: await gpu.score(ids, seqLen) };
  const actBits = opts.actBits ?? model.quantization?.actBits ?? 0;
  const h = await embedTokens(model, ids);
  for (let l = 0; l < model.config.numLayers; l++) {
    throwIfAborted(opts.signal);
    await runLayer(model, l, h, seqLen, { actBits });
  }
  throwIfAborted(opts.signal);
  return scoreHidden(model, h, ids, seqLen, opts.topk ?? 0);
}

/** The final norm, LM head and next-token NLL of hidden states h after the last layer, for ids [nseq, seqLen]. */
export async function scoreHidden(model: LoadedModel, h: Float32Array, ids: Int32Array, seqLen: number, topk = 0): Promise<SequenceScores> {
  const nseq = ids.length / seqLen;
  const targets = new Int32Array(ids.length);
  for (let s = 0; s < nseq; s++) {
    for (let t = 0; t < seqLen; t++) targets[s * seqLen + t] = t + 1 < seqLen ? ids[s * seqLen + t + 1] : -1;
  }
  const w = model.weights;
  return addon.headNll(h, {
    norm: w.finalNorm,
    head: w.lmHead,
    vocab: model.config.vocabSize,
    eps: model.config.rmsNormEps,
    targets,
    topk,
  });
}
