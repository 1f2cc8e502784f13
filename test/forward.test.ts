// Golden logits: the full-model forward against the reference (transformers, fp32 on CPU) NLL and top-5
// of both golden sequences, for qwen3-tiny and qwen3-small; thread count and SIMD level must not matter.
import * as fs from 'fs';
import * as path from 'path';
import { embedTokens, runLayer, scoreSequences, SequenceScores } from '../lib/eval/forward';
import { loadModel } from '../lib/load/model';
import type { LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';

// The level this file found (LOWBIT_SIMD may have lowered it): what it restores after forcing others.
const SIMD0 = addon.simdLevel();

const SHARED = path.resolve(__dirname, '..', '..', 'shared');
const SEQ = 256;

interface Golden {
  input_ids: number[][];
  nll: number[][];
  top5_idx: number[][][];
}

function golden(name: string): Golden {
  return JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', `${name}.json`), 'utf8')).golden as Golden;
}

function ids(g: Golden, rows: number[] = [0, 1]): Int32Array {
  return Int32Array.from(rows.flatMap((r) => g.input_ids[r]));
}

function checkAgainstGolden(g: Golden, s: SequenceScores, rows: number[], tol: number): void {
  rows.forEach((r, k) => {
    const ref = g.nll[r];
    expect(ref).toHaveLength(SEQ - 1);
    let worst = 0;
    for (let t = 0; t < SEQ - 1; t++) {
      const got = s.nll[k * SEQ + t];
      expect(Number.isFinite(got)).toBe(true);
      worst = Math.max(worst, Math.abs(got - ref[t]));
    }
    expect(worst).toBeLessThan(tol);
    expect(s.nll[k * SEQ + SEQ - 1]).toBe(0); // no target at the last position
  });
}

function checkTop5(g: Golden, s: SequenceScores, rows: number[]): void {
  expect(s.topIdx).toBeDefined();
  rows.forEach((r, k) => {
    const ref = g.top5_idx[r];
    expect(ref).toHaveLength(SEQ);
    const got: number[][] = [];
    for (let t = 0; t < SEQ; t++) got.push(Array.from(s.topIdx!.subarray((k * SEQ + t) * 5, (k * SEQ + t + 1) * 5)));
    expect(got).toEqual(ref);
  });
}

describe.each(['qwen3-tiny', 'qwen3-small'])('golden forward of %s', (name) => {
  let model: LoadedModel;
  let g: Golden;
  beforeAll(() => {
    model = loadModel(path.join(SHARED, 'models', name));
    g = golden(name);
  });

  test('per-position NLL within 2e-4 and identical top-5 on both golden sequences', async () => {
    const s = await scoreSequences(model, ids(g), SEQ, { topk: 5 });
    expect(s.nll).toHaveLength(2 * SEQ);
    checkAgainstGolden(g, s, [0, 1], 2e-4);
    checkTop5(g, s, [0, 1]);
  });
});

describe('execution settings do not change results (qwen3-tiny)', () => {
  let model: LoadedModel;
  let g: Golden;
  let threads0: number;
  beforeAll(() => {
    model = loadModel(path.join(SHARED, 'models', 'qwen3-tiny'));
    g = golden('qwen3-tiny');
    threads0 = addon.getThreads();
  });
  afterAll(() => {
    addon.setThreads(threads0);
    addon.simdLevel(SIMD0);
  });

  test('1 thread vs 2 threads agree to 1e-6', async () => {
    addon.setThreads(1);
    expect(addon.getThreads()).toBe(1);
    const a = await scoreSequences(model, ids(g), SEQ, { topk: 5 });
    addon.setThreads(2);
    expect(addon.getThreads()).toBe(2);
    const b = await scoreSequences(model, ids(g), SEQ, { topk: 5 });
    let worst = 0;
    for (let i = 0; i < a.nll.length; i++) worst = Math.max(worst, Math.abs(a.nll[i] - b.nll[i]));
    expect(worst).toBeLessThanOrEqual(1e-6);
    expect(Array.from(b.topIdx!)).toEqual(Array.from(a.topIdx!));
    checkAgainstGolden(g, b, [0, 1], 2e-4);
  });

  test('scalar SIMD path matches the golden NLL within 2e-4', async () => {
    expect(addon.simdLevel('scalar')).toBe('scalar');
    try {
      const s = await scoreSequences(model, ids(g, [1]), SEQ, { topk: 5 });
      checkAgainstGolden(g, s, [1], 2e-4);
      checkTop5(g, s, [1]);
    } finally {
      addon.simdLevel(SIMD0);
    }
    expect(addon.simdLevel()).toBe(SIMD0);
  });
});

describe('layer forward with captures stopped at one linear input (qwen3-tiny)', () => {
  let model: LoadedModel;
  beforeAll(() => {
    model = loadModel(path.join(__dirname, '..', 'models', 'qwen3-tiny'));
  });

  const bytes = (a: Float32Array | undefined) => Buffer.from(a!.buffer, a!.byteOffset, a!.byteLength);

  // Calibration (GPTQ's true-sequential steps) asks for the inputs up to one linear only; they must be the full
  // forward's captures bit for bit, the later ones absent. actBits 4: the captured inputs are fake-quantized.
  test.each([0, 4])('actBits %i: attnIn, oIn, mlpIn, downIn each equal the full capture', async (actBits) => {
    const h0 = await embedTokens(model, ids(golden('qwen3-tiny'), [0]));
    const full = (await runLayer(model, 1, h0.slice(), SEQ, { actBits, capture: true }))!;
    const order = ['attnIn', 'oIn', 'mlpIn', 'downIn'] as const;
    for (const [i, upTo] of order.entries()) {
      const h = h0.slice();
      const part = (await runLayer(model, 1, h, SEQ, { actBits, capture: upTo }))!;
      for (const k of order.slice(0, i + 1)) expect(bytes(part[k]).equals(bytes(full[k]))).toBe(true);
      for (const k of order.slice(i + 1)) expect(part[k]).toBeUndefined();
      if (i < 2) expect(bytes(h).equals(bytes(h0))).toBe(true); // stopped before the first residual add
    }
  });

  test("the attention half then the MLP half is the whole layer bit for bit, and the MLP half's captures match", async () => {
    const h0 = await embedTokens(model, ids(golden('qwen3-tiny'), [0]));
    const whole = h0.slice();
    const full = (await runLayer(model, 2, whole, SEQ, { capture: true }))!;
    const h = h0.slice();
    expect(await runLayer(model, 2, h, SEQ, { part: 'attn' })).toBeUndefined();
    const mid = h.slice();
    const mlpCaps = (await runLayer(model, 2, mid.slice(), SEQ, { part: 'mlp', capture: 'downIn' }))!;
    expect(mlpCaps.attnIn).toBeUndefined();
    expect(bytes(mlpCaps.mlpIn).equals(bytes(full.mlpIn))).toBe(true);
    expect(bytes(mlpCaps.downIn).equals(bytes(full.downIn))).toBe(true);
    await runLayer(model, 2, h, SEQ, { part: 'mlp' });
    expect(bytes(h).equals(bytes(whole))).toBe(true);
    expect(bytes(h).equals(bytes(mid))).toBe(false);
    await expect(runLayer(model, 2, mid, SEQ, { part: 'mlp', capture: 'oIn' })).rejects.toThrow(/not in the part of the layer run/);
  });

  test('an unknown capture point is named', async () => {
    const h = await embedTokens(model, ids(golden('qwen3-tiny'), [0]));
    await expect(runLayer(model, 0, h, SEQ, { capture: 'qIn' as never })).rejects.toThrow(/capture must be a boolean or one of attnIn, oIn, mlpIn, downIn \(got 'qIn'\)/);
  });
});
