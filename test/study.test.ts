// The study runner: grid expansion (skipped combinations listed with reasons), the durable results log
// (append/read, torn tail cut, corrupt CRC ignored, duplicates ignored), and resumption: the CLI killed
// with SIGKILL at random moments, rerun to completion, gives the same results.csv as an uninterrupted run.
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { expandGrid, PAPER_BLOCKS } from '../lib/study/grid';
import { canonicalJson } from '../lib/study/fingerprint';
import { crc32, decodeRecord, encodeRecord, ResultStore, StudyRecord } from '../lib/study/store';

const ROOT = path.resolve(__dirname, '..');
const MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-study-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe('grid', () => {
  test('FP first, weight-only × bits × groups, invalid combinations skipped with reasons', () => {
    const g = expandGrid({
      models: ['/m/a', '/m/b'],
      blocks: [{ methods: ['rtn', 'gptq', 'smoothquant', 'billm'], wbits: [8, 4, 1], groups: [128, -1], abits: [8, 4] }],
      nsamples: 16,
    });
    const a = g.cells.filter((c) => c.modelName === 'a').map((c) => c.label);
    expect(a[0]).toBe('fp');
    expect(a).toEqual([
      'fp',
      'rtn:w8g128', 'rtn:w8perchannel', 'rtn:w4g128', 'rtn:w4perchannel',
      'gptq:w8g128', 'gptq:w8perchannel', 'gptq:w4g128', 'gptq:w4perchannel',
      'smoothquant:w8a8', 'smoothquant:w8a4', 'smoothquant:w4a8', 'smoothquant:w4a4',
      'billm:w1g128',
    ]);
    expect(g.cells.filter((c) => c.modelName === 'b')).toHaveLength(a.length);
    expect(g.cells.find((c) => c.label === 'gptq:w4g128')!.spec).toMatchObject({ method: 'gptq', wbits: 4, groupSize: 128, nsamples: 16, abits: 0 });
    expect(g.cells.find((c) => c.label === 'smoothquant:w4a4')!.spec).toMatchObject({ wbits: 4, abits: 4, groupSize: -1, sym: true });
    const reason = (label: string) => g.skipped.find((s) => s.modelName === 'a' && s.label === label)?.reason;
    expect(reason('rtn:w1g128')).toBe('1-bit weights: use billm');
    expect(reason('gptq:w1perchannel')).toBe('1-bit weights: use billm');
    expect(reason('smoothquant:w8a8g128')).toMatch(/per output channel; group size 128 does not apply/);
    expect(reason('billm:w1perchannel')).toMatch(/per-channel does not apply/);
    expect(reason('billm:w4g128')).toMatch(/1 bit only/);
    // nothing silently dropped: every combination is a cell or a skipped entry
    const combos = 2 * (2 * 3 * 2 /* rtn,gptq */ + 3 * 2 * 2 /* smoothquant × abits */ + 3 * 2 /* billm */);
    expect(g.cells.length - 2 + g.skipped.length).toBe(combos);
  });

  test('the paper preset: 24 weight-only cells, W8A8/W4A8/W4A4 with and without smoothing, BiLLM w1g128', () => {
    const g = expandGrid({ models: ['/x/llama'], blocks: PAPER_BLOCKS });
    const labels = g.cells.map((c) => c.label);
    expect(labels).toHaveLength(1 + 24 + 6 + 1);
    expect(labels).toEqual(expect.arrayContaining(['smoothquant:w4a4', 'naive:w8a8', 'billm:w1g128', 'awq:w2perchannel']));
    expect(g.skipped).toEqual([]);
  });

  test('unknown methods and bad bits are errors', () => {
    expect(() => expandGrid({ models: ['m'], blocks: [{ methods: ['quip'], wbits: [4], groups: [128] }] })).toThrow(/unknown method "quip"/);
    expect(() => expandGrid({ models: ['m'], blocks: [{ methods: ['rtn'], wbits: [9], groups: [128] }] })).toThrow(/--wbits/);
  });

  test('canonical JSON sorts keys at every level', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: 0, y: 1 }], c: null } })).toBe('{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}');
  });
});

