// A safetensors file written a tensor at a time, so a checkpoint larger than memory can be written as its
// layers are produced and each layer's tensors released right after. The header comes first in the format
// but is known only at the end: `headerBytes` are reserved up front (an upper bound the caller computes)
// and the final JSON is padded with spaces to fill them, as the format allows.
import * as fs from 'fs';
import { LowbitError } from '../load/errors';
import { DTYPE_SIZE, TensorToWrite } from '../load/safetensors';

interface Entry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export class SafetensorsWriter {
  private readonly fd: number;
  private readonly headerBytes: number;
  private offset = 0;
  private readonly entries: Record<string, Entry> = {};
  /** Tensors whose length would leave the data offset off an 8-byte boundary wait for the end (they are
   *  small: odd-sized norms, scales, zeros), so every tensor starts aligned for zero-copy typed views. */
  private readonly deferred: [string, TensorToWrite][] = [];

  constructor(readonly file: string, headerBytes: number) {
    this.headerBytes = Math.ceil(headerBytes / 8) * 8;
    this.fd = fs.openSync(file, 'w');
  }

  add(name: string, t: TensorToWrite): void {
    if (name in this.entries || this.deferred.some(([n]) => n === name)) throw new LowbitError('BAD_ARGUMENT', `${this.file}: tensor "${name}" written twice`);
    if (t.data.byteLength % 8) this.deferred.push([name, t]);
    else this.write(name, t);
  }

  private write(name: string, { dtype, shape, data }: TensorToWrite): void {
    if (shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtype] !== data.byteLength) {
      throw new LowbitError('BAD_ARGUMENT', `${this.file}: tensor "${name}": shape [${shape.join(', ')}] does not match ${data.byteLength} bytes of ${dtype}`);
    }
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    this.writeAt(bytes, 8 + this.headerBytes + this.offset);
    this.entries[name] = { dtype, shape, data_offsets: [this.offset, this.offset + bytes.length] };
    this.offset += bytes.length;
  }

  private writeAt(bytes: Uint8Array, pos: number): void {
    try {
      for (let done = 0; done < bytes.length; ) done += fs.writeSync(this.fd, bytes, done, Math.min(bytes.length - done, 1 << 30), pos + done);
    } catch (e) {
      throw new LowbitError('IO_ERROR', `${this.file}: write failed (${(e as Error).message})`, { cause: e });
    }
  }

  /** Writes the deferred tensors (largest element size first, as the reference writer orders) and the header. */
  close(metadata?: Record<string, string>): void {
    this.deferred.sort(([a, ta], [b, tb]) => DTYPE_SIZE[tb.dtype] - DTYPE_SIZE[ta.dtype] || (a < b ? -1 : 1));
    for (const [name, t] of this.deferred.splice(0)) this.write(name, t);
    const json = Buffer.from(JSON.stringify(metadata ? { __metadata__: metadata, ...this.entries } : this.entries), 'utf8');
    if (json.length > this.headerBytes) throw new Error(`${this.file}: header of ${json.length} bytes exceeds the ${this.headerBytes} reserved`);
    const head = Buffer.alloc(8 + this.headerBytes, 0x20);
    head.writeBigUInt64LE(BigInt(this.headerBytes));
    json.copy(head, 8);
    this.writeAt(head, 0);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }

  /** Closes without a header (the caller removes the file). */
  discard(): void {
    fs.closeSync(this.fd);
  }
}
