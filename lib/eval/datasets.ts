// Perplexity corpora, read from a data directory in the formats of the Hugging Face datasets the GPTQ
// evaluation code uses, and joined exactly as that protocol does.
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError } from '../load/errors';

export type PplTask = 'wikitext2' | 'c4';
export const PPL_TASKS: readonly PplTask[] = ['wikitext2', 'c4'];

export const PPL_FILES: Record<PplTask, string> = {
  wikitext2: 'wikitext-2-raw-v1.test.json',
  c4: 'c4_validation_shard0_head.jsonl',
};

/** Max windows the protocol scores per task (C4: the first 256). */
export const PPL_MAX_WINDOWS: Record<PplTask, number> = { wikitext2: Infinity, c4: 256 };

export function dataFile(dataDir: string, file: string): string {
  const p = path.join(dataDir, file);
  if (!fs.existsSync(p)) {
    throw new LowbitError('FILE_NOT_FOUND', `data file not found: ${p} (set --data-dir to a folder holding ${file})`);
  }
  return p;
}

/** Reads a .jsonl file's `field` from every record, naming the file and line of a malformed one. */
export function readJsonlField(file: string, field: string, limit = Infinity): string[] {
  const out: string[] = [];
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length && out.length < limit; i++) {
    const line = lines[i];
    if (!line.trim()) continue;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new LowbitError('BAD_DATA', `${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    const v = (rec as Record<string, unknown>)[field];
    if (typeof v !== 'string') throw new LowbitError('BAD_DATA', `${file}:${i + 1}: field "${field}" missing or not a string`);
    out.push(v);
  }
  return out;
}

/** The text the protocol tokenizes for a task: WikiText-2 rows joined by "\n\n"; C4's first 1100 docs joined by " ". */
export function pplText(task: PplTask, dataDir: string): string {
  const file = dataFile(dataDir, PPL_FILES[task]);
  if (task === 'wikitext2') {
    let rows: unknown;
    try {
      rows = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new LowbitError('BAD_DATA', `${file}: not valid JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(rows) || rows.some((r) => typeof r !== 'string')) {
      throw new LowbitError('BAD_DATA', `${file}: expected a JSON array of strings (the "text" column)`);
    }
    return (rows as string[]).join('\n\n');
  }
  return readJsonlField(file, 'text', 1100).join(' ');
}

/** Data files of the zero-/few-shot tasks (the Hugging Face splits lm-evaluation-harness scores). */
export const TASK_FILES: Record<string, string> = {
  piqa: 'piqa_validation.jsonl',
  arc_easy: 'arc_easy_test.jsonl',
  arc_challenge: 'arc_challenge_test.jsonl',
  hellaswag: 'hellaswag_validation.jsonl',
  winogrande: 'winogrande_xl_validation.jsonl',
  boolq: 'boolq_val.jsonl',
  lambada_openai: 'lambada_openai_test.jsonl',
  mmlu: 'mmlu',
};

/** One record of a .jsonl file with the file and line it came from (for error messages). */
export interface JsonlRecord {
  rec: Record<string, unknown>;
  file: string;
  line: number;
}

/** The first `limit` records of a .jsonl file; a line that is not a JSON object is an error naming file:line. */
export function readJsonlRecords(file: string, limit = Infinity): JsonlRecord[] {
  const out: JsonlRecord[] = [];
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length && out.length < limit; i++) {
    const line = lines[i];
    if (!line.trim()) continue;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new LowbitError('BAD_DATA', `${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) {
      throw new LowbitError('BAD_DATA', `${file}:${i + 1}: expected a JSON object`);
    }
    out.push({ rec: rec as Record<string, unknown>, file, line: i + 1 });
  }
  return out;
}

function badField(r: JsonlRecord, field: string, what: string): LowbitError {
  return new LowbitError('BAD_DATA', `${r.file}:${r.line}: field "${field}" missing or not ${what}`);
}

/** A string field of a record, or an error naming file:line and the field. */
export function strField(r: JsonlRecord, field: string): string {
  const v = r.rec[field];
  if (typeof v !== 'string') throw badField(r, field, 'a string');
  return v;
}

/** A non-empty array of strings, or an error naming file:line and the field. */
export function strArrayField(r: JsonlRecord, field: string, value: unknown = r.rec[field]): string[] {
  if (!Array.isArray(value) || value.length === 0 || value.some((x) => typeof x !== 'string')) throw badField(r, field, 'an array of strings');
  return value as string[];
}

/** An integer field (a number or a numeric string such as "1"), or an error naming file:line and the field. */
export function intField(r: JsonlRecord, field: string): number {
  const v = r.rec[field];
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(n)) throw badField(r, field, 'an integer');
  return n;
}

/** A gold index that must lie in [0, n), or an error naming file:line. */
export function checkGold(r: JsonlRecord, field: string, gold: number, n: number): number {
  if (!(gold >= 0 && gold < n)) throw new LowbitError('BAD_DATA', `${r.file}:${r.line}: field "${field}" gives answer ${gold}, outside the ${n} choices`);
  return gold;
}
