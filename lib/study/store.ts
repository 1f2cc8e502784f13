// The study's durable store: DIR/results.log, an append-only JSON-lines log. Each record is one line
//   {"v":1,"fp":…,"cell":…,"status":…,"results":…,"seconds":…,…,"crc":<crc32 of the line before ,"crc">}
// appended with a single write() of the whole line, then fsync. On open, a torn or corrupt last line (a
// kill -9 during the write) fails its JSON or CRC check and is truncated away; a corrupt line elsewhere is
// ignored. Records are keyed by fingerprint: the first successful record of a fingerprint wins, later
// duplicates are ignored, and a failed record is superseded by a later one. A lock file keeps two studies
// from writing one folder at once.
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError } from '../load/errors';
import type { CellInfo } from './grid';

export interface TaskMetrics {
  ppl?: number | null;
  acc?: number;
  acc_norm?: number;
  [k: string]: unknown;
}

export interface StudyRecord {
  v: 1;
  fp: string;
  cell: CellInfo;
  status: 'ok' | 'failed';
  results: Record<string, TaskMetrics> | null;
  seconds: number;
  error?: string;
  quant?: { seconds: number; calibration: string | null; avgBits: number | null };
  at?: string;
  /** The worker that ran the cell, in a distributed study ("host:pid/cuda:0"). */
  worker?: string;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: string | Uint8Array): number {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const CRC_KEY = ',"crc":';

/** The record as one log line (with its newline): the JSON without crc, then ,"crc":N} appended. */
export function encodeRecord(rec: StudyRecord): string {
  const { crc: _drop, ...rest } = rec as StudyRecord & { crc?: number };
  const body = JSON.stringify(rest);
  const head = body.slice(0, -1);
  return `${head}${CRC_KEY}${crc32(head)}}\n`;
}

/** Parses one line (without its newline); undefined if it is not a whole, CRC-valid record. */
export function decodeRecord(line: string): StudyRecord | undefined {
  const at = line.lastIndexOf(CRC_KEY);
  if (at < 0 || !line.endsWith('}')) return undefined;
  const head = line.slice(0, at);
  const crc = Number(line.slice(at + CRC_KEY.length, -1));
  if (!Number.isInteger(crc) || crc !== crc32(head)) return undefined;
  let rec: StudyRecord;
  try {
    rec = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (rec?.v !== 1 || typeof rec.fp !== 'string' || !rec.cell) return undefined;
  delete (rec as { crc?: number }).crc;
  return rec;
}

export interface OpenReport {
  records: number;
  /** Bytes of a torn or corrupt tail that were cut off. */
  truncatedBytes: number;
  /** Corrupt lines before the tail, ignored. */
  corruptLines: number;
  duplicates: number;
}

export function writeFileAtomically(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fsyncDir(path.dirname(file));
}

function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // not every platform can fsync a directory
  }
}

export class ResultStore {
  readonly dir: string;
  readonly file: string;
  readonly opened: OpenReport;
  private byFp = new Map<string, StudyRecord>();
  private order: string[] = [];
  private fd: number | undefined;
  private lockFile: string | undefined;

  /** Reads DIR/results.log (repairing a torn tail unless readOnly); with readOnly nothing is written. */
  constructor(dir: string, opts: { readOnly?: boolean; lock?: boolean } = {}) {
    this.dir = path.resolve(dir);
    this.file = path.join(this.dir, 'results.log');
    if (!opts.readOnly) fs.mkdirSync(this.dir, { recursive: true });
    if (opts.lock) this.lock();
    this.opened = this.load(!opts.readOnly);
  }

  private lock(): void {
    const file = path.join(this.dir, '.lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
        this.lockFile = file;
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        const pid = Number(fs.readFileSync(file, 'utf8'));
        if (Number.isInteger(pid) && pid > 0 && alive(pid)) {
          throw new LowbitError('BAD_ARGUMENT', `${this.dir} is in use by another lowbit study (pid ${pid}); wait for it or remove ${file}`);
        }
        fs.rmSync(file, { force: true }); // stale: its process is gone (killed)
      }
    }
    throw new LowbitError('IO_ERROR', `cannot lock ${this.dir}`);
  }

  private load(repair: boolean): OpenReport {
    const rep: OpenReport = { records: 0, truncatedBytes: 0, corruptLines: 0, duplicates: 0 };
    if (!fs.existsSync(this.file)) return rep;
    const buf = fs.readFileSync(this.file);
    let pos = 0;
    let goodEnd = 0; // byte offset just past the last whole, valid line
    while (pos < buf.length) {
      const nl = buf.indexOf(0x0a, pos);
      const end = nl < 0 ? buf.length : nl;
      const rec = nl < 0 ? undefined : decodeRecord(buf.subarray(pos, end).toString('utf8'));
      if (rec) {
        rep.records++;
        if (!this.accept(rec)) rep.duplicates++;
        goodEnd = end + 1;
      } else if (end - pos > 0 || nl < 0) {
        rep.corruptLines++;
      } else {
        goodEnd = end + 1; // an empty line
      }
      pos = end + 1;
    }
    if (goodEnd < buf.length) {
      // Everything after the last valid line is a torn write (or garbage): cut it off.
      const tailLines = buf.subarray(goodEnd).toString('utf8').split('\n').filter((l) => l.length).length;
      rep.corruptLines -= Math.min(rep.corruptLines, tailLines);
      rep.truncatedBytes = buf.length - goodEnd;
      if (repair) {
        const fd = fs.openSync(this.file, 'r+');
        try {
          fs.ftruncateSync(fd, goodEnd);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
    }
    return rep;
  }

  /** Adds a record to the in-memory view; false when it is a duplicate that loses to an earlier record. */
  private accept(rec: StudyRecord): boolean {
    const prev = this.byFp.get(rec.fp);
    if (prev && prev.status === 'ok') return false;
    if (!prev) this.order.push(rec.fp);
    this.byFp.set(rec.fp, rec);
    return true;
  }

  get(fp: string): StudyRecord | undefined {
    return this.byFp.get(fp);
  }

  /** All records, one per fingerprint, in the order they were first written. */
  records(): StudyRecord[] {
    return this.order.map((fp) => this.byFp.get(fp)!);
  }

  /** Appends a record durably (one write, then fsync); false (nothing written) if its fingerprint already has a result. */
  append(rec: StudyRecord): boolean {
    const prev = this.byFp.get(rec.fp);
    if (prev && prev.status === 'ok') return false;
    const line = Buffer.from(encodeRecord(rec), 'utf8');
    if (this.fd === undefined) {
      const created = !fs.existsSync(this.file);
      this.fd = fs.openSync(this.file, 'a');
      if (created) fsyncDir(this.dir);
    }
    let off = 0;
    while (off < line.length) off += fs.writeSync(this.fd, line, off, line.length - off);
    fs.fsyncSync(this.fd);
    this.accept(rec);
    return true;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    if (this.lockFile) fs.rmSync(this.lockFile, { force: true });
    this.lockFile = undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
