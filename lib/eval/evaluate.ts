// Runs the requested tasks on a loaded model — perplexity corpora (GPTQ protocol) and lm-eval zero-/few-shot
// tasks — the one entry point the CLI and API share.
import type { LoadedModel } from '../load/types';
import { PPL_MAX_WINDOWS, PplTask, pplText } from './datasets';
import { encodePair, loglikelihood, LoglikelihoodRequest } from './loglikelihood';
import { perplexity, PerplexityResult } from './perplexity';
import type { ForwardMode, MemoryOptions } from './stream';
import { loadLambada } from './tasks/lambada';
import { MMLU_CATEGORIES } from './tasks/mmlu';
import { checkTaskNames, loadChoiceTask, TASKS } from './tasks/registry';
import { ChoiceDoc, ChoiceTaskResult, LambadaResult, meanStderr, MmluResult, TextRequest } from './tasks/types';

export type { ChoiceTaskResult, LambadaResult, MmluResult } from './tasks/types';

export interface TaskProgress {
  task: string;
  /** Perplexity tasks: windows scored; other tasks: log-likelihood requests scored. */
  windows: number;
  total: number;
  tokens: number;
}

export interface EvalOptions {
  tasks: string[];
  dataDir: string;
  seqLen?: number;
  maxWindows?: number;
  /** First N documents of each lm-eval task (MMLU: first N test questions of each subject). */
  limit?: number;
  /** Padded tokens per forward for the lm-eval tasks. */
  batchTokens?: number;
  actBits?: number;
  /** Layer streaming for models larger than memory (stream.ts); each task result says which mode ran. */
  memory?: MemoryOptions;
  signal?: AbortSignal;
  onTaskStart?: (task: string, total: number) => void;
  onProgress?: (p: TaskProgress) => void;
}

export interface PplTaskResult {
  ppl: number | null;
  windows: number;
  tokens: number;
  seconds: number;
}

/** The result of any task: the fields a task reports are set (see PplTaskResult, ChoiceTaskResult, LambadaResult, MmluResult). */
export interface TaskResult {
  seconds: number;
  /** The forward that ran: resident, or streamed layer by layer. */
  mode?: ForwardMode;
  ppl?: number | null;
  windows?: number;
  tokens?: number;
  acc?: number;
  acc_stderr?: number;
  acc_norm?: number;
  acc_norm_stderr?: number;
  n?: number;
  subjects?: Record<string, { acc: number; n: number }>;
  categories?: Record<string, { acc: number; n: number }>;
}

/** Checks every name (unknown → an error listing the known tasks). */
export function checkTasks(tasks: string[]): string[] {
  checkTaskNames(tasks);
  return tasks;
}

type Prepared =
  | { task: string; kind: 'perplexity'; text: string }
  | { task: string; kind: 'choice' | 'mmlu'; docs: ChoiceDoc[]; encode: (text: string) => ArrayLike<number> }
  | { task: string; kind: 'lambada'; requests: TextRequest[] };

export async function evaluate(
  model: LoadedModel,
  encode: (text: string) => ArrayLike<number>,
  opts: EvalOptions,
): Promise<Record<string, TaskResult>> {
  const tasks = checkTasks(opts.tasks);
  const seqLen = opts.seqLen ?? 2048;
  const maxContext = model.config.maxPositionEmbeddings;
  // Every data file is read and checked before any compute.
  const prepared: Prepared[] = [];
  for (const task of tasks) {
    const kind = TASKS[task].kind;
    if (kind === 'perplexity') prepared.push({ task, kind, text: pplText(task as PplTask, opts.dataDir) });
    else if (kind === 'lambada') prepared.push({ task, kind, requests: await loadLambada(opts.dataDir, { limit: opts.limit }) });
    else {
      // MMLU encodes each prompt to fit its shots; keep those ids for the requests (a per-task cache).
      const enc = memoEncode(encode);
      prepared.push({ task, kind, docs: await loadChoiceTask(task, opts.dataDir, { limit: opts.limit, encode: enc, maxContext }), encode: enc });
    }
  }
  const results: Record<string, TaskResult> = {};
  for (const p of prepared) {
    const task = p.task;
    if (p.kind === 'perplexity') {
      const ids = encode(p.text);
      const maxWindows = Math.min(PPL_MAX_WINDOWS[task as PplTask], opts.maxWindows ?? Infinity);
      const total = Math.min(Math.floor(ids.length / seqLen), maxWindows);
      opts.onTaskStart?.(task, total);
      const r: PerplexityResult = await perplexity(model, ids, {
        seqLen,
        maxWindows: Number.isFinite(maxWindows) ? maxWindows : undefined,
        actBits: opts.actBits,
        memory: opts.memory,
        signal: opts.signal,
        onProgress: (q) => opts.onProgress?.({ task, ...q }),
      });
      results[task] = { ppl: Number.isFinite(r.ppl) ? r.ppl : null, windows: r.windows, tokens: r.tokens, seconds: r.seconds, mode: r.mode };
      continue;
    }
    const t0 = performance.now();
    const text = p.kind === 'lambada' ? p.requests : p.docs.flatMap((d) => d.requests);
    const reqs = tokenizeRequests(p.kind === 'lambada' ? encode : p.encode, text);
    opts.onTaskStart?.(task, reqs.length);
    let mode: ForwardMode | undefined;
    const ll = await loglikelihood(model, reqs, {
      maxContext,
      batchTokens: opts.batchTokens,
      actBits: opts.actBits,
      memory: opts.memory,
      signal: opts.signal,
      onMode: (m) => (mode = m),
      onProgress: (q) => opts.onProgress?.({ task, windows: q.done, total: q.total, tokens: q.tokens }),
    });
    const seconds = () => (performance.now() - t0) / 1000;
    if (p.kind === 'lambada') results[task] = scoreLambada(ll, seconds());
    else if (p.kind === 'mmlu') results[task] = scoreMmlu(p.docs, ll.map((r) => r.logprob), seconds());
    else results[task] = scoreChoices(p.docs, ll.map((r) => r.logprob), TASKS[task].metrics.includes('acc_norm'), seconds());
    results[task].mode = mode;
  }
  return results;
}

