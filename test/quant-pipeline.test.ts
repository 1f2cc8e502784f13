// The layer-by-layer pipeline end to end on qwen3-tiny with a tiny calibration set (4 × 256 tokens of the
// reference C4 ids): every method finishes with finite weights and a sensible NLL on a golden sequence;
// GPTQ is deterministic; abort works; bad specs and calibration inputs give messages naming what is wrong.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readCalibIds, sampleWindows, CalibrationSet } from '../lib/calibrate/calibration';
import { scoreSequences } from '../lib/eval/forward';
import { loadModel } from '../lib/load/model';
import { Linear, LINEAR_NAMES, LoadedModel } from '../lib/load/types';
import { checkSpecForModel, quantize, QuantizeReport } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';
import { toF32 } from '../lib/quant/weights';
import { SYNTH, syntheticModel, writeModelDir } from './helpers/fixtures';
import { denseWeight } from './helpers/fake-quant';

const SHARED = path.resolve(__dirname, '..', '..', 'shared');
const MODEL_DIR = path.join(SHARED, 'models', 'qwen3-tiny');
const CALIB = path.join(SHARED, 'golden', 'calib_c4_128x2048.i16');
const SEQ = 256;

const golden = JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', 'qwen3-tiny.json'), 'utf8')).golden;
const seq0 = Int32Array.from(golden.input_ids[0] as number[]);
let calib: CalibrationSet;

async function meanNll(model: LoadedModel): Promise<number> {
  const { nll } = await scoreSequences(model, seq0, SEQ);
  let s = 0;
  for (let t = 0; t < SEQ - 1; t++) s += nll[t];
  return s / (SEQ - 1);
}

/** A linear's weights as fp32 (dequantized where it runs packed). Arrays made by the addon come from Node's
 *  main realm, not jest's sandbox, so `instanceof Float32Array` (which lib's toF32 uses) is false for them
 *  here; test the tag instead. */
function f32(lin: Linear): Float32Array {
  const w = lin.weight;
  if (!w) return denseWeight(lin);
  return Object.prototype.toString.call(w) === '[object Float32Array]' ? (w as Float32Array) : toF32(w);
}

function allFinite(model: LoadedModel): boolean {
  return model.weights.layers.every(
    (l) => LINEAR_NAMES.every((n) => f32(l.linears[n]!).every(Number.isFinite)) && l.inputNorm.every(Number.isFinite) && l.postAttnNorm.every(Number.isFinite),
  );
}

async function run(specText: string): Promise<{ model: LoadedModel; report: QuantizeReport; nll: number }> {
  const model = loadModel(MODEL_DIR);
  const spec = parseSpec(specText);
  const report = await quantize(model, spec, { calibration: calib });
  expect(allFinite(model)).toBe(true);
  return { model, report, nll: await meanNll(model) };
}

const nll: Record<string, number> = {};
const models: Record<string, LoadedModel> = {};
let fp: number;

beforeAll(async () => {
  calib = readCalibIds(CALIB, 4, SEQ, 2048, 8192);
  fp = await meanNll(loadModel(MODEL_DIR));
  // The golden file's own NLL for this sequence (reference implementation): our fp baseline is that.
  const ref = (golden.nll[0] as number[]).reduce((a, b) => a + b, 0) / (SEQ - 1);
  expect(Math.abs(fp - ref)).toBeLessThan(1e-4);
});

