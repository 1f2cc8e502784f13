// Layer-streamed evaluation (stream.ts): the same numbers as the resident forward, bit for bit, with the
// activations in memory or in a spill file; chosen automatically under a memory cap; pages of finished
// layers handed back to the kernel without touching the results.
import * as fs from 'fs';
import * as path from 'path';
import { DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR } from '../lib/cli/common';
import { pplText } from '../lib/eval/datasets';
import { loglikelihood, LoglikelihoodRequest } from '../lib/eval/loglikelihood';
import { perplexity, PerplexityOptions } from '../lib/eval/perplexity';
import { adviseLayer, parseBytes, planMemory } from '../lib/eval/stream';
import { loadModel } from '../lib/load/model';
import { loadTokenizer } from '../lib/load/tokenizer';
import type { LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { quantize } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';
import { tmpDir } from './helpers/fixtures';

const MOE_DIR = path.join(__dirname, 'fixtures', 'qwen3-moe-tiny');
const SEQ = 128;
let ids: Int32Array;
let spill: string;

beforeAll(() => {
  ids = Int32Array.from(loadTokenizer(DEFAULT_MODEL_DIR).encode(pplText('wikitext2', DEFAULT_DATA_DIR).slice(0, 20000)));
  spill = tmpDir('lowbit-spill-');
});
afterAll(() => fs.rmSync(spill, { recursive: true, force: true }));

async function compare(model: LoadedModel, extra: PerplexityOptions = {}) {
  const opts: PerplexityOptions = { seqLen: SEQ, maxWindows: 7, batch: 3, ...extra }; // batches of 3, 3, 1 windows
  const resident = await perplexity(model, ids, opts);
  const streamed = await perplexity(model, ids, { ...opts, memory: { stream: true } });
  const disk = await perplexity(model, ids, { ...opts, memory: { stream: true, maxMemory: 1, spillDir: spill } });
  expect([resident.mode, streamed.mode, disk.mode]).toEqual(['resident', 'streamed', 'streamed, activations on disk']);
  expect(resident.windows).toBe(7);
  expect(streamed.windowNll).toEqual(resident.windowNll);
  expect(disk.windowNll).toEqual(resident.windowNll);
  expect(streamed.ppl).toBe(resident.ppl);
  expect(fs.readdirSync(spill)).toEqual([]); // the spill file is gone
  return resident;
}

describe('streamed perplexity equals the resident path exactly', () => {
  test('qwen3-tiny', async () => {
    const r = await compare(loadModel(DEFAULT_MODEL_DIR));
    expect(Number.isFinite(r.ppl)).toBe(true);
  });

  test('the tiny Qwen3-MoE', async () => {
    await compare(loadModel(MOE_DIR));
  });

  test('a model quantized in memory (weights off the mapping) and W8A8 activations', async () => {
    const m = loadModel(DEFAULT_MODEL_DIR);
    await quantize(m, parseSpec('naive:w8a8'));
    await compare(m);
  });
});

describe('choosing the mode', () => {
  test('under a --max-memory below the model size the evaluation streams; above it, it stays resident', async () => {
    const m = loadModel(DEFAULT_MODEL_DIR);
    const size = fs.statSync(path.join(DEFAULT_MODEL_DIR, 'model.safetensors')).size;
    const plan = (cap: number) => planMemory(m, 4 * SEQ, 1 << 20, { maxMemory: cap });
    expect(plan(size + (64 << 20)).mode).toBe('resident');
    expect(plan(size - 1).mode).toBe('streamed');
    expect(plan(plan(size - 1).layerBytes).mode).toBe('streamed, activations on disk');
    expect(plan(size - 1).modelBytes).toBe(size);
    const r = await perplexity(m, ids, { seqLen: SEQ, maxWindows: 2, batch: 1, memory: { maxMemory: size - 1 } });
    expect(r.mode).toBe('streamed');
  });

  test('parseBytes reads 4G, 512M, 1.5GB, 800MiB and byte counts; rejects the rest by name', () => {
    expect(parseBytes('4G')).toBe(4 * 2 ** 30);
    expect(parseBytes('512M')).toBe(512 * 2 ** 20);
    expect(parseBytes('1.5GB')).toBe(1.5 * 2 ** 30);
    expect(parseBytes('800MiB')).toBe(800 * 2 ** 20);
    expect(parseBytes('12345')).toBe(12345);
    expect(() => parseBytes('lots')).toThrow(/--max-memory: cannot read "lots"/);
  });
});

describe('loglikelihood requests, streamed', () => {
  test('equal the resident log-likelihoods and greedy flags', async () => {
    const m = loadModel(MOE_DIR);
    const reqs: LoglikelihoodRequest[] = Array.from({ length: 9 }, (_, i) => ({
      context: ids.subarray(100 * i, 100 * i + 20 + 7 * i),
      continuation: ids.subarray(100 * i + 20 + 7 * i, 100 * i + 23 + 7 * i),
    }));
    let modes: string[] = [];
    const resident = await loglikelihood(m, reqs, { batchTokens: 128, onMode: (x) => modes.push(x) });
    const streamed = await loglikelihood(m, reqs, { batchTokens: 128, memory: { stream: true }, onMode: (x) => modes.push(x) });
    const disk = await loglikelihood(m, reqs, { batchTokens: 128, memory: { maxMemory: 1, spillDir: spill }, onMode: (x) => modes.push(x) });
    expect(modes).toEqual(['resident', 'streamed', 'streamed, activations on disk']);
    expect(streamed).toEqual(resident);
    expect(disk).toEqual(resident);
    modes = [];
  });
});

describe('page advice on the mapped checkpoint', () => {
  test("dropping a finished layer's pages and reading ahead leave its weights readable and unchanged", () => {
    const m = loadModel(DEFAULT_MODEL_DIR);
    const q = m.weights.layers[0].linears.q.weight as { data: Uint16Array };
    const before = q.data.slice();
    expect(adviseLayer(m, 0, 'dontneed')).toBeGreaterThan(0);
    expect(q.data).toEqual(before); // read back from the file
    expect(adviseLayer(m, 1, 'willneed')).toBeGreaterThan(0);
  });

  test('memory that is not a mapped checkpoint is never advised', () => {
    const heap = new Float32Array(1 << 16).fill(3);
    expect(addon.adviseMapped(heap, 'dontneed')).toBe(0);
    expect(heap.every((v) => v === 3)).toBe(true);
    expect(() => addon.adviseMapped(heap, 'free')).toThrow(/advice must be 'dontneed' or 'willneed'/);
  });

  test('an abort mid-stream rejects with AbortError and removes the spill file', async () => {
    const m = loadModel(DEFAULT_MODEL_DIR);
    const ac = new AbortController();
    const run = perplexity(m, ids, {
      seqLen: SEQ,
      maxWindows: 6,
      batch: 2,
      memory: { stream: true, maxMemory: 1, spillDir: spill },
      signal: ac.signal,
      onProgress: (p) => p.windows >= 2 && ac.abort(),
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    expect(fs.readdirSync(spill)).toEqual([]);
  });
});
