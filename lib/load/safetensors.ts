// safetensors reading (memory-mapped, zero-copy) and writing (atomic), after the reference format:
// 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, __metadata__},
// then the data region that data_offsets index into. https://github.com/huggingface/safetensors
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { addon } from '../native/addon';
import { LowbitError, fsReason } from './errors';

export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'U16' | 'U32' | 'BOOL';

export type TensorData =
  | Float64Array
  | Float32Array
  | Uint16Array // F16, BF16 and U16: half-precision floats travel as their raw bits
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array // U8 and BOOL
  | Uint32Array;

type TypedArrayCtor<T extends TensorData> = {
  new (length: number): T;
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): T;
  readonly BYTES_PER_ELEMENT: number;
};

const ARRAY_OF: Record<DType, TypedArrayCtor<TensorData>> = {
  F64: Float64Array,
  F32: Float32Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  I64: BigInt64Array,
  I32: Int32Array,
  I16: Int16Array,
  I8: Int8Array,
  U8: Uint8Array,
  U16: Uint16Array,
  U32: Uint32Array,
  BOOL: Uint8Array,
};

export const DTYPE_SIZE: Readonly<Record<DType, number>> = Object.fromEntries(
  Object.entries(ARRAY_OF).map(([k, c]) => [k, c.BYTES_PER_ELEMENT]),
) as Record<DType, number>;

function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(ARRAY_OF, s);
}

export interface TensorInfo {
  dtype: DType;
  shape: number[];
  /** Byte range inside the file's data region (after the header). */
  begin: number;
  end: number;
}

export interface Tensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** A view over the mapped file (read-only memory: writing into it crashes the process). */
  data: TensorData;
  file: string;
}

/** The header is JSON; anything over this is corruption, not a model (the reference library caps it too). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

// Typed views over the file use the host byte order; safetensors is little-endian.
if (os.endianness() !== 'LE') throw new Error('lowbit: safetensors views need a little-endian host');

function elementCount(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** One mapped .safetensors file; tensors are views into it, so it stays mapped while any view lives. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly buffer: ArrayBuffer,
    /** File offset of the data region: 8 + header length. */
    private readonly dataStart: number,
    private readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Readonly<Record<string, string>>,
  ) {}

  static open(file: string): SafetensorsFile {
    let buffer: ArrayBuffer;
    try {
      buffer = addon.mmapFile(file);
    } catch (e) {
      const missing = !fs.existsSync(file);
      throw new LowbitError(
        missing ? 'FILE_NOT_FOUND' : 'BAD_SAFETENSORS',
        missing ? `${file}: safetensors file not found` : `${file}: cannot map: ${(e as Error).message}`,
        { cause: e },
      );
    }
    const bad = (msg: string): LowbitError => new LowbitError('BAD_SAFETENSORS', `${file}: ${msg}`);
    const size = buffer.byteLength;
    if (size < 8) throw bad(`${size} bytes is too short for a safetensors file (an 8-byte header length comes first)`);
    const headerLen = new DataView(buffer).getBigUint64(0, true);
    if (headerLen > BigInt(size - 8)) {
      throw bad(`header length ${headerLen} exceeds the ${size - 8} bytes after the length field (file truncated or not safetensors)`);
    }
    if (headerLen > BigInt(MAX_HEADER_BYTES)) throw bad(`header length ${headerLen} is over the ${MAX_HEADER_BYTES}-byte limit`);
    const dataStart = 8 + Number(headerLen);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(buffer, 8, Number(headerLen))));
    } catch (e) {
      throw bad(`header is not valid UTF-8 JSON (${(e as Error).message})`);
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) throw bad('header is not a JSON object');

    const dataLen = size - dataStart;
    const tensors = new Map<string, TensorInfo>();
    let metadata: Record<string, string> = {};
    for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = parseMetadata(entry, bad);
        continue;
      }
      tensors.set(name, parseEntry(name, entry, dataLen, bad));
    }
    checkOverlaps(tensors, bad);
    return new SafetensorsFile(file, buffer, dataStart, tensors, metadata);
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo | undefined {
    return this.tensors.get(name);
  }

  get(name: string): Tensor {
    const t = this.tensors.get(name);
    if (!t) throw new LowbitError('MISSING_TENSOR', `${this.path}: no tensor "${name}"`);
    const Ctor = ARRAY_OF[t.dtype];
    const offset = this.dataStart + t.begin;
    const count = elementCount(t.shape);
    let data: TensorData;
    if (offset % Ctor.BYTES_PER_ELEMENT === 0) {
      data = new Ctor(this.buffer, offset, count);
    } else {
      // Typed arrays cannot start at an offset that is not a multiple of their element size. Writers that
      // follow the reference (ours included) sort tensors by alignment and pad the header, so this only
      // happens with foreign files; copying this one tensor is the price of reading them.
      data = new Ctor(count);
      new Uint8Array(data.buffer).set(new Uint8Array(this.buffer, offset, t.end - t.begin));
    }
    return { name, dtype: t.dtype, shape: t.shape.slice(), data, file: this.path };
  }
}

