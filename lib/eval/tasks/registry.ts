// Every task `lowbit eval --tasks` knows: the perplexity corpora and the lm-eval tasks, with how each is scored.
import { LowbitError } from '../../load/errors';
import { loadArc } from './arc';
import { loadBoolq } from './boolq';
import { loadHellaswag } from './hellaswag';
import { loadLambada } from './lambada';
import { loadMmlu, MmluLoadOptions } from './mmlu';
import { loadPiqa } from './piqa';
import { loadWinogrande } from './winogrande';
import type { ChoiceDoc, LoadOptions, TextRequest } from './types';

export type TaskKind = 'perplexity' | 'choice' | 'lambada' | 'mmlu';

export interface TaskInfo {
  kind: TaskKind;
  /** Metrics reported besides n and seconds. */
  metrics: string[];
  description: string;
}

export const TASKS: Record<string, TaskInfo> = {
  wikitext2: { kind: 'perplexity', metrics: ['ppl'], description: 'WikiText-2 test perplexity (GPTQ protocol)' },
  c4: { kind: 'perplexity', metrics: ['ppl'], description: 'C4 validation perplexity, first 256 windows (GPTQ protocol)' },
  piqa: { kind: 'choice', metrics: ['acc', 'acc_norm'], description: 'PIQA validation, 0-shot' },
  arc_easy: { kind: 'choice', metrics: ['acc', 'acc_norm'], description: 'ARC-Easy test, 0-shot' },
  arc_challenge: { kind: 'choice', metrics: ['acc', 'acc_norm'], description: 'ARC-Challenge test, 0-shot' },
  hellaswag: { kind: 'choice', metrics: ['acc', 'acc_norm'], description: 'HellaSwag validation, 0-shot' },
  winogrande: { kind: 'choice', metrics: ['acc'], description: 'WinoGrande XL validation, 0-shot, partial scoring' },
  boolq: { kind: 'choice', metrics: ['acc'], description: 'BoolQ validation, 0-shot' },
  lambada_openai: { kind: 'lambada', metrics: ['acc', 'ppl'], description: 'LAMBADA (OpenAI) test, last-word greedy accuracy and perplexity' },
  mmlu: { kind: 'mmlu', metrics: ['acc'], description: 'MMLU test, 5-shot, 57 subjects and 4 categories' },
};

export const TASK_NAMES: readonly string[] = Object.keys(TASKS);

/** Throws naming the unknown task and listing the known ones. */
export function checkTaskNames(tasks: string[]): void {
  for (const t of tasks) {
    if (!Object.hasOwn(TASKS, t)) {
      throw new LowbitError('BAD_ARGUMENT', `unknown task "${t}" (--tasks): known tasks are ${TASK_NAMES.join(', ')}`);
    }
  }
}

/** The documents of a multiple-choice task (MMLU included). */
export async function loadChoiceTask(task: string, dataDir: string, opts: LoadOptions & MmluLoadOptions = {}): Promise<ChoiceDoc[]> {
  switch (task) {
    case 'piqa':
      return loadPiqa(dataDir, opts);
    case 'arc_easy':
    case 'arc_challenge':
      return loadArc(task, dataDir, opts);
    case 'hellaswag':
      return loadHellaswag(dataDir, opts);
    case 'winogrande':
      return loadWinogrande(dataDir, opts);
    case 'boolq':
      return loadBoolq(dataDir, opts);
    case 'mmlu':
      return loadMmlu(dataDir, opts);
  }
  throw new LowbitError('BAD_ARGUMENT', `"${task}" is not a multiple-choice task`);
}

/** The requests of any non-perplexity task, first document first (what the prompt-pinning tests read). */
export async function taskRequests(task: string, dataDir: string, opts: LoadOptions & MmluLoadOptions = {}): Promise<TextRequest[][]> {
  checkTaskNames([task]);
  if (task === 'lambada_openai') return (await loadLambada(dataDir, opts)).map((r) => [r]);
  return (await loadChoiceTask(task, dataDir, opts)).map((d) => d.requests);
}
