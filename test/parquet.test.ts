// Task data from Hugging Face parquet files: when a task's .jsonl file is absent, `<base>.parquet` or the HF
// datasets layout `<dataset>/<split>-0000K-of-0000N.parquet` is read as the same records.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readJsonlRecords } from '../lib/eval/datasets';
import { loadChoiceTask, taskRequests } from '../lib/eval/tasks/registry';

const DATA = path.join(__dirname, '..', 'data');
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-parquet-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Column = { name: string; data: unknown[]; type: 'STRING' | 'INT64' | 'BOOLEAN' };

/** Writes columns as a parquet file with hyparquet-writer (ESM-only: loaded by dynamic import). */
async function writeParquet(file: string, columnData: Column[]): Promise<void> {
  const { parquetWriteBuffer } = await import('hyparquet-writer');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, Buffer.from(parquetWriteBuffer({ columnData: columnData as never })));
}

const head = (file: string, n = 3) => readJsonlRecords(path.join(DATA, file), n).map((r) => r.rec);

/** PIQA as HF stores it: label an INT64 column. */
function piqaColumns(rows: Record<string, unknown>[]): Column[] {
  return [
    { name: 'goal', data: rows.map((r) => r.goal), type: 'STRING' },
    { name: 'sol1', data: rows.map((r) => r.sol1), type: 'STRING' },
    { name: 'sol2', data: rows.map((r) => r.sol2), type: 'STRING' },
    { name: 'label', data: rows.map((r) => BigInt(r.label as number)), type: 'INT64' },
  ];
}

test('piqa_validation.parquet and boolq/val-00000-of-00001.parquet give the prompts and golds of the .jsonl files', async () => {
  const dir = path.join(tmp, 'pq');
  const piqa = head('piqa_validation.jsonl');
  await writeParquet(path.join(dir, 'piqa_validation.parquet'), piqaColumns(piqa));
  const boolq = head('boolq_val.jsonl');
  const label = (l: unknown) => l === true || l === 'true';
  await writeParquet(path.join(dir, 'boolq', 'val-00000-of-00001.parquet'), [
    { name: 'question', data: boolq.map((r) => r.question), type: 'STRING' },
    { name: 'passage', data: boolq.map((r) => r.passage), type: 'STRING' },
    { name: 'label', data: boolq.map((r) => label(r.label)), type: 'BOOLEAN' },
  ]);
  expect(fs.readdirSync(dir).filter((f) => f.endsWith('.jsonl'))).toEqual([]);
  for (const task of ['piqa', 'boolq']) {
    const want = await loadChoiceTask(task, DATA, { limit: 3 });
    const got = await loadChoiceTask(task, dir, { limit: 3 });
    expect(got).toHaveLength(3);
    expect(got).toEqual(want);
    expect(await taskRequests(task, dir)).toEqual(await taskRequests(task, DATA, { limit: 3 }));
    expect(await taskRequests(task, dir, { limit: 2 })).toEqual(await taskRequests(task, DATA, { limit: 2 }));
  }
});

test('errors: a corrupt parquet names the file; a missing field names the file and row; no file names the .jsonl', async () => {
  const dir = path.join(tmp, 'bad');
  fs.mkdirSync(dir);
  const file = path.join(dir, 'piqa_validation.parquet');
  fs.writeFileSync(file, 'PAR1 this is not parquet');
  await expect(loadChoiceTask('piqa', dir)).rejects.toThrow(`${file}: not a readable parquet file`);
  const rows = head('piqa_validation.jsonl', 2);
  const cols = piqaColumns(rows).filter((c) => c.name !== 'sol2');
  await writeParquet(file, cols);
  await expect(loadChoiceTask('piqa', dir)).rejects.toThrow(`${file} row 1: field "sol2" missing or not a string`);
  await expect(loadChoiceTask('boolq', dir)).rejects.toThrow(path.join(dir, 'boolq_val.jsonl'));
});