/** `encode` remembering its results (contexts shared by several choices are encoded once). */
export function memoEncode(encode: (text: string) => ArrayLike<number>): (text: string) => ArrayLike<number> {
  const cache = new Map<string, ArrayLike<number>>();
  return (t: string) => {
    let v = cache.get(t);
    if (!v) cache.set(t, (v = encode(t)));
    return v;
  };
}

/** Tokenizes requests as the harness does, encoding each distinct string once. */
export function tokenizeRequests(encode: (text: string) => ArrayLike<number>, reqs: TextRequest[]): LoglikelihoodRequest[] {
  const cached = memoEncode(encode);
  return reqs.map((r) => encodePair(cached, r.context, r.continuation));
}

function argmax(xs: number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i; // first maximum, as numpy
  return best;
}

/** Per-document correctness (acc and acc_norm) from the log-likelihoods of all requests, in document order. */
export function choiceOutcomes(docs: ChoiceDoc[], logprobs: number[]): { acc: number[]; accNorm: number[] } {
  const acc: number[] = [];
  const accNorm: number[] = [];
  let k = 0;
  for (const d of docs) {
    const lls = logprobs.slice(k, k + d.requests.length);
    k += d.requests.length;
    acc.push(argmax(lls) === d.gold ? 1 : 0);
    accNorm.push(argmax(lls.map((l, i) => l / d.choiceLengths[i])) === d.gold ? 1 : 0);
  }
  return { acc, accNorm };
}

const CATEGORY_ORDER = ['stem', 'humanities', 'social_sciences', 'other'];

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export function scoreChoices(docs: ChoiceDoc[], logprobs: number[], withNorm: boolean, seconds: number): ChoiceTaskResult {
  const { acc, accNorm } = choiceOutcomes(docs, logprobs);
  return {
    acc: mean(acc),
    acc_stderr: meanStderr(acc),
    ...(withNorm ? { acc_norm: mean(accNorm), acc_norm_stderr: meanStderr(accNorm) } : {}),
    n: docs.length,
    seconds,
  };
}

export function scoreLambada(ll: { logprob: number; greedy: boolean }[], seconds: number): LambadaResult {
  const acc = ll.map((r) => (r.greedy ? 1 : 0));
  return { acc: mean(acc), acc_stderr: meanStderr(acc), ppl: Math.exp(-mean(ll.map((r) => r.logprob))), n: ll.length, seconds };
}

export function scoreMmlu(docs: ChoiceDoc[], logprobs: number[], seconds: number): MmluResult {
  const { acc } = choiceOutcomes(docs, logprobs);
  const groups = (key: (d: ChoiceDoc) => string) => {
    const g: Record<string, { acc: number; n: number }> = {};
    docs.forEach((d, i) => {
      const e = (g[key(d)] ??= { acc: 0, n: 0 });
      e.acc += acc[i];
      e.n++;
    });
    for (const e of Object.values(g)) e.acc /= e.n;
    return g;
  };
  return {
    acc: mean(acc),
    acc_stderr: meanStderr(acc),
    n: docs.length,
    subjects: groups((d) => d.subject!),
    categories: Object.fromEntries(
      Object.entries(groups((d) => MMLU_CATEGORIES[d.subject!])).sort(([a], [b]) => CATEGORY_ORDER.indexOf(a) - CATEGORY_ORDER.indexOf(b)),
    ),
    seconds,
  };
}
