// Runs the requested perplexity tasks on a loaded model; the one entry point the CLI and API share.
import { LowbitError } from '../load/errors';
import type { LoadedModel } from '../load/types';
import { PPL_MAX_WINDOWS, PPL_TASKS, PplTask, pplText } from './datasets';
import { perplexity, PerplexityResult } from './perplexity';

export interface TaskProgress {
  task: string;
  windows: number;
  total: number;
  tokens: number;
}

export interface EvalOptions {
  tasks: string[];
  dataDir: string;
  seqLen?: number;
  maxWindows?: number;
  actBits?: number;
  signal?: AbortSignal;
  onTaskStart?: (task: string, total: number) => void;
  onProgress?: (p: TaskProgress) => void;
}

export interface TaskResult {
  ppl: number | null;
  windows: number;
  tokens: number;
  seconds: number;
}

export function checkTasks(tasks: string[]): PplTask[] {
  for (const t of tasks) {
    if (!(PPL_TASKS as readonly string[]).includes(t)) {
      throw new LowbitError('BAD_ARGUMENT', `unknown task "${t}" (--tasks): known tasks are ${PPL_TASKS.join(', ')}`);
    }
  }
  return tasks as PplTask[];
}

export async function evaluate(
  model: LoadedModel,
  encode: (text: string) => ArrayLike<number>,
  opts: EvalOptions,
): Promise<Record<string, TaskResult>> {
  const tasks = checkTasks(opts.tasks);
  const seqLen = opts.seqLen ?? 2048;
  const texts = tasks.map((t) => pplText(t, opts.dataDir)); // every data file checked before any compute
  const results: Record<string, TaskResult> = {};
  for (let i = 0; i < tasks.length; i++) {
    const task = tasks[i];
    const ids = encode(texts[i]);
    const maxWindows = Math.min(PPL_MAX_WINDOWS[task], opts.maxWindows ?? Infinity);
    const total = Math.min(Math.floor(ids.length / seqLen), maxWindows);
    opts.onTaskStart?.(task, total);
    const r: PerplexityResult = await perplexity(model, ids, {
      seqLen,
      maxWindows: Number.isFinite(maxWindows) ? maxWindows : undefined,
      actBits: opts.actBits,
      signal: opts.signal,
      onProgress: (p) => opts.onProgress?.({ task, ...p }),
    });
    results[task] = { ppl: Number.isFinite(r.ppl) ? r.ppl : null, windows: r.windows, tokens: r.tokens, seconds: r.seconds };
  }
  return results;
}
