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
