/**
 * Throughput of a distributed study (cells per minute) with 1, 2, … worker processes on one host, against
 * the same grid run by one `lowbit study` process, same machine, same run.
 *
 *   sh bench/distributed/run.sh [--workers 1,2] [--device cpu|cuda] [--model DIR] [--redis URL] [--tasks wikitext2,c4] [--reps 2]
 *     [--methods rtn,gptq,awq] [--wbits 4,3] [--groups 128] [--max-windows 2] [--seqlen 512]
 *
 * Uses the built CLI (dist/cli/main.js) as users do. Starts a redis-server on a free port unless --redis is
 * given. Each worker count gets its own queue and study folder, so nothing is reused between rows; the
 * workers are started and ready before the study's clock starts. With --device cuda the workers are
 * `lowbit worker --device cuda --workers N` (GPUs 0..N-1) and the studies evaluate on the GPU
 * (--device cuda: quantization still runs on the CPU cores, shared out among the workers). Every
 * distributed report is checked equal to the single-process one. Each figure is the best of --reps runs,
 * the setups taking turns within a rep (the machine may be shared).
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..', '..', '..'); // build/bench-ts/bench → the checkout
const MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

const workerCounts = arg('workers', '1,2').split(',').map(Number);
const device = arg('device', 'cpu');
const model = path.resolve(arg('model', path.join(ROOT, 'models', 'qwen3-tiny')));
const tasks = arg('tasks', 'wikitext2,c4');
const reps = Number(arg('reps', '2'));
// The grid: by default small and CPU-bound (AWQ/RTN quantize on the CPU); --methods gptq --wbits 8,4,3,2 on a larger
// model makes the cells GPU-bound with --device cuda.
const GRID = ['--models', model, '--methods', arg('methods', 'rtn,gptq,awq'), '--wbits', arg('wbits', '4,3'), '--groups', arg('groups', '128'),
  '--nsamples', '8', '--calib-seqlen', '512', '--calib-ids', path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), '--tasks', tasks,
  '--max-windows', arg('max-windows', '2'), '--seqlen', arg('seqlen', '512'), '--no-png',
  ...(device === 'cpu' ? [] : ['--device', 'cuda'])];

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

function run(args: string[], onErr?: (s: string) => void): { child: ChildProcess; exit: Promise<number> } {
  const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (b) => onErr?.(String(b)));
  return { child, exit: new Promise((res) => child.on('exit', (code) => res(code ?? 1))) };
}

async function timedStudy(args: string[]): Promise<number> {
  const t0 = performance.now();
  let err = '';
  const code = await run(['study', ...GRID, ...args], (s) => (err += s)).exit;
  if (code !== 0) throw new Error(`lowbit study ${args.join(' ')} exited ${code}:\n${err.slice(-2000)}`);
  return (performance.now() - t0) / 1000;
}

async function main(): Promise<void> {
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} missing: build with npx tsc -p tsconfig.build.json`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-bench-dist-'));
  let redis: ChildProcess | undefined;
  let url = arg('redis', '');
  try {
    if (!url) {
      const port = await freePort();
      url = `redis://127.0.0.1:${port}`;
      redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 500));
    }
    const cores = os.availableParallelism();
    let cells = 0;
    let refReport = '';
    let base = Infinity;
    const best = new Map<number, number>();
    const same = new Map<number, boolean>();
    for (let rep = 0; rep < reps; rep++) {
      const ref = path.join(tmp, `one-process-${rep}`);
      base = Math.min(base, await timedStudy(['--out', ref, '--threads', String(cores), ...(device === 'cpu' ? [] : ['--device', 'cuda:0'])]));
      cells = fs.readFileSync(path.join(ref, 'results.log'), 'utf8').trimEnd().split('\n').length;
      refReport = fs.readFileSync(path.join(ref, 'report.md'), 'utf8');
      for (const n of workerCounts) {
        const queue = `bench${n}r${rep}x${Date.now()}`;
        let err = '';
        const threads = device === 'cpu' ? ['--threads', String(Math.max(1, Math.floor(cores / n)))] : [];
        const workers = run(['worker', '--redis', url, '--queue', queue, '--device', device, '--workers', String(n), ...threads], (s) => (err += s));
        const t0 = Date.now();
        while ((err.match(/waiting for cells/g) ?? []).length < n) {
          if (Date.now() - t0 > 60_000 || workers.child.exitCode !== null) throw new Error(`workers did not start:\n${err.slice(-2000)}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const out = path.join(tmp, `workers-${n}-${rep}`);
        best.set(n, Math.min(best.get(n) ?? Infinity, await timedStudy(['--out', out, '--redis', url, '--queue', queue])));
        workers.child.kill('SIGINT');
        await workers.exit;
        same.set(n, (same.get(n) ?? true) && fs.readFileSync(path.join(out, 'report.md'), 'utf8') === refReport);
      }
    }
    const perMin = (secs: number) => (60 * cells) / secs;
    const rows: string[][] = [['one `lowbit study` process', String(cells), base.toFixed(1), perMin(base).toFixed(2), '–', '1.00', '–']];
    const one = best.get(workerCounts[0])!;
    for (const n of workerCounts) {
      const secs = best.get(n)!;
      rows.push([`${n} worker process${n > 1 ? 'es' : ''} (${device})`, String(cells), secs.toFixed(1), perMin(secs).toFixed(2), (one / secs).toFixed(2), (base / secs).toFixed(2), same.get(n) ? 'yes' : 'NO']);
    }
    const head = ['setup', 'cells', 'wall s', 'cells/min', `vs ${workerCounts[0]} worker(s)`, 'vs one process', 'report = one process'];
    console.log(`model ${path.basename(model)}, ${cores} cores, device ${device}, grid ${GRID.slice(2).join(' ')}, best of ${reps}, node ${process.version}, ${new Date().toISOString()}`);
    console.log(`| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|`);
    for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  } finally {
    redis?.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
