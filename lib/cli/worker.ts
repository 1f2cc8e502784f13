// `lowbit worker`: serves a distributed study's cells. On a host with several GPUs (--device cuda, the
// default there) it starts one worker process per GPU (or per --gpus-per-worker GPUs, for models that must be
// split by layers) — separate processes, so each has its own CPU thread pool (the pool runs one parallel region
// at a time) and a crash takes down one GPU's worker only — and waits for them. Those children run in their own
// process group, so a Ctrl-C reaches them once, through this process; they stop by themselves if it dies (their IPC
// channel closes).
import { ChildProcess, spawn } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import { cudaDevices, DeviceSpec, deviceName, parseDevice, resolveDevice } from '../eval/cuda';
import { LowbitError } from '../load/errors';
import { applyThreads, fail, intOption } from './common';
import { createProgress } from './progress';

interface WorkerCliOptions {
  redis: string;
  queue: string;
  device?: string;
  workers?: number;
  gpusPerWorker: number;
  concurrency: number;
  threads?: number;
  name?: string;
  cacheDir?: string;
  pathMap: string[];
  lockDuration: number;
  stalledInterval: number;
}

/** First SIGINT/SIGTERM (or the parent going away): stop gracefully; another one more than a second later: exit now. */
function stopSignal(): AbortSignal {
  const ac = new AbortController();
  let first = 0;
  const onSignal = () => {
    const now = Date.now();
    if (!first) {
      first = now;
      process.stderr.write('\nlowbit worker: stopping: the cell in progress goes back to the queue (again to quit now)\n');
      ac.abort();
      // Putting the cell back needs Redis; without it, give up after a minute and leave the cell to the stalled check.
      setTimeout(() => {
        process.stderr.write('lowbit worker: could not hand the cell back within 60 s (Redis unreachable?); quitting\n');
        process.exit(130);
      }, 60_000).unref();
    } else if (now - first > 1000) {
      process.exit(130);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  if (process.channel) {
    process.on('disconnect', onSignal); // started by a multi-GPU parent that has gone
    process.channel.unref(); // the channel alone does not keep this process alive
  }
  return ac.signal;
}

/**
 * The host's GPUs dealt to worker processes perWorker at a time, in order (GPUs left over are not used): each
 * worker's cells run on the first of its GPUs and split a model by layers only across its own.
 */
export function workerGpuGroups(gpus: number[], perWorker: number): number[][] {
  if (perWorker > gpus.length) {
    throw new LowbitError('BAD_ARGUMENT', `--gpus-per-worker ${perWorker}: this host has ${gpus.length} GPU${gpus.length === 1 ? '' : 's'}`);
  }
  return Array.from({ length: Math.floor(gpus.length / perWorker) }, (_, i) => gpus.slice(i * perWorker, (i + 1) * perWorker));
}

/** The devices this invocation serves: one per worker process. A worker's GPUs are its own (never another's). */
function devicesFor(o: WorkerCliOptions): DeviceSpec[] {
  const requested = o.device ?? (resolveDevice().type === 'cuda' ? 'cuda' : 'cpu');
  const d = parseDevice(requested);
  const n = o.workers;
  if (d.type === 'cpu') return Array.from({ length: n ?? 1 }, () => d);
  if (/:\d/.test(requested)) {
    resolveDevice(requested); // checks they exist
    const own: DeviceSpec = { ...d, group: d.group ?? [d.index] };
    return Array.from({ length: n ?? 1 }, () => own);
  }
  resolveDevice('cuda'); // clear error without CUDA or without a GPU
  const groups = workerGpuGroups(cudaDevices().map((g) => g.index), o.gpusPerWorker);
  return Array.from({ length: n ?? groups.length }, (_, i): DeviceSpec => ({ type: 'cuda', index: groups[i % groups.length][0], group: groups[i % groups.length] }));
}

/** --path-map FROM=TO values → [from, to] pairs, both absolute folders (FROM as the study host names it). */
export function parsePathMap(values: string[]): [string, string][] {
  return values.map((v) => {
    const i = v.indexOf('=');
    const from = i > 0 ? v.slice(0, i) : '';
    const to = i > 0 ? v.slice(i + 1) : '';
    if (!path.isAbsolute(from) || !path.isAbsolute(to)) throw new LowbitError('BAD_ARGUMENT', `--path-map takes FROM=TO with two absolute folders, got "${v}"`);
    return [path.normalize(from).replace(/(.)\/+$/, '$1'), path.normalize(to)];
  });
}

/** Runs `lowbit worker` once per device as child processes; resolves with the worst exit code. */
async function supervise(devices: DeviceSpec[], o: WorkerCliOptions): Promise<number> {
  const threads = o.threads ?? Math.max(1, Math.floor(os.availableParallelism() / devices.length));
  const base = ['worker', '--redis', o.redis, '--queue', o.queue, '--concurrency', String(o.concurrency), '--threads', String(threads), '--lock-duration', String(o.lockDuration), '--stalled-interval', String(o.stalledInterval)];
  if (o.cacheDir) base.push('--cache-dir', o.cacheDir);
  for (const m of o.pathMap) base.push('--path-map', m);
  process.stderr.write(`lowbit worker: ${devices.length} worker processes (${devices.map(deviceName).join(', ')}), ${threads} CPU threads each\n`);
  const children: ChildProcess[] = devices.map((d, i) =>
    spawn(process.execPath, [process.argv[1], ...base, '--device', deviceName(d), '--workers', '1', ...(o.name ? ['--name', `${o.name}-${i}`] : [])], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      detached: true, // own process group: a terminal's Ctrl-C reaches them once, forwarded below
    }),
  );
  const forward = (sig: NodeJS.Signals) => () => children.forEach((c) => c.exitCode === null && c.kill(sig));
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  const codes = await Promise.all(children.map((c) => new Promise<number>((res) => c.on('exit', (code, sig) => res(code ?? (sig ? 128 + (os.constants.signals[sig] ?? 0) : 1))))));
  return Math.max(...codes.map((c) => (c === 130 ? 0 : c)));
}

export function workerCommand(): Command {
  return new Command('worker')
    .description('run the cells of distributed studies (lowbit study --redis) taken from a Redis queue, until stopped')
    .requiredOption('--redis <url>', 'the Redis of the study, e.g. redis://host:6379')
    .option('--queue <name>', 'queue name shared with the study', 'lowbit')
    .option('--device <dev>', 'cpu, cuda (every GPU: one worker process each, or per --gpus-per-worker) or cuda:N[,M…] (default: cuda when there is a GPU)')
    .option('--workers <n>', 'worker processes on this host (default: one per GPU or GPU group, 1 on the CPU)', intOption('--workers', 1, 1024))
    .option('--gpus-per-worker <k>', 'with --device cuda: GPUs each worker process owns, for models that must be split by layers', intOption('--gpus-per-worker', 1, 64), 1)
    .option('--concurrency <n>', 'cells at once in each worker process', intOption('--concurrency', 1, 64), 1)
    .option('--threads <n>', 'CPU threads per worker process (default: the cores shared out among them)', intOption('--threads', 1, 1024))
    .option('--name <name>', 'worker name in the study log and records (default host:pid/device)')
    .option('--cache-dir <dir>', 'where model file hashes are cached (default ~/.cache/lowbit)')
    .option('--path-map <from=to>', 'read the study\'s files under absolute folder FROM at TO on this host (repeatable; checked by content as always)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--lock-duration <s>', 'seconds a job lock lasts unless renewed: a dead worker\'s cell is retried after about this plus --stalled-interval', intOption('--lock-duration', 1, 86400), 60)
    .option('--stalled-interval <s>', 'seconds between checks for jobs of dead workers', intOption('--stalled-interval', 1, 86400), 30)
    .action(async (o: WorkerCliOptions) => {
      try {
        const pathMap = parsePathMap(o.pathMap);
        const devices = devicesFor(o);
        if (devices.length > 1) {
          // eslint-disable-next-line @typescript-eslint/no-var-requires
          await (require('../study/jobs') as typeof import('../study/jobs')).checkRedis(o.redis); // one error, not one per child
          process.exitCode = await supervise(devices, o);
          return;
        }
        const signal = stopSignal();
        applyThreads(o.threads);
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const { runWorker } = require('../study/worker') as typeof import('../study/worker'); // BullMQ loads only here (~0.1 s a start)
        await runWorker({
          redis: o.redis,
          queue: o.queue,
          device: devices[0],
          concurrency: o.concurrency,
          name: o.name,
          cacheDir: o.cacheDir,
          pathMap,
          lockDurationMs: o.lockDuration * 1000,
          stalledIntervalMs: o.stalledInterval * 1000,
          signal,
          progress: createProgress(process.stderr, false),
        });
      } catch (e) {
        fail(e);
      }
    });
}
