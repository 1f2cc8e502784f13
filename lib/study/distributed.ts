// A study whose cells run on workers (worker.ts) through a BullMQ queue in Redis. The study process plans
// exactly as runStudy does (same fingerprints, same manifest), queues the cells that have no result yet
// (job id = fingerprint), follows the queue's events, and appends each result to the folder's store as it
// comes; the report is then built from the store as for a local study. Events can be missed (a Redis
// reconnection), so a sweep reads every outstanding job's state every few seconds as well; both end in
// settle(), and the store drops a second record of a fingerprint, so a result is stored once.
// On abort the cells no worker has started are withdrawn; running ones finish, and their results wait in
// Redis for the next run of the study on this folder.
import * as path from 'path';
import { Job, Queue, QueueEvents } from 'bullmq';
import { throwIfAborted } from '../eval/forward';
import { LOWBIT_VERSION } from './fingerprint';
import { CELL_JOB, CellJob, checkRedis, DEFAULT_QUEUE, errorLogger, JOB_OPTIONS, queueName, redactUrl, redisConnection } from './jobs';
import { cellInfo, fmtDuration, ModelContexts, openStudyStore, pendingCells, PlannedCell, planStudy, quietProgress, recordLine, StudyOptions, StudySummary, summarize } from './runner';
import type { StudyRecord } from './store';

export interface DistributedStudyOptions extends StudyOptions {
  redis: string;
  /** Queue name prefix shared with the workers (default "lowbit"). */
  queue?: string;
  /** How often every outstanding job's state is read, besides the events (default 5 s). */
  sweepMs?: number;
}

function jobData(pc: PlannedCell, opts: DistributedStudyOptions): CellJob {
  // A calibration source that names a file travels as an absolute path; c4/wikitext2 are names.
  const calib = opts.calib && opts.calib !== 'c4' && opts.calib !== 'wikitext2' ? path.resolve(opts.calib) : opts.calib;
  return {
    v: 1,
    lowbit: LOWBIT_VERSION,
    fp: pc.fp,
    cell: cellInfo(pc.cell),
    spec: pc.cell.spec,
    modelDir: path.resolve(pc.cell.model),
    eval: { ...opts.eval, dataDir: path.resolve(opts.eval.dataDir) },
    calibIds: opts.calibIds && path.resolve(opts.calibIds),
    calib,
    identity: pc.identity,
  };
}

/** The record of a job that failed on the workers (thrown errors after all attempts, or too many dead workers). */
function failedRecord(pc: PlannedCell, job: Job): StudyRecord {
  const reason = /stalled more than/.test(job.failedReason ?? '')
    ? `the workers running it died ${job.stalledCounter ?? 'several'} times (killed, or out of memory?)`
    : `${job.failedReason} (after ${job.attemptsMade} attempt(s) on the workers)`;
  const seconds = job.finishedOn && job.processedOn ? (job.finishedOn - job.processedOn) / 1000 : 0;
  return { v: 1, fp: pc.fp, cell: cellInfo(pc.cell), status: 'failed', results: null, seconds, error: reason, at: new Date().toISOString() };
}

interface Running {
  worker?: string;
  stage?: string;
  done?: number;
  total?: number;
}

