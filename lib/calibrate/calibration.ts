// Calibration windows: token ids [nsamples, seqLen] drawn from text with a seed, or read from a raw
// int16 id file such as the one the reference anchors used (row-major [n, 2048], little-endian).
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError } from '../load/errors';
import { dataFile, readJsonlField } from '../eval/datasets';

export interface CalibrationSet {
  ids: Int32Array; // [nsamples, seqLen]
  nsamples: number;
  seqLen: number;
  source: string;
}

/** Reads an int16 id file of rows `rowLen` long; each sample is the first `seqLen` ids of a row (AWQ uses 512 of 2048). */
export function readCalibIds(file: string, nsamples: number, seqLen: number, rowLen = 2048, vocabSize?: number): CalibrationSet {
  if (!fs.existsSync(file)) throw new LowbitError('FILE_NOT_FOUND', `calibration id file not found: ${file}`);
  const buf = fs.readFileSync(file);
  if (buf.length % (2 * rowLen)) {
    throw new LowbitError('BAD_DATA', `${file}: ${buf.length} bytes is not a whole number of int16 rows of ${rowLen} ids`);
  }
  const rows = buf.length / (2 * rowLen);
  if (rows < nsamples) throw new LowbitError('BAD_DATA', `${file}: holds ${rows} calibration rows, ${nsamples} requested (--nsamples)`);
  if (seqLen > rowLen) throw new LowbitError('BAD_ARGUMENT', `--calib-seqlen ${seqLen} exceeds the ${rowLen}-token rows of ${file}`);
  const ids = new Int32Array(nsamples * seqLen);
  for (let r = 0; r < nsamples; r++) {
    for (let t = 0; t < seqLen; t++) {
      const v = buf.readInt16LE(2 * (r * rowLen + t));
      if (v < 0 || (vocabSize !== undefined && v >= vocabSize)) {
        throw new LowbitError('BAD_DATA', `${file}: token id ${v} at row ${r}, position ${t} is outside the vocabulary`);
      }
      ids[r * seqLen + t] = v;
    }
  }
  return { ids, nsamples, seqLen, source: path.resolve(file) };
}

/** mulberry32: a small seeded PRNG, so the same seed draws the same windows on every platform. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Text for calibration: 'c4' (the C4 train sample in the data dir), 'wikitext2', or a .jsonl (field "text") / .txt file. */
export function calibrationText(source: string, dataDir: string): string {
  if (source === 'c4') return readJsonlField(dataFile(dataDir, 'c4_train_sample.jsonl'), 'text').join('\n\n');
  if (source === 'wikitext2') {
    const rows = JSON.parse(fs.readFileSync(dataFile(dataDir, 'wikitext-2-raw-v1.test.json'), 'utf8')) as string[];
    return rows.join('\n\n');
  }
  if (!fs.existsSync(source)) throw new LowbitError('FILE_NOT_FOUND', `calibration file not found: ${source}`);
  if (source.endsWith('.jsonl')) return readJsonlField(source, 'text').join('\n\n');
  return fs.readFileSync(source, 'utf8');
}

/** Draws nsamples windows of seqLen tokens at seeded random offsets of the tokenized text. */
export function sampleWindows(tokens: ArrayLike<number>, nsamples: number, seqLen: number, seed: number, source: string): CalibrationSet {
  if (tokens.length < seqLen + 1) {
    throw new LowbitError(
      'BAD_DATA',
      `calibration text from ${source} has ${tokens.length} tokens; one window needs ${seqLen} (lower --calib-seqlen or give more text)`,
    );
  }
  const rand = seededRandom(seed);
  const ids = new Int32Array(nsamples * seqLen);
  for (let s = 0; s < nsamples; s++) {
    const start = Math.floor(rand() * (tokens.length - seqLen));
    for (let t = 0; t < seqLen; t++) ids[s * seqLen + t] = tokens[start + t];
  }
  return { ids, nsamples, seqLen, source: `${source} (seed ${seed})` };
}
