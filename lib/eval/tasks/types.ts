// What a zero-/few-shot task is made of: documents turned into log-likelihood requests (strings), and the
// metrics lm-evaluation-harness computes from their scores.

/** One loglikelihood request as strings: the context and the continuation (target delimiter included). */
export interface TextRequest {
  context: string;
  continuation: string;
}

/** A multiple-choice document: one request per choice, the gold index. */
export interface ChoiceDoc {
  requests: TextRequest[];
  gold: number;
  /** Characters of each choice (without the target delimiter), the acc_norm denominator as lm-eval's len(choice). */
  choiceLengths: number[];
  /** MMLU: the subject the question belongs to. */
  subject?: string;
}

export interface LoadOptions {
  /** First N documents (MMLU: first N test questions of each subject). */
  limit?: number;
}

export type ChoiceTaskName = 'piqa' | 'arc_easy' | 'arc_challenge' | 'hellaswag' | 'winogrande' | 'boolq' | 'mmlu';

export interface ChoiceTaskResult {
  acc: number;
  acc_stderr: number;
  acc_norm?: number;
  acc_norm_stderr?: number;
  n: number;
  seconds: number;
}

export interface LambadaResult {
  acc: number;
  acc_stderr: number;
  /** exp(−mean log p(last word)), lm-eval's lambada perplexity. */
  ppl: number;
  n: number;
  seconds: number;
}

export interface MmluResult {
  acc: number;
  acc_stderr: number;
  n: number;
  subjects: Record<string, { acc: number; n: number }>;
  categories: Record<string, { acc: number; n: number }>;
  seconds: number;
}

/** Sample standard error of the mean of 0/1 outcomes, as lm-eval's mean_stderr (n−1 in the variance). */
export function meanStderr(xs: number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const m = xs.reduce((a, b) => a + b, 0) / n;
  const v = xs.reduce((a, b) => a + (b - m) * (b - m), 0) / (n - 1);
  return Math.sqrt(v / n);
}
