// Runs a study in one process. planStudy fingerprints every cell before any compute (model file hashes,
// calibration ids, data files) and writes the manifest; runCell runs one cell — load the model fresh
// (weights are memory-mapped and quantization rewrites the in-memory model), quantize, evaluate — and
// returns its record; runStudy appends each record durably as it comes. The distributed study and its
// workers (distributed.ts, worker.ts) use the same three, so both modes give the same records.
// An abort stops between steps and writes nothing for the cell in progress; a failing cell is recorded as
// failed with its message and skipped on later runs unless retryFailed is set.
import * as fs from 'fs';
import * as path from 'path';
import type { CalibrationSet } from '../calibrate/calibration';
import { CalibrationSource, loadCalibration } from '../calibrate/resolve';
import { CudaSpec, firstLinearWithoutWeight, toDevice } from '../eval/cuda';
import { evaluate, EvalOptions } from '../eval/evaluate';
import { throwIfAborted } from '../eval/forward';
import { loadModel } from '../load/model';
import { loadTokenizer } from '../load/tokenizer';
import type { LoadedModel } from '../load/types';
import { checkSpecForModel, needsCalibration, quantize } from '../quant/pipeline';
import type { QuantSpec } from '../quant/spec';
import { calibrationIdentity, CellIdentity, cellFingerprint, dataIdentity, EvalSettings, FileHashCache, LOWBIT_VERSION, modelIdentity } from './fingerprint';
import { Cell, CellInfo, Grid, SkippedCell } from './grid';
import { ResultStore, StudyRecord, writeFileAtomically } from './store';

