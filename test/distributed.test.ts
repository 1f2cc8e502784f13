// Distributed studies against a real redis-server started here on a free port, with the CLI as users run
// it (dist/cli/main.js in child processes): a worker killed with SIGKILL mid-cell and another stopped with
// SIGINT mid-cell, a third worker finishing; every cell is stored exactly once and the report, table and
// plots equal those of a single-process study of the same grid. Also: clear errors for an unreachable
// Redis, and a study stopped with Ctrl-C withdraws the cells no worker has started.
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { Job, Queue } from 'bullmq';
import { loadModel } from '../lib/load/model';
import { dataIdentity, FileHashCache, LOWBIT_VERSION, modelIdentity } from '../lib/study/fingerprint';
import type { CellJob } from '../lib/study/jobs';
import { ModelContexts } from '../lib/study/runner';
import type { StudyRecord } from '../lib/study/store';
import { mapPath, verifyInputs } from '../lib/study/worker';
import { parsePathMap } from '../lib/cli/worker';

const ROOT = path.resolve(__dirname, '..');
const MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');
const HAVE_REDIS = spawnSync('redis-server', ['--version']).status === 0;

if (!HAVE_REDIS) {
  // eslint-disable-next-line no-console
  console.warn('test/distributed.test.ts: SKIPPED — no redis-server on PATH (Debian: apt-get install redis-server; .ci/run installs it)');
}

let tmp: string;
let dataDir: string;
let redis: ChildProcess | undefined;
let url: string;
const children: ChildProcess[] = [];

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, ms = 30000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Proc {
  child: ChildProcess;
  err: () => string;
  exit: Promise<number | null>;
}

function start(args: string[]): Proc {
  const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.resume();
  const exit = new Promise<number | null>((res) => child.on('exit', (code, sig) => res(code ?? (sig ? -1 : null))));
  return { child, err: () => err, exit };
}

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60000, env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// fp + RTN and GPTQ at 4/3/2 bits: seven cells, the GPTQ ones ~2 s each here (long enough to be killed in).
const GRID = ['--models', TINY, '--methods', 'rtn,gptq', '--wbits', '4,3,2', '--groups', '128', '--nsamples', '4', '--calib-seqlen', '512',
  '--tasks', 'wikitext2', '--max-windows', '1', '--seqlen', '256', '--no-png', '--threads', '1'];
const studyArgs = (out: string) => ['study', ...GRID, '--calib-ids', path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), '--data-dir', dataDir, '--out', out];
const workerArgs = (...more: string[]) => ['worker', '--redis', url, '--device', 'cpu', '--threads', '1', '--lock-duration', '2', '--stalled-interval', '1', '--cache-dir', path.join(tmp, 'cache'), ...more];

