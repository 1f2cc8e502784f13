// What a distributed study and its workers share through Redis: the queue names, the job a cell becomes,
// the job and lock settings, and connecting with an error that names the URL.
//
// A cell's job id is its fingerprint, so a cell is queued at most once whoever enqueues it (BullMQ ignores
// an add whose id exists) and its result is found again by fingerprint. Workers never touch the study's
// store: a worker returns the cell's record as the job's return value, Redis keeps it (30 days), and only
// the study process — which holds the folder's lock — appends it to results.log, where a second record of
// a fingerprint is dropped. So a cell run twice (a worker thought dead that was only slow) is counted once,
// workers need no shared filesystem for results, and a study process that dies loses nothing: its next
// run collects the results that came in meanwhile.
import type { ConnectionOptions, JobsOptions } from 'bullmq';
import Redis from 'ioredis';
import { LowbitError } from '../load/errors';
import type { QuantSpec } from '../quant/spec';
import type { CellIdentity, EvalSettings } from './fingerprint';
import type { CellInfo } from './grid';

export const DEFAULT_QUEUE = 'lowbit';

/** One queue per kind of device: a cell whose evaluation the study puts on a GPU is only taken by GPU workers. */
export function queueName(base: string, device: 'cpu' | 'cuda'): string {
  if (!/^[A-Za-z0-9_.-]+$/.test(base)) throw new LowbitError('BAD_ARGUMENT', `--queue takes letters, digits, "_", "." and "-", got "${base}"`);
  return `${base}-${device}`;
}

export interface CellJob {
  v: 1;
  lowbit: string;
  fp: string;
  cell: CellInfo;
  spec?: QuantSpec;
  /** Absolute paths as the study host names them; a worker reads them there or where its --path-map says. */
  modelDir: string;
  eval: EvalSettings;
  calibIds?: string;
  calib?: string;
  /** What the study fingerprinted; a worker checks its own files against it before running the cell. */
  identity: CellIdentity;
}

export const CELL_JOB = 'cell';

const DAY_S = 24 * 3600;

/**
 * attempts: errors thrown by a worker (not by the cell, which returns a failed record instead) are
 * host problems — the model missing at that path, a different copy of a file — so the job is tried again,
 * perhaps on another host. Finished jobs are kept 30 days: that long a study process may be away and still
 * collect its results.
 */
export const JOB_OPTIONS: JobsOptions = {
  attempts: 3,
  backoff: { type: 'fixed', delay: 10_000 },
  removeOnComplete: { age: 30 * DAY_S },
  removeOnFail: { age: 30 * DAY_S },
};

/**
 * A worker holds a lock on its job and renews it every lockDuration/2 from its event loop (the cell's
 * compute runs on native threads, hashing is chunked, so the loop stays free). A worker that dies stops
 * renewing; within lockDuration + stalledInterval another worker's stalled check puts the job back in the
 * queue. 60 s + 30 s keeps false alarms away (a loop stalled for a minute) at the cost of that delay; a cell
 * may be orphaned twice (maxStalledCount) before it is failed, so a cell that kills every worker taking it
 * (out of memory) does not take the whole fleet down.
 */
export const LOCK_DEFAULTS = { lockDurationMs: 60_000, stalledIntervalMs: 30_000, maxStalledCount: 2 };

/** The URL with any password replaced by ***, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/^(\w+:\/\/[^:@/]*:)[^@/]*@/, '$1***@');
}

export function redisConnection(url: string): ConnectionOptions {
  // null: commands wait through a reconnection instead of failing (BullMQ requires it for workers).
  return { url, maxRetriesPerRequest: null };
}

/** Connects once without retrying, so an unreachable or wrong URL is one clear error rather than endless reconnects. */
export async function checkRedis(url: string, option = '--redis'): Promise<void> {
  if (!/^rediss?:\/\/[^/]/.test(url)) throw new LowbitError('QUEUE_ERROR', `${option} ${redactUrl(url)}: not a Redis URL; expected redis://[:password@]host[:port][/db] (rediss:// for TLS)`);
  const probe = new Redis(url, { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  let cause: NodeJS.ErrnoException | undefined;
  probe.on('error', (e: NodeJS.ErrnoException) => (cause ??= e)); // the socket's own error (ECONNREFUSED…), not ioredis' "Connection is closed"
  try {
    await probe.connect();
    await probe.ping();
  } catch (e) {
    const err = cause ?? (e as NodeJS.ErrnoException);
    throw new LowbitError('QUEUE_ERROR', `cannot reach Redis at ${redactUrl(url)} (${err.code ?? err.message}): start redis-server there or fix ${option}`);
  } finally {
    probe.disconnect();
  }
}

/**
 * Logs a queue client's errors without letting them crash the process (BullMQ reconnects by itself), each
 * distinct message at most once a minute: a Redis outage repeats the same error many times a second.
 */
export function errorLogger(who: string, url: string, log: (line: string) => void): (e: Error) => void {
  const last = new Map<string, number>();
  return (e: Error) => {
    const code = (e as NodeJS.ErrnoException).code;
    // Socket errors carry a string code (ECONNREFUSED…); BullMQ's script errors a number.
    const msg = typeof code === 'string' ? `Redis at ${redactUrl(url)}: ${code} (reconnecting)` : e.message;
    const now = Date.now();
    if (now - (last.get(msg) ?? -Infinity) < 60_000) return;
    last.set(msg, now);
    log(`${who}: ${msg}`);
  };
}