export async function runDistributedStudy(opts: DistributedStudyOptions): Promise<StudySummary> {
  const t0 = performance.now();
  const progress = opts.progress ?? quietProgress;
  const store = openStudyStore(opts.dir, progress);
  const closers: (() => Promise<unknown>)[] = [];
  try {
    await checkRedis(opts.redis); // before planning, which may hash a large model for minutes
    const plan = await planStudy(opts, store, new ModelContexts());
    const pending = pendingCells(plan, store, opts.retryFailed);
    const total = plan.cells.length;
    const name = queueName(opts.queue ?? DEFAULT_QUEUE, opts.eval.backend ? 'cuda' : 'cpu');
    const where = `queue ${name} at ${redactUrl(opts.redis)}`;
    progress.log(`study: ${total} cells (${total - pending.length} already in ${store.file}, ${pending.length} to run on ${where}), ${plan.skipped.length} skipped combinations`);
    if (!pending.length) return summarize(plan, store, 0, t0);
    throwIfAborted(opts.signal);

    const connection = redisConnection(opts.redis);
    const logError = errorLogger('study', opts.redis, (l) => progress.log(l));
    const queue = new Queue<CellJob, StudyRecord>(name, { connection });
    closers.push(() => queue.close());
    queue.on('error', logError);
    const events = new QueueEvents(name, { connection });
    closers.push(() => events.close());
    events.on('error', logError);
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);

    const outstanding = new Map(pending.map((pc) => [pc.fp, pc]));
    const running = new Map<string, Running>();
    const settling = new Set<string>();
    const before = total - pending.length;
    let done = before;
    let ran = 0;
    let spent = 0;
    let finished!: () => void;
    const allDone = new Promise<void>((r) => (finished = r));
    progress.start('study: cells to run', pending.length, 'cells');

    const accept = (pc: PlannedCell, rec: StudyRecord) => {
      if (!outstanding.delete(pc.fp)) return;
      running.delete(pc.fp);
      store.append(rec); // false (nothing written) if this fingerprint already has a result
      done++;
      ran++;
      spent += rec.seconds;
      const tag = `[${done}/${total}] ${pc.cell.modelName} ${pc.cell.label}${rec.worker ? ` on ${rec.worker}` : ''}`;
      // Cells run side by side: the ETA divides the mean cell time by the workers seen busy.
      const busy = Math.max(1, running.size + 1);
      progress.log(recordLine(tag, rec, done < total ? ((spent / ran) * (total - done)) / busy : undefined));
      progress.update(done - before);
      if (!outstanding.size) finished();
    };

    /** Reads the job of a cell and acts on its state; a job that has vanished (removed, expired) is queued again. */
    const settle = async (fp: string) => {
      const pc = outstanding.get(fp);
      if (!pc || settling.has(fp)) return;
      settling.add(fp);
      try {
        const job = await queue.getJob(fp);
        if (!outstanding.has(fp)) return;
        if (!job) {
          await queue.add(CELL_JOB, jobData(pc, opts), { ...JOB_OPTIONS, jobId: fp });
          running.delete(fp);
          progress.log(`study: ${pc.cell.modelName} ${pc.cell.label}: its job was gone from Redis (restarted without persistence?); queued again`);
          return;
        }
        const state = await job.getState();
        if (state === 'completed') {
          const rec = job.returnvalue;
          if (rec?.fp === fp && (rec.status === 'ok' || rec.status === 'failed')) accept(pc, rec);
          else accept(pc, { ...failedRecord(pc, job), error: `job ${fp.slice(0, 12)} completed without a lowbit record` });
        } else if (state === 'failed') {
          accept(pc, failedRecord(pc, job));
        } else if (state === 'active') {
          const r = running.get(fp) ?? {};
          r.worker = job.processedBy ?? r.worker;
          running.set(fp, r);
        }
      } catch (e) {
        logError(e as Error);
      } finally {
        settling.delete(fp);
      }
    };

    // Enqueue: a job of this fingerprint may exist already — finished (collected now), queued or running
    // (an earlier run of this study, or another study with the same cell: left as it is).
    const fresh: PlannedCell[] = [];
    for (const pc of pending) {
      const job = await queue.getJob(pc.fp);
      const state = job ? await job.getState() : undefined;
      const failedRun = state === 'failed' || (state === 'completed' && job!.returnvalue?.status !== 'ok');
      if (job && failedRun && opts.retryFailed) {
        await job.remove();
        fresh.push(pc);
      } else if (state === 'completed' || state === 'failed') {
        await settle(pc.fp);
      } else if (!job) {
        fresh.push(pc);
      }
    }
    if (fresh.length) await queue.addBulk(fresh.map((pc) => ({ name: CELL_JOB, data: jobData(pc, opts), opts: { ...JOB_OPTIONS, jobId: pc.fp } })));
    if (outstanding.size) progress.log(`study: ${fresh.length} cell(s) queued, ${outstanding.size - fresh.length} already queued or running`);
    else finished();

    events.on('completed', ({ jobId }) => void settle(jobId));
    events.on('failed', ({ jobId }) => void settle(jobId));
    events.on('active', ({ jobId }) => {
      const pc = outstanding.get(jobId);
      if (!pc) return;
      void queue.getJob(jobId).then((job) => {
        if (!outstanding.has(jobId)) return;
        running.set(jobId, { worker: job?.processedBy });
        progress.log(`study: ${pc.cell.modelName} ${pc.cell.label} started on ${job?.processedBy ?? 'a worker'}`);
      }, logError);
    });
    events.on('progress', ({ jobId, data }) => {
      const r = running.get(jobId);
      const p = data as { stage?: string; done?: number; total?: number };
      if (r && p && typeof p === 'object') Object.assign(r, { stage: p.stage, done: p.done, total: p.total });
    });
    events.on('stalled', ({ jobId }) => {
      const pc = outstanding.get(jobId);
      if (!pc) return;
      const r = running.get(jobId);
      running.delete(jobId);
      progress.log(`study: ${pc.cell.modelName} ${pc.cell.label}: its worker ${r?.worker ?? ''} stopped answering; the cell is back in the queue`);
    });

    const sweepMs = opts.sweepMs ?? 5000;
    let lastStatus = Date.now();
    let lastWorkerCheck = 0;
    const sweep = setInterval(async () => {
      for (const fp of [...outstanding.keys()]) await settle(fp);
      const now = Date.now();
      if (outstanding.size && !running.size && now - lastWorkerCheck > 30_000) {
        lastWorkerCheck = now;
        const n = await queue.getWorkersCount().catch(() => -1);
        if (n === 0) progress.log(`study: no worker is listening on ${where}; start one with: lowbit worker --redis ${redactUrl(opts.redis)}${opts.eval.backend ? ' --device cuda' : ''}`);
      }
      if (running.size && now - lastStatus > 30_000) {
        lastStatus = now;
        const list = [...running].map(([fp, r]) => {
          const pc = outstanding.get(fp);
          const at = r.stage ? ` ${r.stage} ${r.done ?? 0}/${r.total ?? '?'}` : '';
          return `${pc?.cell.label ?? fp.slice(0, 12)} (${r.worker ?? '?'}${at})`;
        });
        progress.log(`study: ${done}/${total} done after ${fmtDuration((performance.now() - t0) / 1000)}; running: ${list.join(', ')}`);
      }
    }, sweepMs);
    closers.unshift(async () => clearInterval(sweep));

    const aborted = new Promise<void>((resolve) => opts.signal?.addEventListener('abort', () => resolve(), { once: true }));
    await Promise.race([allDone, aborted]);
    progress.stop();
    if (opts.signal?.aborted && outstanding.size) {
      let withdrawn = 0;
      for (const fp of outstanding.keys()) {
        const job = await queue.getJob(fp);
        const state = job ? await job.getState() : undefined;
        if (job && (state === 'waiting' || state === 'delayed' || state === 'prioritized')) {
          try {
            await job.remove();
            withdrawn++;
          } catch {
            // a worker took it meanwhile: it runs to the end, and the next run of the study collects it
          }
        }
      }
      progress.log(
        `study: stopped; ${withdrawn} queued cell(s) withdrawn, ${outstanding.size - withdrawn} running cell(s) finish on their workers ` +
          `and wait in Redis for the next \`lowbit study … --redis\` on ${store.dir}`,
      );
      throwIfAborted(opts.signal);
    }
    return summarize(plan, store, ran, t0);
  } finally {
    for (const close of closers) await close().catch(() => {});
    store.close();
  }
}