describe('a worker checks its inputs against the study\'s fingerprint', () => {
  let dir: string;
  afterAll(() => dir && fs.rmSync(dir, { recursive: true, force: true }));

  test('a changed model file, data file, calibration source or lowbit version is an INPUT_MISMATCH naming it', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-verify-'));
    const model = path.join(dir, 'qwen3-tiny');
    fs.cpSync(TINY, model, { recursive: true });
    const data = path.join(dir, 'data');
    fs.mkdirSync(data);
    fs.writeFileSync(path.join(data, 'wikitext-2-raw-v1.test.json'), JSON.stringify(['x'.repeat(100)]));
    const calibIds = path.join(ROOT, 'data', 'calib_c4_128x2048.i16');
    // The study's side, computed here independently of the worker's code path.
    const hashes = new FileHashCache(path.join(dir, 'study'));
    fs.mkdirSync(path.join(dir, 'study'));
    const contexts = new ModelContexts();
    const spec = { method: 'rtn', wbits: 4, abits: 0, groupSize: 128, nsamples: 2, calibSeqLen: 64, seed: 0 } as CellJob['spec'];
    // The first 64 ids of the first 2 rows of 2048, as the int32 array the calibration set holds.
    const rows = fs.readFileSync(calibIds);
    const ids = Int32Array.from({ length: 128 }, (_, i) => rows.readInt16LE(2 * ((i >> 6) * 2048 + (i & 63))));
    const { createHash } = await import('crypto');
    const job: CellJob = {
      v: 1,
      lowbit: LOWBIT_VERSION,
      fp: 'f'.repeat(64),
      cell: { model, modelName: 'qwen3-tiny', method: 'rtn', wbits: 4, abits: 0, groupSize: 128, family: 'weight', label: 'rtn:w4g128' },
      spec,
      modelDir: model,
      eval: { tasks: ['wikitext2'], seqLen: 64, dataDir: data },
      calibIds,
      identity: {
        model: await modelIdentity(model, loadModel(model).files, hashes),
        data: dataIdentity(data),
        calibration: { nsamples: 2, seqLen: 64, source: 'calib_c4_128x2048.i16', ids: createHash('sha256').update(new Uint8Array(ids.buffer)).digest('hex') },
      },
    };
    const workerHashes = new FileHashCache(path.join(dir, 'worker'));
    fs.mkdirSync(path.join(dir, 'worker'));
    await expect(verifyInputs(job, workerHashes, contexts)).resolves.toBeUndefined();

    await expect(verifyInputs({ ...job, lowbit: '0.0.1' }, workerHashes, contexts)).rejects.toMatchObject({ code: 'INPUT_MISMATCH', message: expect.stringMatching(/the study runs lowbit 0\.0\.1/) });
    const other = { ...job, identity: { ...job.identity, calibration: { ...job.identity.calibration!, ids: '0'.repeat(64) } } };
    await expect(verifyInputs(other, workerHashes, contexts)).rejects.toThrow(/calibration windows drawn on this host .* differ from the study's/);
    fs.appendFileSync(path.join(data, 'wikitext-2-raw-v1.test.json'), ' ');
    await expect(verifyInputs(job, workerHashes, contexts)).rejects.toThrow(/data folder .* differs from the study's \(wikitext-2-raw-v1\.test\.json\)/);
    fs.writeFileSync(path.join(data, 'wikitext-2-raw-v1.test.json'), JSON.stringify(['x'.repeat(100)]));
    const cfg = path.join(model, 'config.json');
    fs.writeFileSync(cfg, fs.readFileSync(cfg, 'utf8').replace('}', ' }'));
    await expect(verifyInputs(job, workerHashes, contexts)).rejects.toMatchObject({ code: 'INPUT_MISMATCH', message: expect.stringMatching(/the model at .* differs from the study's \(config\.json\)/) });
  });
});

test('--path-map: the study\'s folders as this host sees them (whole folders only, first match wins)', () => {
  const map = parsePathMap(['/study/models/=/mnt/m', '/study=/data/s']);
  expect(map).toEqual([
    ['/study/models', '/mnt/m'],
    ['/study', '/data/s'],
  ]);
  expect(mapPath('/study/models/qwen3-8b', map)).toBe('/mnt/m/qwen3-8b');
  expect(mapPath('/study/models', map)).toBe('/mnt/m');
  expect(mapPath('/study/data/c4.jsonl', map)).toBe('/data/s/data/c4.jsonl');
  expect(mapPath('/studyX/a', map)).toBe('/studyX/a');
  expect(mapPath('/elsewhere/a', map)).toBe('/elsewhere/a');
  expect(() => parsePathMap(['models=/mnt/m'])).toThrow(/--path-map takes FROM=TO with two absolute folders, got "models=\/mnt\/m"/);
  expect(() => parsePathMap(['/study'])).toThrow(/--path-map takes FROM=TO/);
});

const d = HAVE_REDIS ? describe : describe.skip;

d('distributed study (BullMQ on a local redis-server)', () => {
  let queue: Queue;

  beforeAll(async () => {
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'pipe' });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-dist-'));
    dataDir = path.join(tmp, 'data');
    fs.mkdirSync(dataDir);
    const rows = JSON.parse(fs.readFileSync(path.join(ROOT, 'data', 'wikitext-2-raw-v1.test.json'), 'utf8')) as string[];
    fs.writeFileSync(path.join(dataDir, 'wikitext-2-raw-v1.test.json'), JSON.stringify(rows.slice(0, 200)));
    const port = await freePort();
    url = `redis://127.0.0.1:${port}`;
    redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    redis.stdout!.on('data', (b) => (out += b));
    await waitFor('redis-server to start', () => /Ready to accept connections/.test(out), 10000);
    queue = new Queue('lowbit-cpu', { connection: { url } });
  });

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await queue?.close();
    redis?.kill('SIGKILL');
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('an unreachable Redis is one clear error naming the URL (password hidden), for study and worker', async () => {
    const dead = `redis://:s3cret@127.0.0.1:${await freePort()}`;
    const s = cli([...studyArgs(path.join(tmp, 'unreachable')), '--redis', dead]);
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
    const w = cli(['worker', '--redis', dead, '--device', 'cpu']);
    expect(w.code).toBe(1);
    expect(w.stderr).toMatch(/cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
    for (const r of [s, w]) {
      expect(r.stderr).not.toContain('s3cret');
      expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+\)?/);
    }
  });

  test('workers killed (SIGKILL) and stopped (SIGINT) mid-cell: every cell stored once, report equal to one process', async () => {
    const ref = path.join(tmp, 'ref');
    const r = cli(studyArgs(ref));
    expect(r.code).toBe(0);
    const refLines = fs.readFileSync(path.join(ref, 'results.log'), 'utf8').trimEnd().split('\n');
    expect(refLines).toHaveLength(7);

    const out = path.join(tmp, 'dist');
    const pair = start(workerArgs('--workers', '2')); // one process per worker, like one per GPU
    const study = start([...studyArgs(out), '--redis', url]);
    const gptqActive = (not?: string) =>
      waitFor('a GPTQ cell running on a worker', async () =>
        (await queue.getActive()).find((j: Job) => j.data.cell.method === 'gptq' && j.processedBy && j.processedBy !== not),
      );

    // SIGKILL the worker process in the middle of a GPTQ cell: its job stalls and must be run again.
    const killed = await gptqActive();
    const killedPid = Number(/:(\d+)\/cpu$/.exec(killed.processedBy!)![1]);
    process.kill(killedPid, 'SIGKILL');
    // Ctrl-C the pair while the other is in a GPTQ cell: the cell goes straight back to the queue.
    const stopped = await gptqActive(killed.processedBy);
    pair.child.kill('SIGINT');
    await pair.exit;
    expect(pair.err()).toMatch(new RegExp(`${stopped.data.cell.label} stopped; back in the queue`));
    const back = await queue.getJob(stopped.id!);
    expect(['waiting', 'active', 'completed']).toContain(await back!.getState());
    expect(back!.attemptsMade).toBe(0); // being stopped does not use up an attempt

    const third = start(workerArgs('--name', 'w3'));
    const code = await study.exit;
    expect(study.err()).toMatch(/its worker .* stopped answering; the cell is back in the queue/);
    expect(code).toBe(0);

    const lines = fs.readFileSync(path.join(out, 'results.log'), 'utf8').trimEnd().split('\n');
    const recs = lines.map((l) => JSON.parse(l) as StudyRecord);
    expect(recs).toHaveLength(7);
    expect(new Set(recs.map((x) => x.fp)).size).toBe(7);
    expect(new Set(recs.map((x) => x.fp))).toEqual(new Set(refLines.map((l) => JSON.parse(l).fp))); // same fingerprints as one process
    expect(recs.every((x) => x.status === 'ok')).toBe(true);
    const retried = recs.find((x) => x.fp === killed.id)!;
    expect(retried.worker).not.toBe(killed.processedBy);
    expect((await queue.getJob(killed.id!))!.stalledCounter).toBeGreaterThanOrEqual(1);

    for (const f of ['report.md', 'results.csv']) expect(fs.readFileSync(path.join(out, f), 'utf8')).toBe(fs.readFileSync(path.join(ref, f), 'utf8'));
    const plots = fs.readdirSync(path.join(ref, 'plots')).sort();
    expect(fs.readdirSync(path.join(out, 'plots')).sort()).toEqual(plots);
    for (const p of plots) expect(fs.readFileSync(path.join(out, 'plots', p)).equals(fs.readFileSync(path.join(ref, 'plots', p)))).toBe(true);

    // Everything done: a rerun queues nothing and writes nothing; the worker stops cleanly on Ctrl-C.
    const again = cli([...studyArgs(out), '--redis', url, '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).summary).toMatchObject({ total: 7, done: 7, ran: 0 });
    expect(fs.readFileSync(path.join(out, 'results.log'), 'utf8').trimEnd().split('\n')).toHaveLength(7);
    third.child.kill('SIGINT');
    expect(await third.exit).toBe(0);
  });

  test('a worker paused past its lock (SIGSTOP) and resumed: the cell is taken over and still stored once', async () => {
    const out = path.join(tmp, 'paused');
    const args = [...studyArgs(out).map((a) => (a === '4,3,2' ? '8' : a === 'rtn,gptq' ? 'gptq' : a)), '--redis', url];
    const a = start(workerArgs('--name', 'wa'));
    const study = start(args);
    const job = await waitFor('the GPTQ cell running on wa', async () => (await queue.getActive()).find((j: Job) => j.data.cell.label === 'gptq:w8g128' && j.processedBy === 'wa'));
    a.child.kill('SIGSTOP');
    const b = start(workerArgs('--name', 'wb'));
    expect(await study.exit).toBe(0);
    a.child.kill('SIGCONT'); // wa finishes the cell too, but the job is no longer its to complete
    await waitFor('wa to give up its late result', () => /wa: result of job \w+ dropped: another worker took the cell over/.test(a.err()), 20000);
    const recs = fs.readFileSync(path.join(out, 'results.log'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as StudyRecord);
    expect(recs.map((r) => r.cell.label).sort()).toEqual(['fp', 'gptq:w8g128']);
    expect(recs.find((r) => r.fp === job.id)!.worker).toBe('wb');
    expect((await queue.getJob(job.id!))!.returnvalue.worker).toBe('wb');
    for (const w of [a, b]) w.child.kill('SIGINT');
    expect(await a.exit).toBe(0);
    expect(await b.exit).toBe(0);
  });

  test('a study process killed (SIGKILL) loses nothing: its rerun collects what the workers did meanwhile', async () => {
    await queue.obliterate({ force: true });
    const out = path.join(tmp, 'killed-study');
    const args = [...studyArgs(out).map((a) => (a === 'rtn,gptq' ? 'rtn' : a === '256' ? '128' : a)), '--redis', url];
    const first = start(args);
    await waitFor('the cells to be queued', () => /cell\(s\) queued/.test(first.err()));
    first.child.kill('SIGKILL');
    await first.exit;
    const w = start(workerArgs('--name', 'wk'));
    await waitFor('the worker to finish the 4 cells', async () => (await queue.getCompletedCount()) === 4);
    w.child.kill('SIGINT');
    expect(await w.exit).toBe(0);
    const again = cli([...args, '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).summary).toMatchObject({ total: 4, done: 4, failed: 0 });
    expect(fs.readFileSync(path.join(out, 'results.log'), 'utf8').trimEnd().split('\n')).toHaveLength(4);
    expect(w.err().match(/wk: qwen3-tiny \S+ started/g)).toHaveLength(4); // nothing ran twice
  });

  test('a worker that sees the study\'s folders elsewhere (--path-map) runs the cells from its own copies', async () => {
    await queue.obliterate({ force: true });
    const studyView = path.join(tmp, 'study-view');
    const workerView = path.join(tmp, 'worker-view');
    for (const v of [studyView, workerView]) {
      fs.cpSync(TINY, path.join(v, 'qwen3-tiny'), { recursive: true });
      fs.cpSync(dataDir, path.join(v, 'data'), { recursive: true });
    }
    const out = path.join(tmp, 'mapped');
    const study = start(['study', '--models', path.join(studyView, 'qwen3-tiny'), '--methods', 'rtn', '--wbits', '4', '--groups', '128', '--tasks', 'wikitext2',
      '--max-windows', '1', '--seqlen', '128', '--no-png', '--threads', '1', '--data-dir', path.join(studyView, 'data'), '--out', out, '--redis', url]);
    await waitFor('the cells to be queued', () => /cell\(s\) queued/.test(study.err()));
    fs.renameSync(studyView, `${studyView}-gone`); // the worker's "host" has no such folder
    const w = start(workerArgs('--name', 'wm', '--path-map', `${studyView}=${workerView}`));
    expect(await study.exit).toBe(0);
    w.child.kill('SIGINT');
    expect(await w.exit).toBe(0);
    const recs = fs.readFileSync(path.join(out, 'results.log'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as StudyRecord);
    expect(recs.map((r) => [r.cell.label, r.status]).sort()).toEqual([
      ['fp', 'ok'],
      ['rtn:w4g128', 'ok'],
    ]);
    expect(w.err().match(/wm: qwen3-tiny \S+ started/g)).toHaveLength(2);
  });

  test('a study stopped with Ctrl-C withdraws the cells no worker has started', async () => {
    await queue.obliterate({ force: true });
    const study = start([...studyArgs(path.join(tmp, 'withdrawn')), '--redis', url]);
    await waitFor('the cells to be queued', () => /cell\(s\) queued/.test(study.err()));
    expect(await queue.getWaitingCount()).toBe(7);
    study.child.kill('SIGINT');
    expect(await study.exit).toBe(130);
    expect(study.err()).toMatch(/7 queued cell\(s\) withdrawn/);
    expect(await queue.getWaitingCount()).toBe(0);
  });
});