function rec(fp: string, status: 'ok' | 'failed' = 'ok', ppl = 10): StudyRecord {
  return {
    v: 1,
    fp,
    cell: { model: '/m/a', modelName: 'a', method: 'rtn', wbits: 4, abits: 0, groupSize: 128, family: 'weight', label: `rtn:w4g128-${fp}` },
    status,
    results: status === 'ok' ? { wikitext2: { ppl, windows: 1, tokens: 256, seconds: 0.1 } } : null,
    seconds: 1.5,
    ...(status === 'failed' ? { error: 'boom' } : {}),
  };
}

describe('store', () => {
  test('crc32 matches the standard check value', () => {
    expect(crc32('123456789')).toBe(0xcbf43926);
  });

  test('one line per record with a CRC; decode rejects any change', () => {
    const line = encodeRecord(rec('f1'));
    expect(line.endsWith('}\n')).toBe(true);
    expect(line.split('\n')).toHaveLength(2);
    const obj = JSON.parse(line);
    expect(Object.keys(obj)).toEqual(['v', 'fp', 'cell', 'status', 'results', 'seconds', 'crc']);
    expect(decodeRecord(line.trimEnd())).toEqual(rec('f1'));
    expect(decodeRecord(line.trimEnd().replace('"ppl":10', '"ppl":11'))).toBeUndefined();
    expect(decodeRecord(line.slice(0, 40))).toBeUndefined();
  });

  test('append and read back; duplicates ignored (first wins); failed superseded by a later result', () => {
    const dir = path.join(tmp, 'store1');
    const s = new ResultStore(dir);
    expect(s.append(rec('a', 'ok', 10))).toBe(true);
    expect(s.append(rec('a', 'ok', 99))).toBe(false); // not even written
    expect(s.append(rec('b', 'failed'))).toBe(true);
    expect(s.append(rec('b', 'ok', 20))).toBe(true);
    s.close();
    expect(fs.readFileSync(path.join(dir, 'results.log'), 'utf8').trimEnd().split('\n')).toHaveLength(3);
    // a duplicate written by someone else (same fp) is ignored on read
    fs.appendFileSync(path.join(dir, 'results.log'), encodeRecord(rec('a', 'ok', 55)));
    const r = new ResultStore(dir, { readOnly: true });
    expect(r.opened).toMatchObject({ records: 4, duplicates: 1, truncatedBytes: 0, corruptLines: 0 });
    expect(r.records().map((x) => [x.fp, x.status, x.results?.wikitext2.ppl])).toEqual([
      ['a', 'ok', 10],
      ['b', 'ok', 20],
    ]);
  });

  test('a torn last line (kill -9 mid-write) is truncated away; the next append lands on a clean line', () => {
    const dir = path.join(tmp, 'store2');
    const s = new ResultStore(dir);
    s.append(rec('a'));
    s.append(rec('b'));
    s.close();
    const file = path.join(dir, 'results.log');
    const good = fs.statSync(file).size;
    const torn = encodeRecord(rec('c'));
    fs.appendFileSync(file, torn.slice(0, torn.length - 17)); // no newline, cut mid-JSON
    const s2 = new ResultStore(dir);
    expect(s2.opened.truncatedBytes).toBe(torn.length - 17);
    expect(fs.statSync(file).size).toBe(good);
    expect(s2.get('c')).toBeUndefined();
    s2.append(rec('c'));
    s2.close();
    const again = new ResultStore(dir, { readOnly: true });
    expect(again.records().map((x) => x.fp)).toEqual(['a', 'b', 'c']);
    expect(again.opened).toMatchObject({ truncatedBytes: 0, corruptLines: 0 });
  });

  test('a whole last line with a bad CRC is cut; a corrupt line in the middle is ignored', () => {
    const dir = path.join(tmp, 'store3');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'results.log');
    const bad = encodeRecord(rec('x')).replace('"ppl":10', '"ppl":12'); // CRC no longer matches
    fs.writeFileSync(file, encodeRecord(rec('a')) + bad + encodeRecord(rec('b')) + bad);
    const s = new ResultStore(dir);
    expect(s.opened).toMatchObject({ records: 2, corruptLines: 1, truncatedBytes: bad.length });
    expect(s.records().map((x) => x.fp)).toEqual(['a', 'b']);
    expect(s.get('x')).toBeUndefined();
    s.close();
    expect(fs.readFileSync(file, 'utf8').endsWith(encodeRecord(rec('b')))).toBe(true);
  });

  test('a second study on the same folder is refused while the first holds it; a stale lock is taken over', () => {
    const dir = path.join(tmp, 'store4');
    const s = new ResultStore(dir, { lock: true });
    expect(() => new ResultStore(dir, { lock: true })).toThrow(/in use by another lowbit study/);
    s.close();
    fs.writeFileSync(path.join(dir, '.lock'), '999999999'); // no such process
    const t = new ResultStore(dir, { lock: true });
    t.close();
  });
});