export interface StudyProgress {
  start(label: string, total: number, unit?: string): void;
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
  /** The GPU(s) to evaluate on when eval.backend is cuda (default cuda:0; a group bounds a layer split). */
  gpu?: CudaSpec;
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

export const quietProgress: StudyProgress = { start() {}, update() {}, stop() {}, log() {} };

export function fmtDuration(s: number): string {
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

/** The log line for a finished cell: "TAG done in 3.1s: wikitext2 ppl 197.20 | ETA 2m10s" or "TAG FAILED: why". */
export function recordLine(tag: string, rec: StudyRecord, eta?: number): string {
  return rec.status === 'ok'
    ? `${tag} done in ${rec.seconds.toFixed(1)}s: ${briefResults(rec.results!)}${eta !== undefined ? ` | ETA ${fmtDuration(eta)}` : ''}`
    : `${tag} FAILED: ${rec.error}`;
}

export function cellInfo(c: Cell): CellInfo {
  const { spec: _spec, ...info } = c;
  return info;
}

interface ModelContext {
  encode: (text: string) => ArrayLike<number>;
  calibration: (model: LoadedModel, spec: QuantSpec, src: CalibrationSource) => CalibrationSet;
}

/**
 * Per model folder: the tokenizer (with a memo for the long evaluation texts, which every cell encodes
 * alike) and the calibration sets drawn so far. A worker serves cells of many models over its life, so it
 * keeps the `keep` most recently used models only.
 */
export class ModelContexts {
  private readonly byModel = new Map<string, ModelContext>();

  constructor(private readonly keep = Infinity) {}

  get(modelDir: string): ModelContext {
    const key = path.resolve(modelDir);
    let ctx = this.byModel.get(key);
    if (ctx) {
      this.byModel.delete(key); // re-inserted last: most recently used
    } else {
      const tok = loadTokenizer(modelDir);
      const memo = new Map<string, ArrayLike<number>>();
      const encode = (t: string) => {
        if (t.length < 20000) return tok.encode(t);
        let ids = memo.get(t);
        if (!ids) memo.set(t, (ids = Int32Array.from(tok.encode(t))));
        return ids;
      };
      const sets = new Map<string, CalibrationSet>();
      const calibration = (model: LoadedModel, spec: QuantSpec, src: CalibrationSource) => {
        const k = `${src.calibIds ?? ''}\u0000${src.calib ?? ''}\u0000${src.dataDir}\u0000${spec.nsamples}x${spec.calibSeqLen}s${spec.seed}`;
        let set = sets.get(k);
        if (!set) sets.set(k, (set = loadCalibration(model, encode, spec, src)));
        return set;
      };
      ctx = { encode, calibration };
    }
    this.byModel.set(key, ctx);
    while (this.byModel.size > this.keep) this.byModel.delete(this.byModel.keys().next().value!);
    return ctx;
  }
}

export interface PlannedCell {
  cell: Cell;
  fp: string;
  identity: CellIdentity;
}

export interface StudyPlan {
  cells: PlannedCell[]; // runnable cells, in grid order
  skipped: SkippedCell[];
}

function calibrationSource(opts: { calibIds?: string; calib?: string; eval: EvalSettings }): CalibrationSource {
  return { calibIds: opts.calibIds, calib: opts.calib, dataDir: opts.eval.dataDir };
}

/** Fingerprints every cell (cells a model cannot take join the skipped list) and writes DIR/study.json. */
export async function planStudy(opts: StudyOptions, store: ResultStore, contexts: ModelContexts): Promise<StudyPlan> {
  const hashes = new FileHashCache(store.dir);
  const data = dataIdentity(opts.eval.dataDir);
  const src = calibrationSource(opts);
  const extraSkipped: SkippedCell[] = [];
  const cells: PlannedCell[] = [];
  for (const model of [...new Set(opts.grid.cells.map((c) => c.model))]) {
    throwIfAborted(opts.signal);
    const base = loadModel(model); // memory-mapped; cheap
    const id = await modelIdentity(model, base.files, hashes);
    hashes.save();
    const ctx = contexts.get(model);
    for (const cell of opts.grid.cells.filter((c) => c.model === model)) {
      if (cell.spec) {
        try {
          checkSpecForModel(base, cell.spec);
        } catch (e) {
          extraSkipped.push({ modelName: cell.modelName, method: cell.method, wbits: cell.wbits, abits: cell.abits, groupSize: cell.groupSize, label: cell.label, reason: (e as Error).message });
          continue;
        }
      }
      const calibration = cell.spec && needsCalibration(cell.spec) ? calibrationIdentity(ctx.calibration(base, cell.spec, src)) : undefined;
      const identity: CellIdentity = { model: id, calibration, data };
      cells.push({ cell, fp: cellFingerprint({ ...identity, spec: cell.spec, eval: opts.eval }), identity });
    }
  }
  const skipped = [...opts.grid.skipped, ...extraSkipped];
  const manifest: Manifest = {
    v: 1,
    lowbit: LOWBIT_VERSION,
    updated: new Date().toISOString(),
    eval: { ...opts.eval, dataDir: path.resolve(opts.eval.dataDir) },
    calibration: { calibIds: opts.calibIds, calib: opts.calib },
    cells: cells.map((c) => ({ fp: c.fp, cell: cellInfo(c.cell) })),
    skipped,
  };
  writeFileAtomically(manifestPath(store.dir), JSON.stringify(manifest, null, 1) + '\n');
  return { cells, skipped };
}

export interface CellRun {
  eval: EvalSettings;
  calibIds?: string;
  calib?: string;
  /** Where this process finds the model (default: the cell's own path). */
  modelDir?: string;
  gpu?: CudaSpec;
  /** Prefix of the progress labels, e.g. "[3/30] qwen3-tiny gptq:w4g128". */
  tag: string;
  signal?: AbortSignal;
  progress?: StudyProgress;
}

/** Runs one cell to its record: 'ok' with the results, or 'failed' with the error. Throws only when aborted. */
export async function runCell(cell: Cell, fp: string, contexts: ModelContexts, run: CellRun): Promise<StudyRecord> {
  const progress = run.progress ?? quietProgress;
  const c0 = performance.now();
  const modelDir = run.modelDir ?? cell.model;
  const backend = run.eval.backend;
  let model: LoadedModel | undefined;
  try {
    const { encode, calibration } = contexts.get(modelDir);
    model = loadModel(modelDir);
    let quant: StudyRecord['quant'];
    if (cell.spec) {
      const calib = needsCalibration(cell.spec) ? calibration(model, cell.spec, calibrationSource(run)) : undefined;
      const layers = model.config.numLayers;
      progress.start(`${run.tag} quantize`, layers, 'layers');
      // Calibrated methods run where the cell is evaluated (the fingerprint names that backend, and GPU calibration
      // differs from the CPU's in rounding), not wherever a GPU happens to be.
      const device = backend?.type === 'cuda' ? (run.gpu ?? { type: 'cuda', index: 0 }) : ({ type: 'cpu' } as const);
      const rep = await quantize(model, cell.spec, { calibration: calib, device, signal: run.signal, onProgress: (p) => progress.update(p.layer, 0) });
      progress.update(layers, 0);
      progress.stop();
      quant = { seconds: rep.seconds, calibration: rep.calibration ? path.basename(rep.calibration) : null, avgBits: rep.avgBits ?? null };
    }
    if (backend?.type === 'cuda') {
      if (!firstLinearWithoutWeight(model)) await toDevice(model, run.gpu ?? { type: 'cuda', index: 0 }, { dtype: backend.dtype, actFp32: backend.actFp32 });
    }
    const evalOpts = {
      tasks: run.eval.tasks,
      dataDir: run.eval.dataDir,
      seqLen: run.eval.seqLen,
      maxWindows: run.eval.maxWindows,
      limit: run.eval.limit, // zero-shot tasks: at most N examples each
      signal: run.signal,
      onTaskStart: (task: string, n: number) => progress.start(`${run.tag} ${task}`, n),
      onProgress: (p: { windows?: number; done?: number; tokens?: number }) => progress.update(p.windows ?? p.done ?? 0, p.tokens ?? 0),
    } as EvalOptions;
    const results = await evaluate(model, encode, evalOpts);
    progress.stop();
    throwIfAborted(run.signal);
    return { v: 1, fp, cell: cellInfo(cell), status: 'ok', results: results as unknown as StudyRecord['results'], seconds: (performance.now() - c0) / 1000, quant, at: new Date().toISOString() };
  } catch (e) {
    progress.stop();
    const err = e as Error;
    if (err?.name === 'AbortError' || run.signal?.aborted) throw e; // nothing recorded for this cell
    return { v: 1, fp, cell: cellInfo(cell), status: 'failed', results: null, seconds: (performance.now() - c0) / 1000, error: err?.message ?? String(e), at: new Date().toISOString() };
  } finally {
    if (model && backend) await toDevice(model, { type: 'cpu' }); // frees the GPU copy now, not at some later GC
  }
}

/** The cells with no result in the store yet (or a failed one, with retryFailed). */
export function pendingCells(plan: StudyPlan, store: ResultStore, retryFailed?: boolean): PlannedCell[] {
  return plan.cells.filter((c) => {
    const r = store.get(c.fp);
    return !r || (r.status === 'failed' && retryFailed);
  });
}

export function summarize(plan: StudyPlan, store: ResultStore, ran: number, t0: number): StudySummary {
  const status = plan.cells.map((c) => store.get(c.fp)?.status);
  return {
    total: plan.cells.length,
    done: status.filter((s) => s === 'ok').length,
    ran,
    failed: status.filter((s) => s === 'failed').length,
    skipped: plan.skipped.length,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Opens the study folder's store (locked: one study per folder) and says what its opening repaired. */
export function openStudyStore(dir: string, progress: StudyProgress): ResultStore {
  const store = new ResultStore(dir, { lock: true });
  if (store.opened.truncatedBytes) progress.log(`study: cut a torn last record (${store.opened.truncatedBytes} bytes) from ${store.file}`);
  if (store.opened.corruptLines) progress.log(`study: ignored ${store.opened.corruptLines} corrupt line(s) in ${store.file}`);
  return store;
}

export async function runStudy(opts: StudyOptions): Promise<StudySummary> {
  const t0 = performance.now();
  const progress = opts.progress ?? quietProgress;
  const store = openStudyStore(opts.dir, progress);
  try {
    const contexts = new ModelContexts();
    const plan = await planStudy(opts, store, contexts);
    const pending = pendingCells(plan, store, opts.retryFailed);
    const total = plan.cells.length;
    let done = total - pending.length;
    progress.log(`study: ${total} cells (${done} already in ${store.file}, ${pending.length} to run), ${plan.skipped.length} skipped combinations`);
    let ran = 0;
    let spent = 0;
    for (const { cell, fp } of pending) {
      throwIfAborted(opts.signal);
      const tag = `[${done + 1}/${total}] ${cell.modelName} ${cell.label}`;
      const rec = await runCell(cell, fp, contexts, { ...opts, tag });
      store.append(rec);
      ran++;
      done++;
      spent += rec.seconds;
      progress.log(recordLine(tag, rec, done < total ? (spent / ran) * (total - done) : undefined));
    }
    return summarize(plan, store, ran, t0);
  } finally {
    store.close();
  }
}
