// A cell's fingerprint: sha256 over everything its results depend on — the model's files (full sha256 of
// each safetensors file, computed once and cached in the study folder under path + size + mtime), the
// quantization spec (canonical JSON), the calibration ids, the evaluation settings (with the GPU backend,
// when not the CPU) and the data files' sizes and mtimes, and lowbit's version. Same fingerprint ⇒ the stored result stands; anything changed ⇒ rerun.
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import type { CalibrationSet } from '../calibrate/calibration';
import type { GpuDType } from '../eval/cuda';
import type { QuantSpec } from '../quant/spec';
import { writeFileAtomically } from './store';

// eslint-disable-next-line @typescript-eslint/no-var-requires
export const LOWBIT_VERSION: string = require('../../package.json').version;

/** JSON with object keys sorted at every level, so equal values always give equal text. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(',')}}`;
}

export function sha256(data: string | Uint8Array): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Full sha256 of files, cached in DIR/hashes.json under absolute path + size + mtime (a changed file is hashed again). */
export class FileHashCache {
  private readonly file: string;
  private entries: Record<string, { size: number; mtimeMs: number; sha256: string }> = {};
  private dirty = false;

  constructor(dir: string) {
    this.file = path.join(dir, 'hashes.json');
    try {
      this.entries = JSON.parse(fs.readFileSync(this.file, 'utf8'));
    } catch {
      this.entries = {}; // absent or unreadable: hashes are recomputed
    }
  }

  /** Reads in chunks with awaits between them, so a worker's event loop (and its job lock) keeps going while a large model is hashed. */
  async hash(file: string): Promise<string> {
    const abs = path.resolve(file);
    const st = fs.statSync(abs);
    const e = this.entries[abs];
    if (e && e.size === st.size && e.mtimeMs === st.mtimeMs) return e.sha256;
    const h = crypto.createHash('sha256');
    const fh = await fs.promises.open(abs, 'r');
    try {
      const buf = Buffer.allocUnsafe(1 << 22);
      let n: number;
      while ((n = (await fh.read(buf, 0, buf.length, null)).bytesRead) > 0) h.update(buf.subarray(0, n));
    } finally {
      await fh.close();
    }
    const digest = h.digest('hex');
    this.entries[abs] = { size: st.size, mtimeMs: st.mtimeMs, sha256: digest };
    this.dirty = true;
    return digest;
  }

  save(): void {
    if (!this.dirty) return;
    writeFileAtomically(this.file, JSON.stringify(this.entries, null, 1) + '\n');
    this.dirty = false;
  }
}

/** The model's identity: the sha256 of each weight file, config.json and the tokenizer files (by name). */
export async function modelIdentity(modelDir: string, weightFiles: string[], cache: FileHashCache): Promise<Record<string, string>> {
  const id: Record<string, string> = {};
  const files = [...weightFiles.map((f) => path.resolve(modelDir, f))];
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    const p = path.join(modelDir, f);
    if (fs.existsSync(p)) files.push(p);
  }
  for (const f of files) id[path.basename(f)] = await cache.hash(f);
  return id;
}

/** Sizes and mtimes of the data folder's files (the evaluation and calibration data). */
export function dataIdentity(dataDir: string): Record<string, [number, number]> {
  const out: Record<string, [number, number]> = {};
  const walk = (dir: string, rel: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const n of names) {
      const p = path.join(dir, n);
      const st = fs.statSync(p);
      if (st.isDirectory()) walk(p, rel + n + '/');
      else out[rel + n] = [st.size, Math.round(st.mtimeMs)];
    }
  };
  walk(path.resolve(dataDir), '');
  return out;
}

/** Where a cell is evaluated when not on the CPU; part of the fingerprint, since GPU numbers differ slightly from the CPU's. */
export interface GpuBackend {
  type: 'cuda';
  dtype: GpuDType;
  actFp32: boolean;
}

export interface EvalSettings {
  tasks: string[];
  seqLen: number;
  maxWindows?: number;
  limit?: number;
  dataDir: string;
  /** Absent: the CPU (and fingerprints stay those of studies made before GPUs could run cells). */
  backend?: GpuBackend;
}

export type CalibrationIdentity = { nsamples: number; seqLen: number; source: string; ids: string };

/** Everything outside the cell's spec and evaluation settings that its fingerprint covers. */
export interface CellIdentity {
  model: Record<string, string>;
  calibration?: CalibrationIdentity;
  data: Record<string, [number, number]>;
}

export function calibrationIdentity(c: CalibrationSet): CalibrationIdentity {
  const ids = sha256(new Uint8Array(c.ids.buffer, c.ids.byteOffset, c.ids.byteLength));
  // The source is named by its base name only, so the same ids from another folder fingerprint alike.
  return { nsamples: c.nsamples, seqLen: c.seqLen, source: path.basename(c.source), ids };
}

/** What of a cell the GPU backend computes; bumped when more moves there, so that results stored by a backend that
 *  did less on the GPU are recomputed (2: the log-likelihood tasks, activation-quantized models and BiLLM's
 *  calibration joined perplexity and GPTQ/AWQ/SmoothQuant). Not part of CPU fingerprints. */
export const GPU_COVERAGE = 2;

export function cellFingerprint(parts: CellIdentity & { spec?: QuantSpec; eval: EvalSettings }): string {
  return sha256(
    canonicalJson({
      lowbit: LOWBIT_VERSION,
      model: parts.model,
      spec: parts.spec ?? null,
      calibration: parts.calibration ?? null,
      eval: {
        tasks: parts.eval.tasks,
        seqLen: parts.eval.seqLen,
        maxWindows: parts.eval.maxWindows ?? null,
        limit: parts.eval.limit ?? null,
        backend: parts.eval.backend && { ...parts.eval.backend, coverage: GPU_COVERAGE },
      },
      data: parts.data,
    }),
  );
}
