// Runs a study: for each model, the tokenizer is loaded once (and the evaluation texts encoded once);
// each pending cell (its fingerprint has no result in the store) loads the model fresh (weights are
// memory-mapped and quantization rewrites the in-memory model), quantizes, evaluates and appends one
// durable record. An abort stops between steps and writes nothing for the cell in progress; a failing cell
// is recorded as failed with its message and skipped on later runs unless retryFailed is set.
import * as fs from 'fs';
import * as path from 'path';
import type { CalibrationSet } from '../calibrate/calibration';
import { loadCalibration } from '../calibrate/resolve';
import { evaluate, EvalOptions } from '../eval/evaluate';
import { throwIfAborted } from '../eval/forward';
import { loadModel } from '../load/model';
import { loadTokenizer } from '../load/tokenizer';
import type { LoadedModel } from '../load/types';
import { checkSpecForModel, needsCalibration, quantize } from '../quant/pipeline';
import { calibrationIdentity, cellFingerprint, dataIdentity, EvalSettings, FileHashCache, LOWBIT_VERSION, modelIdentity } from './fingerprint';
import { Cell, CellInfo, Grid, SkippedCell } from './grid';
import { ResultStore, StudyRecord, writeFileAtomically } from './store';

export interface StudyProgress {
  start(label: string, total: number): void;
  update(done: number, tokens?: number): void;
  stop(): void;
  log(line: string): void;
}

export interface StudyOptions {
  dir: string;
  grid: Grid;
  eval: EvalSettings;
  calibIds?: string;
  calib?: string;
  retryFailed?: boolean;
  signal?: AbortSignal;
  progress?: StudyProgress;
}

export interface ManifestCell {
  fp: string;
  cell: CellInfo;
}

/** DIR/study.json: the latest run's grid (cells with fingerprints, skipped combinations) and settings. */
export interface Manifest {
  v: 1;
  lowbit: string;
  updated: string;
  eval: Omit<EvalSettings, 'dataDir'> & { dataDir: string };
  calibration: { calibIds?: string; calib?: string };
  cells: ManifestCell[];
  skipped: SkippedCell[];
}

export interface StudySummary {
  total: number;
  done: number; // results present at the end (ok)
  ran: number; // cells run by this call
  failed: number; // cells whose record is a failure
  skipped: number;
  seconds: number;
}

export function manifestPath(dir: string): string {
  return path.join(dir, 'study.json');
}

export function readManifest(dir: string): Manifest | undefined {
  try {
    return JSON.parse(fs.readFileSync(manifestPath(dir), 'utf8')) as Manifest;
  } catch {
    return undefined;
  }
}

const quietProgress: StudyProgress = { start() {}, update() {}, stop() {}, log() {} };

function fmtDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}m`;
}

function briefResults(results: Record<string, { ppl?: number | null; acc?: number }>): string {
  return Object.entries(results)
    .map(([t, r]) => (r.ppl !== undefined ? `${t} ppl ${r.ppl === null ? 'NaN' : r.ppl.toFixed(2)}` : r.acc !== undefined ? `${t} acc ${(100 * r.acc).toFixed(1)}` : t))
    .join(', ');
}

export async function runStudy(opts: StudyOptions): Promise<StudySummary> {
  const t0 = performance.now();
  const progress = opts.progress ?? quietProgress;
  const store = new ResultStore(opts.dir, { lock: true });
  try {
    if (store.opened.truncatedBytes) progress.log(`study: cut a torn last record (${store.opened.truncatedBytes} bytes) from ${store.file}`);
    if (store.opened.corruptLines) progress.log(`study: ignored ${store.opened.corruptLines} corrupt line(s) in ${store.file}`);
    const hashes = new FileHashCache(store.dir);
    const data = dataIdentity(opts.eval.dataDir);
    const evalKey = { ...opts.eval };

    // Per model: tokenizer, memoized encoder, calibration sets and fingerprints, all before any compute.
    interface ModelCtx {
      encode: (t: string) => ArrayLike<number>;
      calib: (cell: Cell, model: LoadedModel) => CalibrationSet;
    }
    const ctx = new Map<string, ModelCtx>();
    const fps = new Map<Cell, string>();
    const extraSkipped: SkippedCell[] = [];
    const runnable: Cell[] = [];
    for (const model of [...new Set(opts.grid.cells.map((c) => c.model))]) {
      throwIfAborted(opts.signal);
      const base = loadModel(model); // memory-mapped; cheap
      const id = modelIdentity(model, base.files, hashes);
      hashes.save();
      const tok = loadTokenizer(model);
      const memo = new Map<string, ArrayLike<number>>();
      const encode = (t: string) => {
        if (t.length < 20000) return tok.encode(t);
        let ids = memo.get(t);
        if (!ids) memo.set(t, (ids = Int32Array.from(tok.encode(t))));
        return ids;
      };
      const calibSets = new Map<string, CalibrationSet>();
      const calib = (cell: Cell, m: LoadedModel) => {
        const s = cell.spec!;
        const key = `${s.nsamples}x${s.calibSeqLen}s${s.seed}`;
        let set = calibSets.get(key);
        if (!set) calibSets.set(key, (set = loadCalibration(m, encode, s, { calibIds: opts.calibIds, calib: opts.calib, dataDir: opts.eval.dataDir })));
        return set;
      };
      ctx.set(model, { encode, calib });
      for (const cell of opts.grid.cells.filter((c) => c.model === model)) {
        if (cell.spec) {
          try {
            checkSpecForModel(base, cell.spec);
          } catch (e) {
            extraSkipped.push({ modelName: cell.modelName, method: cell.method, wbits: cell.wbits, abits: cell.abits, groupSize: cell.groupSize, label: cell.label, reason: (e as Error).message });
            continue;
          }
        }
        const calibration = cell.spec && needsCalibration(cell.spec) ? calibrationIdentity(calib(cell, base)) : undefined;
        fps.set(cell, cellFingerprint({ model: id, spec: cell.spec, calibration, eval: evalKey, data }));
        runnable.push(cell);
      }
    }
    const skipped = [...opts.grid.skipped, ...extraSkipped];
    const manifest: Manifest = {
      v: 1,
      lowbit: LOWBIT_VERSION,
      updated: new Date().toISOString(),
      eval: { ...opts.eval, dataDir: path.resolve(opts.eval.dataDir) },
      calibration: { calibIds: opts.calibIds, calib: opts.calib },
      cells: runnable.map((c) => ({ fp: fps.get(c)!, cell: cellInfo(c) })),
      skipped,
    };
    writeFileAtomically(manifestPath(store.dir), JSON.stringify(manifest, null, 1) + '\n');

    const pending = runnable.filter((c) => {
      const r = store.get(fps.get(c)!);
      return !r || (r.status === 'failed' && opts.retryFailed);
    });
    const total = runnable.length;
    let done = total - pending.length;
    progress.log(
      `study: ${total} cells (${done} already in ${store.file}, ${pending.length} to run), ${skipped.length} skipped combinations`,
    );
    let ran = 0;
    let spent = 0;
    for (const cell of pending) {
      throwIfAborted(opts.signal);
      const tag = `[${done + 1}/${total}] ${cell.modelName} ${cell.label}`;
      const c0 = performance.now();
      const { encode, calib } = ctx.get(cell.model)!;
      let rec: StudyRecord;
      try {
        const model = loadModel(cell.model);
        let quant: StudyRecord['quant'];
        if (cell.spec) {
          const calibration = needsCalibration(cell.spec) ? calib(cell, model) : undefined;
          progress.start(`${tag} quantize`, model.config.numLayers);
          const rep = await quantize(model, cell.spec, { calibration, signal: opts.signal, onProgress: (p) => progress.update(p.layer, 0) });
          progress.update(model.config.numLayers, 0);
          progress.stop();
          quant = { seconds: rep.seconds, calibration: rep.calibration ? path.basename(rep.calibration) : null, avgBits: rep.avgBits ?? null };
        }
        const evalOpts = {
          tasks: opts.eval.tasks,
          dataDir: opts.eval.dataDir,
          seqLen: opts.eval.seqLen,
          maxWindows: opts.eval.maxWindows,
          limit: opts.eval.limit, // zero-shot tasks: at most N examples each
          signal: opts.signal,
          onTaskStart: (task: string, n: number) => progress.start(`${tag} ${task}`, n),
          onProgress: (p: { windows?: number; done?: number; tokens?: number }) => progress.update(p.windows ?? p.done ?? 0, p.tokens ?? 0),
        } as EvalOptions;
        const results = await evaluate(model, encode, evalOpts);
        progress.stop();
        rec = { v: 1, fp: fps.get(cell)!, cell: cellInfo(cell), status: 'ok', results: results as unknown as StudyRecord['results'], seconds: (performance.now() - c0) / 1000, quant, at: new Date().toISOString() };
      } catch (e) {
        progress.stop();
        const err = e as Error;
        if (err?.name === 'AbortError' || opts.signal?.aborted) throw e; // nothing written for this cell
        rec = { v: 1, fp: fps.get(cell)!, cell: cellInfo(cell), status: 'failed', results: null, seconds: (performance.now() - c0) / 1000, error: err?.message ?? String(e), at: new Date().toISOString() };
      }
      throwIfAborted(opts.signal);
      store.append(rec);
      ran++;
      done++;
      spent += rec.seconds;
      const eta = (spent / ran) * (total - done);
      progress.log(
        rec.status === 'ok'
          ? `${tag} done in ${rec.seconds.toFixed(1)}s: ${briefResults(rec.results!)}${done < total ? ` | ETA ${fmtDuration(eta)}` : ''}`
          : `${tag} FAILED: ${rec.error}`,
      );
    }
    const status = runnable.map((c) => store.get(fps.get(c)!)?.status);
    const failed = status.filter((s) => s === 'failed').length;
    const ok = status.filter((s) => s === 'ok').length;
    return { total, done: ok, ran, failed, skipped: skipped.length, seconds: (performance.now() - t0) / 1000 };
  } finally {
    store.close();
  }
}

function cellInfo(c: Cell): CellInfo {
  const { spec: _spec, ...info } = c;
  return info;
}
