// Log-likelihood of continuations given contexts, as lm-evaluation-harness's `loglikelihood` requests:
// one causal forward of context+continuation (left-truncated to the model's context), the sum of
// log p(continuation tokens), and whether every continuation token is the argmax (greedy).
// Requests are sorted by total length (longest first, as the harness does), packed into batches of
// similar length, right-padded (harmless under causal attention; padded positions are ignored) and
// returned in the caller's order. The forward is scoreSequences' (embedding, decoder layers, fused
// norm + LM head + log-softmax NLL with top-1), except that the head runs only on the positions that
// predict continuation tokens, and requests with the same input share one forward. All batches are
// planned first, so a model that does not fit can run them layer by layer (stream.ts). On a GPU (toDevice) the
// forward and the head run there, the head on the same selected rows.
import { LowbitError } from '../load/errors';
import type { LoadedModel } from '../load/types';
import { addon } from '../native/addon';
import { gpuFor } from './cuda';
import { embedTokens, runLayer, throwIfAborted } from './forward';
import { ForwardMode, MemoryOptions, planMemory, streamLayers } from './stream';

export interface LoglikelihoodRequest {
  context: ArrayLike<number>;
  continuation: ArrayLike<number>;
}

export interface LoglikelihoodResult {
  /** Σ log p(continuation token | everything before it), natural log. */
  logprob: number;
  /** Every continuation token is the model's argmax at its position. */
  greedy: boolean;
}

export interface LoglikelihoodOptions {
  signal?: AbortSignal;
  onProgress?: (p: { done: number; total: number; tokens: number }) => void;
  /** Padded tokens per forward call (default: from the model size, at least one full sequence). */
  batchTokens?: number;
  /** Context length of the model (default: config max_position_embeddings). */
  maxContext?: number;
  actBits?: number;
  /** Stream layers (stream.ts) when asked, or when the model does not fit maxMemory. */
  memory?: MemoryOptions;
  /** Told which forward ran. */
  onMode?: (mode: ForwardMode) => void;
}

/** Transient activation bytes per padded token of a forward call. */
function tokenBytes(model: LoadedModel): number {
  return Math.max(model.config.intermediateSize, model.config.vocabSize / 8) * 4 * 4;
}

/** Padded tokens per forward that keep activations (tokens × max(intermediate, vocab/8) floats × 4) near 512 MiB,
 *  or a quarter of a memory cap (but at least one 512-token row). */
export function defaultBatchTokens(model: LoadedModel, maxMemory = Infinity): number {
  return Math.max(512, Math.min(16384, Math.floor(Math.min(512 << 20, maxMemory / 4) / tokenBytes(model))));
}

