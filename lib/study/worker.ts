// A distributed study's worker: takes cells from the queue of its device kind, checks that its copies of
// the model, data and calibration files are the ones the study fingerprinted, runs the cell with the
// study's own runCell and returns the record as the job's result (the study process stores it; see jobs.ts).
// Stopping (the signal) aborts the cell in progress between steps and puts its job straight back in the
// queue for another worker; a worker that dies leaves its job to the stalled check.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Job, WaitingError, Worker } from 'bullmq';
import { DeviceSpec, deviceName } from '../eval/cuda';
import { LowbitError } from '../load/errors';
import { loadModel } from '../load/model';
import { calibrationIdentity, canonicalJson, CellIdentity, dataIdentity, FileHashCache, LOWBIT_VERSION, modelIdentity } from './fingerprint';
import { CELL_JOB, CellJob, checkRedis, errorLogger, LOCK_DEFAULTS, queueName, redactUrl, redisConnection, DEFAULT_QUEUE } from './jobs';
import { ModelContexts, quietProgress, recordLine, runCell, StudyProgress } from './runner';
import type { StudyRecord } from './store';

export interface WorkerOptions {
  redis: string;
  queue?: string;
  device: DeviceSpec;
  /** Cells at once in this process (default 1). */
  concurrency?: number;
  /** Shown in the study's log and stored with each record (default host:pid/device). */
  name?: string;
  /** Where model file hashes are cached (default ~/.cache/lowbit). */
  cacheDir?: string;
  /**
   * [study prefix, local prefix] pairs: a job's model, data and calibration paths under a study prefix are read
   * under the local one instead (hosts that mount the files elsewhere); the files are still checked by content.
   */
  pathMap?: [string, string][];
  lockDurationMs?: number;
  stalledIntervalMs?: number;
  signal?: AbortSignal;
  progress?: StudyProgress;
}

export interface WorkerSummary {
  name: string;
  queue: string;
  cells: number; // records returned
  failed: number; // of which failed cells
}

export function defaultCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'lowbit');
}

function mismatch(job: CellJob, what: string): LowbitError {
  return new LowbitError('INPUT_MISMATCH', `${job.cell.modelName} ${job.cell.label}: ${what}`);
}

/** Names of the keys whose values differ between two identity maps. */
function differing<T>(want: Record<string, T>, have: Record<string, T>, same: (a: T, b: T) => boolean): string[] {
  const names = new Set([...Object.keys(want), ...Object.keys(have)]);
  return [...names].filter((k) => !(k in want) || !(k in have) || !same(want[k], have[k])).sort();
}

/**
 * Checks this host's inputs against the study's fingerprint: lowbit's version, the model files' sha256,
 * the calibration windows, and the data files' names and sizes (their mtimes, which the study uses to
 * notice a local edit, differ between hosts for the same bytes).
 */
export async function verifyInputs(job: CellJob, hashes: FileHashCache, contexts: ModelContexts): Promise<void> {
  if (job.lowbit !== LOWBIT_VERSION) throw mismatch(job, `the study runs lowbit ${job.lowbit}, this worker ${LOWBIT_VERSION}: run the same version on both`);
  const want: CellIdentity = job.identity;
  const base = loadModel(job.modelDir);
  const model = await modelIdentity(job.modelDir, base.files, hashes);
  hashes.save();
  const badModel = differing(want.model, model, (a, b) => a === b);
  if (badModel.length) throw mismatch(job, `the model at ${job.modelDir} on this host differs from the study's (${badModel.join(', ')})`);
  const data = dataIdentity(job.eval.dataDir);
  const badData = differing(want.data, data, (a, b) => a[0] === b[0]);
  if (badData.length) throw mismatch(job, `the data folder ${job.eval.dataDir} on this host differs from the study's (${badData.join(', ')})`);
  if (want.calibration) {
    const src = { calibIds: job.calibIds, calib: job.calib, dataDir: job.eval.dataDir };
    const have = calibrationIdentity(contexts.get(job.modelDir).calibration(base, job.spec!, src));
    if (canonicalJson(have) !== canonicalJson(want.calibration)) {
      throw mismatch(job, `the calibration windows drawn on this host (${have.source}, sha256 ${have.ids.slice(0, 12)}) differ from the study's (${want.calibration.source}, ${want.calibration.ids.slice(0, 12)})`);
    }
  }
}

/** Forwards a cell's progress to the job (read by the study), at most once a second, and to the local progress. */
function jobProgress(job: Job, local: StudyProgress): StudyProgress {
  let stage = '';
  let total = 0;
  let last = 0;
  const push = (done: number, force: boolean) => {
    const now = Date.now();
    if (!force && now - last < 1000) return;
    last = now;
    job.updateProgress({ stage, done, total }).catch(() => {}); // progress is advisory; a lost update is harmless
  };
  return {
    start(label, n, unit) {
      stage = label.slice(label.lastIndexOf(' ') + 1);
      total = n;
      push(0, true);
      local.start(label, n, unit);
    },
    update(done, tokens) {
      push(done, done >= total);
      local.update(done, tokens);
    },
    stop: () => local.stop(),
    log: (line) => local.log(line),
  };
}