describe('every method finishes with finite weights', () => {
  test.each([
    ['rtn:w4g128', 0.1],
    ['rtn:w2g128', Infinity],
    ['gptq:w4g128,nsamples=4,seqlen=256', 0.1],
    ['awq:w4g128,nsamples=4,seqlen=256', 0.1],
    ['smoothquant:w8a8,nsamples=4,seqlen=256', 0.01],
    ['naive:w8a8', 0.01],
  ])('%s', async (specText, tol) => {
    const r = await run(specText);
    nll[specText.split(',')[0]] = r.nll;
    models[specText.split(',')[0]] = r.model;
    expect(Number.isFinite(r.nll)).toBe(true);
    expect(r.report.name).toBe(specText.split(',')[0]);
    if (Number.isFinite(tol)) expect(Math.abs(r.nll - fp) / fp).toBeLessThan(tol);
    expect(r.nll).toBeGreaterThan(fp * 0.97); // quantization does not make the model much better
    // W/A methods record their activation bits on the model; weight-only ones do not.
    expect(r.model.quantization?.actBits).toBe(specText.includes('a8') ? 8 : 0);
    if (specText.startsWith('gptq')) {
      expect(r.report.linears).toHaveLength(6 * 7);
      expect(r.report.linears.every((x) => Number.isFinite(x.loss))).toBe(true);
    }
  });

  test('billm:w1g128 binarizes at about 1 bit per weight', async () => {
    const r = await run('billm:w1g128,nsamples=4,seqlen=256');
    expect(Number.isFinite(r.nll)).toBe(true);
    expect(r.report.avgBits).toBeGreaterThanOrEqual(1);
    expect(r.report.avgBits).toBeLessThanOrEqual(1.2);
    expect(r.nll).toBeGreaterThan(fp);
  });

  test('orderings that hold even with 4 calibration samples', () => {
    expect(nll['gptq:w4g128']).toBeLessThan(nll['rtn:w2g128']);
    expect(nll['awq:w4g128']).toBeLessThan(nll['rtn:w2g128']);
    expect(nll['rtn:w4g128']).toBeLessThan(nll['rtn:w2g128']);
  });
});

test('GPTQ twice gives bit-identical weights', async () => {
  const a = models['gptq:w4g128'];
  expect(a).toBeDefined();
  const b = loadModel(MODEL_DIR);
  await quantize(b, parseSpec('gptq:w4g128,nsamples=4,seqlen=256'), { calibration: calib });
  for (let l = 0; l < a.config.numLayers; l++) {
    for (const n of LINEAR_NAMES) {
      const wa = f32(a.weights.layers[l].linears[n]!);
      const wb = f32(b.weights.layers[l].linears[n]!);
      expect(wa).not.toBe(wb);
      expect(Buffer.from(wa.buffer, wa.byteOffset, wa.byteLength).equals(Buffer.from(wb.buffer, wb.byteOffset, wb.byteLength))).toBe(true);
    }
  }
});

test('aborting from onProgress at layer 2 rejects with an AbortError', async () => {
  const model = loadModel(MODEL_DIR);
  const ac = new AbortController();
  const seen = new Set<number>();
  const p = quantize(model, parseSpec('gptq:w4g128,nsamples=4,seqlen=256'), {
    calibration: calib,
    signal: ac.signal,
    onProgress: ({ layer }) => {
      seen.add(layer);
      if (layer === 2) ac.abort();
    },
  });
  await expect(p).rejects.toMatchObject({ name: 'AbortError' });
  expect(Math.max(...seen)).toBe(2);
});