export async function loglikelihood(
  model: LoadedModel,
  requests: LoglikelihoodRequest[],
  opts: LoglikelihoodOptions = {},
): Promise<LoglikelihoodResult[]> {
  const maxContext = opts.maxContext ?? model.config.maxPositionEmbeddings;
  // The harness feeds inp = (context+continuation)[-(maxContext+1):][:-1] and scores the last
  // len(continuation) positions. Requests with the same inp (e.g. the four one-token answers of an MMLU
  // question) share one forward: only the target of their last position differs.
  const groups: { inp: Int32Array; members: number[] }[] = [];
  const byKey = new Map<string, number>();
  const contTokens: Int32Array[] = [];
  requests.forEach((r, i) => {
    const nc = r.continuation.length;
    if (nc === 0) throw new LowbitError('BAD_ARGUMENT', `loglikelihood request ${i}: empty continuation`);
    if (r.context.length === 0) throw new LowbitError('BAD_ARGUMENT', `loglikelihood request ${i}: empty context`);
    if (nc > maxContext) throw new LowbitError('BAD_ARGUMENT', `loglikelihood request ${i}: continuation of ${nc} tokens exceeds the context of ${maxContext}`);
    const total = r.context.length + nc;
    const keep = Math.min(total, maxContext + 1);
    const inp = new Int32Array(keep - 1);
    for (let t = 0; t < keep - 1; t++) {
      const k = total - keep + t;
      inp[t] = k < r.context.length ? r.context[k] : r.continuation[k - r.context.length];
    }
    contTokens.push(Int32Array.from(r.continuation));
    const key = inp.join(',');
    let g = byKey.get(key);
    if (g === undefined) {
      g = groups.length;
      byKey.set(key, g);
      groups.push({ inp, members: [] });
    }
    groups[g].members.push(i);
  });

  // Longest first (ties: by tokens, as the harness's sort key), so the first batch shows the peak memory.
  const order = groups.map((_, i) => i);
  order.sort((a, b) => {
    const x = groups[a].inp, y = groups[b].inp;
    if (x.length !== y.length) return y.length - x.length;
    for (let t = 0; t < x.length; t++) if (x[t] !== y[t]) return x[t] - y[t];
    return a - b;
  });

  // On a GPU (toDevice) that fake-quantizes activations to the bits asked for: the whole forward there, the head
  // on the selected rows only. Batches as on the CPU without its host-memory cap (larger ones measured no faster,
  // bench/cuda-eval-batch.ts), bounded by the device's free memory.
  const gpu = gpuFor(model, opts.actBits);
  const batchTokens = opts.batchTokens ?? (gpu ? Math.min(gpu.batchTokens(), defaultBatchTokens(model)) : defaultBatchTokens(model, opts.memory?.maxMemory));
  // Batches of groups order[start, end), right-padded to the batch's longest input L.
  const batches: { start: number; end: number; ids: Int32Array; seqLen: number }[] = [];
  for (let i = 0; i < order.length; ) {
    const L = groups[order[i]].inp.length;
    let j = i + 1;
    // One padded length L per batch; stop where padding would exceed a fifth of a row.
    while (j < order.length && (j - i + 1) * L <= batchTokens && groups[order[j]].inp.length * 5 >= L * 4) j++;
    const ids = new Int32Array((j - i) * L); // right padding with id 0 (any valid id: causal attention)
    for (let b = 0; b < j - i; b++) ids.set(groups[order[i + b]].inp, b * L);
    batches.push({ start: i, end: j, ids, seqLen: L });
    i = j;
  }

  const results: LoglikelihoodResult[] = new Array(requests.length);
  const hidden = model.config.hiddenSize;
  let done = 0;
  let tokens = 0;
  // The rows of batch bi that predict continuation tokens (row b·L + t), one run per request, and their targets.
  const selection = (bi: number) => {
    const { start, end, seqLen: L } = batches[bi];
    let n = 0;
    for (let g = start; g < end; g++) for (const r of groups[order[g]].members) n += contTokens[r].length;
    const rows = new Int32Array(n);
    const targets = new Int32Array(n);
    let row = 0;
    for (let g = start; g < end; g++) {
      const grp = groups[order[g]];
      const b = g - start;
      for (const r of grp.members) {
        const cont = contTokens[r];
        for (let c = 0; c < cont.length; c++) {
          rows[row] = b * L + grp.inp.length - cont.length + c; // the position predicting the c-th continuation token
          targets[row++] = cont[c];
        }
      }
    }
    return { rows, targets };
  };
  // Each request's log-probability and greediness from its rows' NLL and argmax test.
  const finish = (bi: number, nll: Float64Array, isTop: (row: number) => boolean) => {
    const { start, end } = batches[bi];
    let row = 0;
    for (let g = start; g < end; g++) {
      const grp = groups[order[g]];
      for (const r of grp.members) {
        let lp = 0;
        let greedy = true;
        for (let c = 0; c < contTokens[r].length; c++, row++) {
          lp -= nll[row];
          if (!isTop(row)) greedy = false;
        }
        results[r] = { logprob: lp, greedy };
        done++;
      }
      tokens += grp.inp.length + 1;
    }
    opts.onProgress?.({ done, total: requests.length, tokens });
  };
  // On the CPU: gathers the hidden rows and runs the head on them.
  const score = async (bi: number, h: Float32Array) => {
    const { rows, targets } = selection(bi);
    const hg = new Float32Array(rows.length * hidden);
    rows.forEach((p, i) => hg.set(h.subarray(p * hidden, (p + 1) * hidden), i * hidden));
    throwIfAborted(opts.signal);
    const w = model.weights;
    const { nll, topIdx } = (await addon.headNll(hg, {
      norm: w.finalNorm,
      head: w.lmHead,
      vocab: model.config.vocabSize,
      eps: model.config.rmsNormEps,
      targets,
      topk: 1,
    })) as { nll: Float64Array; topIdx: Int32Array };
    finish(bi, nll, (row) => topIdx[row] === targets[row]);
  };

  if (gpu) {
    for (let bi = 0; bi < batches.length; bi++) {
      throwIfAborted(opts.signal);
      const { rows, targets } = selection(bi);
      const r = await gpu.scoreRows(batches[bi].ids, batches[bi].seqLen, rows, targets);
      finish(bi, r.nll, (row) => r.greedy[row] === 1);
    }
    opts.onMode?.('resident');
    return results;
  }

  const totalTokens = batches.reduce((s, b) => s + b.ids.length, 0);
  const plan = planMemory(model, totalTokens, batchTokens * tokenBytes(model), opts.memory);
  if (plan.mode === 'resident') {
    for (let bi = 0; bi < batches.length; bi++) {
      throwIfAborted(opts.signal);
      await score(bi, await forwardHidden(model, batches[bi].ids, batches[bi].seqLen, opts));
    }
  } else {
    await streamLayers(
      model,
      batches,
      { actBits: opts.actBits, signal: opts.signal, activations: plan.mode === 'streamed' ? 'memory' : 'disk', spillDir: opts.memory?.spillDir },
      score,
    );
  }
  opts.onMode?.(plan.mode);
  return results;
}

/** Hidden states after the last decoder layer for ids [nseq, seqLen] (the final norm is in the head). */
async function forwardHidden(model: LoadedModel, ids: Int32Array, seqLen: number, opts: LoglikelihoodOptions): Promise<Float32Array> {
  const h = await embedTokens(model, ids);
  for (let l = 0; l < model.config.numLayers; l++) {
    throwIfAborted(opts.signal);
    await runLayer(model, l, h, seqLen, { actBits: opts.actBits ?? model.quantization?.actBits ?? 0 });
  }
  return h;
}

/**
 * Token ids of a (context, continuation) pair as lm-evaluation-harness's `_encode_pair`: trailing spaces of
 * the context move to the continuation; the continuation is the tail of encode(context + continuation) past
 * len(encode(context)); the context is encode(context) itself. No special tokens.
 */
export function encodePair(
  encode: (text: string) => ArrayLike<number>,
  context: string,
  continuation: string,
): { context: number[]; continuation: number[] } {
  const n = context.length - context.trimEnd().length;
  if (n > 0) {
    continuation = context.slice(context.length - n) + continuation;
    context = context.slice(0, context.length - n);
  }
  const whole = Array.from(encode(context + continuation));
  const ctx = Array.from(encode(context));
  return { context: ctx, continuation: whole.slice(ctx.length) };
}