describe('resumption after kill -9', () => {
  let dataDir: string;
  const ARGS = ['study', '--models', TINY, '--methods', 'rtn', '--wbits', '8,4,2', '--groups', '128', '--tasks', 'wikitext2', '--max-windows', '1', '--seqlen', '256', '--no-png', '--threads', '2'];
  const args = () => [...ARGS, '--data-dir', dataDir];
  const logLines = (dir: string) => {
    const f = path.join(dir, 'results.log');
    return fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).length : 0;
  };

  beforeAll(() => {
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'pipe' });
    // A small WikiText-2 (its first rows) keeps tokenization out of the way of the kills.
    dataDir = path.join(tmp, 'data');
    fs.mkdirSync(dataDir);
    const rows = JSON.parse(fs.readFileSync(path.join(ROOT, 'data', 'wikitext-2-raw-v1.test.json'), 'utf8')) as string[];
    fs.writeFileSync(path.join(dataDir, 'wikitext-2-raw-v1.test.json'), JSON.stringify(rows.slice(0, 200)));
  });

  /** Starts the study and SIGKILLs it once `until` holds (polled) or after `ms`. */
  async function killWhen(dir: string, until: () => boolean, ms: number): Promise<void> {
    const child: ChildProcess = spawn(process.execPath, [MAIN, ...args(), '--out', dir], { cwd: ROOT, stdio: 'ignore' });
    const exited = new Promise<void>((res) => child.on('exit', () => res()));
    const t0 = Date.now();
    while (child.exitCode === null && !until() && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 5));
    child.kill('SIGKILL');
    await exited;
  }

  test('killed at random moments and rerun: same results.csv as an uninterrupted run, no duplicates', async () => {
    const ref = path.join(tmp, 'ref');
    const r = spawnSync(process.execPath, [MAIN, ...args(), '--out', ref], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\| RTN \| 4 \| 16 \| 128 \| [\d.]+ \(\+[\d.]+\) \|/);
    expect(logLines(ref)).toBe(4);

    const dir = path.join(tmp, 'killed');
    await killWhen(dir, () => logLines(dir) >= 1, 30000); // after the first record
    const k1 = logLines(dir);
    expect(k1).toBeGreaterThanOrEqual(1);
    await killWhen(dir, () => logLines(dir) >= k1 + 1, 30000); // after one more
    await killWhen(dir, () => false, 1200 + Math.random() * 800); // somewhere mid-run
    // kill inside the write: cut a torn record by hand as a kill -9 mid-write() would leave it
    const torn = fs.readFileSync(path.join(ref, 'results.log'), 'utf8').split('\n')[3];
    fs.appendFileSync(path.join(dir, 'results.log'), torn.slice(0, 100));
    expect(logLines(dir)).toBeLessThanOrEqual(5);

    const fin = spawnSync(process.execPath, [MAIN, ...args(), '--out', dir], { cwd: ROOT, encoding: 'utf8' });
    expect(fin.status).toBe(0);
    expect(fin.stderr).toMatch(/cut a torn last record/);
    const lines = fs.readFileSync(path.join(dir, 'results.log'), 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(new Set(lines.map((l) => JSON.parse(l).fp)).size).toBe(4);
    expect(fs.readFileSync(path.join(dir, 'results.csv'), 'utf8')).toBe(fs.readFileSync(path.join(ref, 'results.csv'), 'utf8'));
    expect(fs.existsSync(path.join(dir, '.lock'))).toBe(false);

    // a rerun with everything done runs nothing and writes nothing new
    const again = spawnSync(process.execPath, [MAIN, ...args(), '--out', dir, '--json'], { cwd: ROOT, encoding: 'utf8' });
    expect(again.status).toBe(0);
    expect(JSON.parse(again.stdout).summary).toMatchObject({ total: 4, done: 4, ran: 0, failed: 0 });
    expect(logLines(dir)).toBe(4);
  });
});