describe('bad input', () => {
  test('spec errors', () => {
    expect(() => parseSpec('rtn:w9')).toThrow(/--wbits must be an integer 1\.\.8, got 9/);
    expect(() => parseSpec('awq:w4a8')).toThrow(/awq quantizes weights only; --abits needs smoothquant or naive/);
    expect(() => parseSpec('billm:w2')).toThrow(/billm binarizes weights: --wbits must be 1/);
    expect(() => parseSpec('gptq:w4g128,frobnicate')).toThrow(/unknown option "frobnicate"/);
  });

  test('a group size that does not divide a linear names the layer and the linear', async () => {
    const model = loadModel(MODEL_DIR);
    const spec = parseSpec('gptq:w4g100');
    expect(() => checkSpecForModel(model, spec)).toThrow(/--group-size 100 does not divide in_features 256 of model\.layers\.0\.q/);
    await expect(quantize(model, spec, { calibration: calib })).rejects.toThrow(/model\.layers\.0\.q/);
  });

  test('calibration set shape must match the spec', async () => {
    const model = loadModel(MODEL_DIR);
    await expect(quantize(model, parseSpec('gptq:w4g128,nsamples=8,seqlen=256'), { calibration: calib })).rejects.toThrow(/calibration set is 4×256, the spec asks for 8×256/);
    await expect(quantize(model, parseSpec('gptq:w4g128'), {})).rejects.toThrow(/gptq needs calibration data/);
  });

  describe('non-finite weights and activations', () => {
    let dir: string;
    beforeAll(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-nan-'));
    });
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
    const tinyCalib = (): CalibrationSet => ({ ids: Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 7) % SYNTH.vocab), nsamples: 2, seqLen: 16, source: 'test' });

    test('a NaN weight: quantize refuses, naming the tensor', async () => {
      const m = syntheticModel();
      (m.tensors['model.layers.1.mlp.down_proj.weight'].data as Uint16Array)[3] = 0x7fc0;
      const model = loadModel(writeModelDir(path.join(dir, 'nanw'), m));
      await expect(quantize(model, parseSpec('rtn:w4perchannel'))).rejects.toThrow(
        /cannot quantize .*: non-finite values \(NaN\/Inf\) in model\.layers\.1\.mlp\.down_proj\.weight \(1\)/,
      );
    });

    // The largest finite bf16 as a norm weight: the MLP's inputs in layer 0 are ~1e38 and its outputs overflow fp32.
    const overflowing = (name: string) => {
      const m = syntheticModel();
      (m.tensors['model.layers.0.post_attention_layernorm.weight'].data as Uint16Array).fill(0x7f7f);
      return loadModel(writeModelDir(path.join(dir, name), m));
    };
    test.each([
      ['gptq:w4perchannel', /the inputs of model\.layers\.0\.up\/gate \(an overflow/],
      ['awq:w4perchannel', /the output of model\.layers\.0 for sequence 0, token 0/], // one pass: statistics and outputs
      ['smoothquant:w8a8', /the output of model\.layers\.0 for sequence 0, token 0/],
    ])('%s: activations that overflow in a layer stop the pass, naming where', async (text, where) => {
      const spec = { ...parseSpec(text), nsamples: 2, calibSeqLen: 16 };
      await expect(quantize(overflowing(text.replace(/[:]/g, '-')), spec, { calibration: tinyCalib() })).rejects.toThrow(
        new RegExp('calibration activations are not finite: ' + where.source),
      );
    });
  });

  describe('readCalibIds', () => {
    let dir: string;
    beforeAll(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-calib-'));
    });
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
    const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

    test('too few rows', () => {
      expect(() => readCalibIds(CALIB, 129, SEQ)).toThrow(new RegExp(`${esc(CALIB)}: holds 128 calibration rows, 129 requested`));
    });

    test('a size that is not whole rows', () => {
      const f = path.join(dir, 'ragged.i16');
      fs.writeFileSync(f, Buffer.alloc(2 * 2048 + 6));
      expect(() => readCalibIds(f, 1, SEQ)).toThrow(new RegExp(`${esc(f)}: 4102 bytes is not a whole number of int16 rows`));
    });

    test('an id outside the vocabulary', () => {
      const f = path.join(dir, 'big.i16');
      const b = Buffer.alloc(2 * 2048 * 2);
      b.writeInt16LE(9000, 2 * (2048 + 5));
      fs.writeFileSync(f, b);
      expect(() => readCalibIds(f, 2, SEQ, 2048, 8192)).toThrow(new RegExp(`${esc(f)}: token id 9000 at row 1, position 5 is outside the vocabulary`));
      expect(readCalibIds(f, 1, SEQ, 2048, 8192).ids.every((v) => v === 0)).toBe(true);
    });

    test('a missing file, and a seqlen longer than the rows', () => {
      const f = path.join(dir, 'absent.i16');
      expect(() => readCalibIds(f, 1, SEQ)).toThrow(new RegExp(`calibration id file not found: ${esc(f)}`));
      expect(() => readCalibIds(CALIB, 1, 4096)).toThrow(/--calib-seqlen 4096 exceeds the 2048-token rows/);
    });
  });

  test('sampleWindows with too little text', () => {
    expect(() => sampleWindows(new Int32Array(100), 4, 256, 0, 'tiny.txt')).toThrow(/calibration text from tiny\.txt has 100 tokens; one window needs 256/);
    const ok = sampleWindows(Int32Array.from({ length: 1000 }, (_, i) => i), 3, 256, 7, 'seq');
    for (let s = 0; s < 3; s++) {
      const start = ok.ids[s * 256];
      for (let t = 0; t < 256; t++) expect(ok.ids[s * 256 + t]).toBe(start + t); // contiguous windows
    }
  });
});