function parseMetadata(entry: unknown, bad: (msg: string) => LowbitError): Record<string, string> {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw bad('__metadata__ is not an object');
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== 'string') throw bad(`__metadata__["${k}"] is not a string`);
  }
  return entry as Record<string, string>;
}

function parseEntry(name: string, entry: unknown, dataLen: number, bad: (msg: string) => LowbitError): TensorInfo {
  const where = `tensor "${name}"`;
  if (entry === null || typeof entry !== 'object') throw bad(`${where}: header entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (!isDType(dtype)) {
    throw bad(`${where}: unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(ARRAY_OF).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw bad(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw bad(`${where}: data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw bad(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
  const expected = elementCount(shape) * DTYPE_SIZE[dtype];
  if (end - begin !== expected) {
    throw bad(`${where}: data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype} [${shape.join(', ')}] needs ${expected}`);
  }
  if (end > dataLen) {
    throw bad(`${where}: data_offsets [${begin}, ${end}] run past the ${dataLen}-byte data region (file truncated?)`);
  }
  return { dtype, shape: shape as number[], begin, end };
}

function checkOverlaps(tensors: Map<string, TensorInfo>, bad: (msg: string) => LowbitError): void {
  const spans = [...tensors].filter(([, t]) => t.end > t.begin).sort((a, b) => a[1].begin - b[1].begin);
  for (let i = 1; i < spans.length; i++) {
    const [prevName, prev] = spans[i - 1];
    const [name, t] = spans[i];
    if (t.begin < prev.end) {
      throw bad(`tensor "${name}" data_offsets [${t.begin}, ${t.end}] overlap tensor "${prevName}" [${prev.begin}, ${prev.end}]`);
    }
  }
}

export function openSafetensors(file: string): SafetensorsFile {
  return SafetensorsFile.open(file);
}

/** A checkpoint directory: one model.safetensors, or shards listed by model.safetensors.index.json. */
export class CheckpointReader {
  /** Every file opened, in the order they were listed. */
  readonly files: string[];
  private readonly owner = new Map<string, SafetensorsFile>();

  constructor(shards: SafetensorsFile[], weightMap?: { indexFile: string; map: Record<string, string> }) {
    this.files = shards.map((s) => s.path);
    for (const shard of shards) {
      for (const name of shard.names()) {
        const first = this.owner.get(name);
        if (first) {
          throw new LowbitError('BAD_CHECKPOINT', `tensor "${name}" is in both ${first.path} and ${shard.path}`);
        }
        this.owner.set(name, shard);
      }
    }
    if (weightMap) {
      for (const [name, file] of Object.entries(weightMap.map)) {
        const where = this.owner.get(name);
        if (!where || path.basename(where.path) !== file) {
          throw new LowbitError(
            'BAD_CHECKPOINT',
            `${weightMap.indexFile}: maps tensor "${name}" to ${file}, but ` +
              (where ? `it is in ${where.path}` : `that shard has no such tensor`),
          );
        }
      }
    }
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  names(): string[] {
    return [...this.owner.keys()];
  }

  info(name: string): TensorInfo | undefined {
    return this.owner.get(name)?.info(name);
  }

  get(name: string): Tensor {
    const shard = this.owner.get(name);
    if (!shard) {
      throw new LowbitError('MISSING_TENSOR', `tensor "${name}" not found in ${this.files.join(', ')}`);
    }
    return shard.get(name);
  }
}

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

export function openCheckpoint(dir: string): CheckpointReader {
  const indexFile = path.join(dir, INDEX_FILE);
  if (fs.existsSync(indexFile)) {
    let map: unknown;
    try {
      map = JSON.parse(fs.readFileSync(indexFile, 'utf8')).weight_map;
    } catch (e) {
      throw new LowbitError('BAD_CHECKPOINT', `${indexFile}: cannot read: ${(e as Error).message}`, { cause: e });
    }
    if (map === null || typeof map !== 'object' || Array.isArray(map) || !Object.values(map).every((f) => typeof f === 'string')) {
      throw new LowbitError('BAD_CHECKPOINT', `${indexFile}: "weight_map" is not an object of tensor name → shard file`);
    }
    const weightMap = map as Record<string, string>;
    const shards = [...new Set(Object.values(weightMap))].map((f) => {
      // The index names files relative to its own directory; a path escaping it is not a shard.
      if (f !== path.basename(f)) throw new LowbitError('BAD_CHECKPOINT', `${indexFile}: shard name "${f}" is not a plain file name`);
      const shardPath = path.join(dir, f);
      if (!fs.existsSync(shardPath)) {
        throw new LowbitError('FILE_NOT_FOUND', `${indexFile}: lists shard ${f}, but ${shardPath} does not exist`);
      }
      return SafetensorsFile.open(shardPath);
    });
    return new CheckpointReader(shards, { indexFile, map: weightMap });
  }
  const single = path.join(dir, SINGLE_FILE);
  if (!fs.existsSync(single)) {
    throw new LowbitError('FILE_NOT_FOUND', `${dir}: no ${SINGLE_FILE} or ${INDEX_FILE}`);
  }
  return new CheckpointReader([SafetensorsFile.open(single)]);
}

export interface TensorToWrite {
  dtype: DType;
  shape: number[];
  data: TensorData;
}

/**
 * Writes a safetensors file atomically: into `file.tmp-<pid>`, fsynced, then renamed over `file`, so a
 * crash never leaves a half-written model under the final name.
 */
export function writeSafetensors(
  file: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): void {
  // The reference writer orders tensors by element size (largest first), then name: with a data region
  // starting at a multiple of 8, every tensor then starts aligned for its own element type, so readers
  // get zero-copy typed views.
  const names = Object.keys(tensors).sort(
    (a, b) => DTYPE_SIZE[tensors[b].dtype] - DTYPE_SIZE[tensors[a].dtype] || (a < b ? -1 : a > b ? 1 : 0),
  );
  const header: Record<string, unknown> = {};
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new LowbitError('BAD_ARGUMENT', `${file}: metadata "${k}" must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const name of names) {
    const { dtype, shape, data } = tensors[name];
    const where = `${file}: tensor "${name}"`;
    if (name === '__metadata__') throw new LowbitError('BAD_ARGUMENT', `${file}: "__metadata__" is reserved, not a tensor name`);
    if (!isDType(dtype)) throw new LowbitError('BAD_ARGUMENT', `${where}: unknown dtype ${JSON.stringify(dtype)}`);
    // By tag, not instanceof: arrays the addon makes belong to Node's main realm, not a vm context's (jest).
    if (Object.prototype.toString.call(data) !== `[object ${ARRAY_OF[dtype].name}]`) {
      throw new LowbitError('BAD_ARGUMENT', `${where}: ${dtype} data must be a ${ARRAY_OF[dtype].name}, got ${data?.constructor?.name}`);
    }
    if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0) || elementCount(shape) !== data.length) {
      throw new LowbitError('BAD_ARGUMENT', `${where}: shape [${shape.join(', ')}] does not match ${data.length} elements`);
    }
    header[name] = { dtype, shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil((8 + json.length) / 8) * 8 - 8;
  json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));

  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'w');
    writeAll(fd, prefix);
    writeAll(fd, json);
    for (const name of names) {
      const { data } = tensors[name];
      writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new LowbitError('IO_ERROR', `${file}: write failed (${fsReason(e)})`, { cause: e });
  }
  syncDir(path.dirname(file));
}

/** One write call takes under 2 GiB and may write less than asked; loop until all is out. */
function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
}

/** Makes the rename itself durable; platforms that cannot open a directory for fsync skip it. */
function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Windows cannot fsync a directory; the rename is still atomic there.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
