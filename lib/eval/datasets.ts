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
  return readJsonlRecords(file, limit).map((r) => strField(r, field));
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

/** One record of a .jsonl (or parquet) file with the file and line (or 1-based row) it came from (for error messages). */
export interface JsonlRecord {
  rec: Record<string, unknown>;
  file: string;
  line: number;
  /** Set when the record is a parquet row: `line` is then the 1-based row of that file. */
  parquet?: boolean;
}

/** Where a record came from, for error messages: "file:line" or "file row N". */
export function where(r: JsonlRecord): string {
  return r.parquet ? `${r.file} row ${r.line}` : `${r.file}:${r.line}`;
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

/**
 * The first `limit` records of a task's data file `file` (a .jsonl name from TASK_FILES). When the .jsonl file is
 * absent, a Hugging Face parquet file with the same base name (`piqa_validation.parquet`) is read instead, or the
 * shards of the Hugging Face datasets layout `<dataset>/<split>-00000-of-0000N.parquet` (`piqa/validation-*.parquet`).
 */
export async function readTaskRecords(dataDir: string, file: string, limit = Infinity): Promise<JsonlRecord[]> {
  const jsonl = path.join(dataDir, file);
  if (fs.existsSync(jsonl)) return readJsonlRecords(jsonl, limit);
  const parquet = taskParquetFiles(dataDir, file);
  if (!parquet) return readJsonlRecords(dataFile(dataDir, file), limit); // throws FILE_NOT_FOUND naming the .jsonl
  const out: JsonlRecord[] = [];
  for (const f of parquet) {
    if (out.length >= limit) break;
    out.push(...(await readParquetRecords(f, limit - out.length)));
  }
  return out;
}

/** The parquet file(s) standing in for a missing task .jsonl file, or undefined when there are none. */
export function taskParquetFiles(dataDir: string, file: string): string[] | undefined {
  const base = file.replace(/\.jsonl$/, '');
  const single = path.join(dataDir, `${base}.parquet`);
  if (fs.existsSync(single)) return [single];
  const k = base.lastIndexOf('_');
  if (k <= 0) return undefined;
  const dir = path.join(dataDir, base.slice(0, k));
  const split = base.slice(k + 1);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return undefined;
  const re = new RegExp(`^${split.replace(/[^\w-]/g, '\\$&')}-(\\d+)-of-(\\d+)\\.parquet$`);
  const shards = fs.readdirSync(dir).filter((n) => re.test(n)).sort();
  return shards.length ? shards.map((n) => path.join(dir, n)) : undefined;
}

type Hyparquet = typeof import('hyparquet', { with: { 'resolution-mode': 'import' } });
let hyparquet: Promise<Hyparquet> | undefined;

/** The first `limit` rows of a parquet file as records (INT64 values as numbers); a file hyparquet cannot read is an error naming it. */
export async function readParquetRecords(file: string, limit = Infinity): Promise<JsonlRecord[]> {
  // hyparquet is ESM-only: a real dynamic import() from this CommonJS module, loaded once, only when a parquet file is read.
  hyparquet ??= import('hyparquet');
  const { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } = await hyparquet;
  let rows: Record<string, unknown>[];
  try {
    const buf = await asyncBufferFromFile(file);
    const metadata = await parquetMetadataAsync(buf);
    const rowEnd = Number.isFinite(limit) ? Math.min(limit, Number(metadata.num_rows)) : undefined;
    rows = await parquetReadObjects({ file: buf, metadata, rowEnd });
  } catch (e) {
    throw new LowbitError('BAD_DATA', `${file}: not a readable parquet file (${(e as Error).message})`);
  }
  return rows.map((rec, i) => ({ rec: plainValues(rec) as Record<string, unknown>, file, line: i + 1, parquet: true }));
}

/** Parquet INT64 columns come back as bigint: make them numbers, as in the .jsonl records. */
function plainValues(v: unknown): unknown {
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(plainValues);
  if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plainValues(x)]));
  }
  return v;
}

function badField(r: JsonlRecord, field: string, what: string): LowbitError {
  return new LowbitError('BAD_DATA', `${where(r)}: field "${field}" missing or not ${what}`);
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
  if (!(gold >= 0 && gold < n)) throw new LowbitError('BAD_DATA', `${where(r)}: field "${field}" gives answer ${gold}, outside the ${n} choices`);
  return gold;
}
