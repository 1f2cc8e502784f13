// MMLU (lm-eval `mmlu`, 5-shot): the first five dev questions of the subject as shots, choices " A".." D";
// accuracy micro-averaged over all questions, and per subject and per category.
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError } from '../../load/errors';
import { dataFile, TASK_FILES } from '../datasets';
import { parseCsv } from './csv';
import type { ChoiceDoc } from './types';

export type MmluCategory = 'stem' | 'humanities' | 'social_sciences' | 'other';

/** The standard subject → category map as lm-eval's mmlu groups it (stem 19, humanities 13, social sciences
 *  12, other 13 subjects; lm-eval files anatomy under STEM where Hendrycks' categories.py has health/other). */
export const MMLU_CATEGORIES: Record<string, MmluCategory> = {
  abstract_algebra: 'stem',
  anatomy: 'stem',
  astronomy: 'stem',
  business_ethics: 'other',
  clinical_knowledge: 'other',
  college_biology: 'stem',
  college_chemistry: 'stem',
  college_computer_science: 'stem',
  college_mathematics: 'stem',
  college_medicine: 'other',
  college_physics: 'stem',
  computer_security: 'stem',
  conceptual_physics: 'stem',
  econometrics: 'social_sciences',
  electrical_engineering: 'stem',
  elementary_mathematics: 'stem',
  formal_logic: 'humanities',
  global_facts: 'other',
  high_school_biology: 'stem',
  high_school_chemistry: 'stem',
  high_school_computer_science: 'stem',
  high_school_european_history: 'humanities',
  high_school_geography: 'social_sciences',
  high_school_government_and_politics: 'social_sciences',
  high_school_macroeconomics: 'social_sciences',
  high_school_mathematics: 'stem',
  high_school_microeconomics: 'social_sciences',
  high_school_physics: 'stem',
  high_school_psychology: 'social_sciences',
  high_school_statistics: 'stem',
  high_school_us_history: 'humanities',
  high_school_world_history: 'humanities',
  human_aging: 'other',
  human_sexuality: 'social_sciences',
  international_law: 'humanities',
  jurisprudence: 'humanities',
  logical_fallacies: 'humanities',
  machine_learning: 'stem',
  management: 'other',
  marketing: 'other',
  medical_genetics: 'other',
  miscellaneous: 'other',
  moral_disputes: 'humanities',
  moral_scenarios: 'humanities',
  nutrition: 'other',
  philosophy: 'humanities',
  prehistory: 'humanities',
  professional_accounting: 'other',
  professional_law: 'humanities',
  professional_medicine: 'other',
  professional_psychology: 'social_sciences',
  public_relations: 'social_sciences',
  security_studies: 'social_sciences',
  sociology: 'social_sciences',
  us_foreign_policy: 'social_sciences',
  virology: 'other',
  world_religions: 'humanities',
};

export const MMLU_SUBJECTS: readonly string[] = Object.keys(MMLU_CATEGORIES).sort();
export const MMLU_LETTERS = ['A', 'B', 'C', 'D'] as const;
export const MMLU_SHOTS = 5;

export interface MmluQuestion {
  question: string;
  choices: [string, string, string, string];
  /** 0..3 */
  answer: number;
}

/** A subject's CSV (question, A, B, C, D, answer letter; no header); a malformed record names file:line. */
export function readMmluCsv(file: string, limit = Infinity): MmluQuestion[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new LowbitError('FILE_NOT_FOUND', `data file not found: ${file} (set --data-dir to a folder holding mmlu/dev and mmlu/test)`, { cause: e });
  }
  const out: MmluQuestion[] = [];
  for (const r of parseCsv(text, file)) {
    if (out.length >= limit) break;
    if (r.fields.length !== 6) throw new LowbitError('BAD_DATA', `${file}:${r.line}: expected 6 fields (question, A, B, C, D, answer), got ${r.fields.length}`);
    const answer = MMLU_LETTERS.indexOf(r.fields[5].trim() as (typeof MMLU_LETTERS)[number]);
    if (answer < 0) throw new LowbitError('BAD_DATA', `${file}:${r.line}: answer must be one of A, B, C, D, got ${JSON.stringify(r.fields[5])}`);
    out.push({ question: r.fields[0], choices: r.fields.slice(1, 5) as MmluQuestion['choices'], answer });
  }
  return out;
}

/** "{question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:" */
export function mmluQuestionText(q: MmluQuestion): string {
  return `${q.question.trim()}\n${q.choices.map((c, i) => `${MMLU_LETTERS[i]}. ${c}`).join('\n')}\nAnswer:`;
}

export function mmluHeader(subject: string): string {
  return `The following are multiple choice questions (with answers) about ${subject.replaceAll('_', ' ')}.\n\n`;
}

export interface MmluPromptOptions {
  /** Tokenizer; with maxContext, shots are dropped from the front until the prompt and its answer fit. */
  encode?: (text: string) => ArrayLike<number>;
  maxContext?: number;
}

/** The few-shot context of one question: header, then each shot "{question}… Answer: {letter}\n\n", then the question. */
export function mmluPrompt(subject: string, shots: MmluQuestion[], q: MmluQuestion, opts: MmluPromptOptions = {}): string {
  const build = (k: number) =>
    mmluHeader(subject) + shots.slice(k).map((s) => `${mmluQuestionText(s)} ${MMLU_LETTERS[s.answer]}\n\n`).join('') + mmluQuestionText(q);
  let k = 0;
  let prompt = build(0);
  if (opts.encode && opts.maxContext !== undefined) {
    // Longest answer continuation in tokens (one for the letters with usual tokenizers).
    const contTokens = (ctx: string) => Math.max(...MMLU_LETTERS.map((l) => opts.encode!(ctx + ' ' + l).length));
    const tooLong = (ctx: string) => opts.encode!(ctx).length + 8 > opts.maxContext! && contTokens(ctx) > opts.maxContext!;
    while (k < shots.length && tooLong(prompt)) prompt = build(++k);
  }
  return prompt;
}

export interface MmluLoadOptions extends MmluPromptOptions {
  /** First N test questions of each subject. */
  limit?: number;
  subjects?: readonly string[];
}

export function loadMmlu(dataDir: string, opts: MmluLoadOptions = {}): ChoiceDoc[] {
  const root = dataFile(dataDir, TASK_FILES.mmlu);
  const subjects = opts.subjects ?? MMLU_SUBJECTS;
  const files = subjects.map((s) => [path.join(root, 'dev', `${s}_dev.csv`), path.join(root, 'test', `${s}_test.csv`)]);
  for (const f of files.flat()) {
    if (!fs.existsSync(f)) throw new LowbitError('FILE_NOT_FOUND', `data file not found: ${f} (set --data-dir to a folder holding mmlu/dev and mmlu/test)`);
  }
  const docs: ChoiceDoc[] = [];
  subjects.forEach((subject, i) => {
    const shots = readMmluCsv(files[i][0], MMLU_SHOTS);
    for (const q of readMmluCsv(files[i][1], opts.limit)) {
      const context = mmluPrompt(subject, shots, q, opts);
      docs.push({
        requests: MMLU_LETTERS.map((l) => ({ context, continuation: ' ' + l })),
        gold: q.answer,
        choiceLengths: [1, 1, 1, 1],
        subject,
      });
    }
  });
  return docs;
}