/** A path of the study's as this host sees it: the first pair whose study prefix it is under (as a whole folder). */
export function mapPath(p: string, map: [string, string][]): string {
  for (const [from, to] of map) {
    if (p === from) return to;
    if (p.startsWith(from.endsWith(path.sep) ? from : from + path.sep)) return path.join(to, path.relative(from, p));
  }
  return p;
}

/** The job with its file paths (model, data folder, calibration ids or text file) mapped to this host's. */
function localPaths(job: CellJob, map: [string, string][]): CellJob {
  if (!map.length) return job;
  const file = (p?: string) => (p && path.isAbsolute(p) ? mapPath(p, map) : p);
  return { ...job, modelDir: mapPath(job.modelDir, map), eval: { ...job.eval, dataDir: mapPath(job.eval.dataDir, map) }, calibIds: file(job.calibIds), calib: file(job.calib) };
}

/** BullMQ's errors about a job this worker no longer holds, said in terms of what happens to the cell. */
function lockError(e: Error): Error | undefined {
  const m = /^(could not renew lock for job|Missing lock for job|Lock mismatch for job|Missing key for job) ([^. ]+)/.exec(e.message);
  if (!m) return undefined;
  const job = m[2].slice(0, 12);
  if (/renew/.test(m[1])) return new Error(`lost the lock on job ${job} (Redis unreachable, or this process stalled longer than --lock-duration): another worker may take the cell over`);
  if (/key/.test(m[1])) return new Error(`result of job ${job} dropped: the job is gone from Redis (restarted without persistence?); the study queues the cell again`);
  return new Error(`result of job ${job} dropped: another worker took the cell over while this one was stalled`);
}

/** Serves cells until the signal fires; resolves once the worker has let go of every job. */
export async function runWorker(opts: WorkerOptions): Promise<WorkerSummary> {
  const progress = opts.progress ?? quietProgress;
  const name = opts.name ?? `${os.hostname()}:${process.pid}/${deviceName(opts.device)}`;
  const queue = queueName(opts.queue ?? DEFAULT_QUEUE, opts.device.type);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  fs.mkdirSync(cacheDir, { recursive: true });
  const hashes = new FileHashCache(cacheDir);
  const contexts = new ModelContexts(4);
  const summary: WorkerSummary = { name, queue, cells: 0, failed: 0 };
  if (opts.signal?.aborted) return summary;
  await checkRedis(opts.redis);

  const stopping = new AbortController();
  const processor = async (job: Job<CellJob, StudyRecord>, token?: string): Promise<StudyRecord> => {
    if (job.name !== CELL_JOB || job.data?.v !== 1 || typeof job.data.fp !== 'string') {
      throw new LowbitError('QUEUE_ERROR', `job ${job.id} on ${queue} is not a lowbit cell (v ${job.data?.v}); was it queued by another version?`);
    }
    const d = localPaths(job.data, opts.pathMap ?? []);
    const tag = `${d.cell.modelName} ${d.cell.label}`;
    progress.log(`${name}: ${tag} started${job.attemptsStarted > 1 ? ` (attempt ${job.attemptsStarted})` : ''}`);
    try {
      await verifyInputs(d, hashes, contexts);
      const cell = { ...d.cell, spec: d.spec };
      const rec = await runCell(cell, d.fp, contexts, {
        eval: d.eval,
        calibIds: d.calibIds,
        calib: d.calib,
        modelDir: d.modelDir,
        gpu: opts.device.type === 'cuda' ? opts.device : undefined,
        tag,
        signal: stopping.signal,
        progress: jobProgress(job, progress),
      });
      summary.cells++;
      if (rec.status !== 'ok') summary.failed++;
      progress.log(`${name}: ${recordLine(tag, rec)}`);
      return { ...rec, worker: name };
    } catch (e) {
      if (stopping.signal.aborted && token) {
        // Straight back to the queue, without using up an attempt, for another worker to take.
        await job.moveToWait(token);
        progress.log(`${name}: ${tag} stopped; back in the queue`);
        throw new WaitingError();
      }
      progress.log(`${name}: ${tag}: ${(e as Error).message}`);
      throw e;
    }
  };

  const worker = new Worker<CellJob, StudyRecord>(queue, processor, {
    connection: redisConnection(opts.redis),
    name,
    concurrency: opts.concurrency ?? 1,
    lockDuration: opts.lockDurationMs ?? LOCK_DEFAULTS.lockDurationMs,
    stalledInterval: opts.stalledIntervalMs ?? LOCK_DEFAULTS.stalledIntervalMs,
    maxStalledCount: LOCK_DEFAULTS.maxStalledCount,
    autorun: false,
  });
  const logError = errorLogger(name, opts.redis, (l) => progress.log(l));
  worker.on('error', (e) => logError(lockError(e) ?? e));
  const stop = () => stopping.abort();
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    await worker.waitUntilReady();
    progress.log(`${name}: waiting for cells on queue ${queue} at ${redactUrl(opts.redis)}`);
    const running = worker.run().catch((e: Error) => progress.log(`${name}: ${e.message}`));
    await new Promise<void>((resolve) => (stopping.signal.aborted ? resolve() : stopping.signal.addEventListener('abort', () => resolve(), { once: true })));
    await worker.close(); // waits for the aborted cell's processor to put its job back
    await running;
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    await worker.close();
  }
  progress.log(`${name}: stopped after ${summary.cells} cell(s)${summary.failed ? `, ${summary.failed} of them failed` : ''}`);
  return summary;
}
