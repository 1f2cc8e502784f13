// Packed checkpoint formats (GPTQ v1/v2, AWQ GEMM, lowbit): bit-exact pack/unpack round trips over
// bits × group size × act-order, an independent decoder written here from the format definitions, end to end
// export → loadModel on qwen3-tiny (NLL against the in-memory fake-quant model), file sizes, corrupt inputs.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readCalibIds } from '../lib/calibrate/calibration';
import { scoreSequences } from '../lib/eval/forward';
import { awqUnfit, packAwq, unpackAwq } from '../lib/export/awq-format';
import { defaultFormat, roundScalesForFormat, saveQuantized, smallTensor } from '../lib/export/checkpoint';
import { packGptq, unpackGptq } from '../lib/export/gptq-format';
import { lowbitLinearTensors } from '../lib/export/lowbit-format';
import { dequantize, f32ToF16Bits, fromF16Bits, roundF16 } from '../lib/export/pack';
import { loadModel } from '../lib/load/model';
import { loadQuantizedLinear, readQuantConfig } from '../lib/load/quantized';
import { openCheckpoint, TensorToWrite, writeSafetensors } from '../lib/load/safetensors';
import { Linear, LINEAR_NAMES, LINEAR_TENSORS, LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { billmQuantize } from '../lib/quant/billm';
import type { PackedLinear } from '../lib/quant/packed';
import { quantize, QuantizeReport } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';
import type { QuantizedTensor } from '../lib/quant/weights';
import { decodeBinary, randomBinary } from './helpers/binary';
import { gauss, rng } from './helpers/random';

const SHARED = path.resolve(__dirname, '..', '..', 'shared');
const TINY = path.join(SHARED, 'models', 'qwen3-tiny');
const CALIB = path.join(SHARED, 'golden', 'calib_c4_128x2048.i16');
const SEQ = 256;
const golden = JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', 'qwen3-tiny.json'), 'utf8')).golden;
const seq0 = Int32Array.from(golden.input_ids[0] as number[]);

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-formats-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ------------------------------------------------------------------ independent reference decoders
// Written from the format definitions only (no lib code): a word is 32 bits LSB first; a packed run is the
// concatenation of its words' bits; value k is bits [k·bits, (k+1)·bits) of that run.

function halfToFloat(h: number): number {
  const s = h >> 15 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return s * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * Math.pow(2, e - 15) * (1 + m / 1024);
}

function runBits(words: number[]): number[] {
  const bits: number[] = [];
  for (const w of words) for (let b = 0; b < 32; b++) bits.push((w >>> b) & 1);
  return bits;
}

function valuesOf(words: number[], n: number, width: number): number[] {
  const bits = runBits(words);
  const out: number[] = [];
  for (let k = 0; k < n; k++) {
    let v = 0;
    for (let j = 0; j < width; j++) v += bits[k * width + j] * 2 ** j;
    out.push(v);
  }
  return out;
}

/** GPTQ v1: qweight [in·b/32, out], qzeros [G, out·b/32] holding zero−1, scales fp16 [G, out], g_idx [in]. */
function refDecodeGptq(qweight: Int32Array, qzeros: Int32Array, scales: Uint16Array, gIdx: Int32Array, out: number, inF: number, b: number, v2 = false): Float32Array {
  const rowsW = (inF * b) / 32;
  const G = scales.length / out;
  const zw = (out * b) / 32;
  const w = new Float32Array(out * inF);
  const zeros: number[][] = [];
  for (let g = 0; g < G; g++) {
    const z = valuesOf(Array.from(qzeros.subarray(g * zw, (g + 1) * zw)), out, b);
    zeros.push(z.map((x) => (v2 ? x : (x + 1) % 2 ** b)));
  }
  for (let o = 0; o < out; o++) {
    const col: number[] = [];
    for (let r = 0; r < rowsW; r++) col.push(qweight[r * out + o]);
    const q = valuesOf(col, inF, b);
    for (let i = 0; i < inF; i++) {
      const g = gIdx[i];
      w[o * inF + i] = halfToFloat(scales[g * out + o]) * (q[i] - zeros[g][o]);
    }
  }
  return w;
}

/** AWQ GEMM: qweight [in, out/8], word nibble s = output column 8c + [0,2,4,6,1,3,5,7][s]. */
function refDecodeAwq(qweight: Int32Array, qzeros: Int32Array, scales: Uint16Array, out: number, inF: number, gs: number): Float32Array {
  const order = [0, 2, 4, 6, 1, 3, 5, 7];
  const wpr = out / 8;
  const w = new Float32Array(out * inF);
  for (let i = 0; i < inF; i++) {
    const g = Math.floor(i / gs);
    for (let c = 0; c < wpr; c++) {
      const qv = valuesOf([qweight[i * wpr + c]], 8, 4);
      const zv = valuesOf([qzeros[g * wpr + c]], 8, 4);
      for (let s = 0; s < 8; s++) {
        const o = c * 8 + order[s];
        w[o * inF + i] = halfToFloat(scales[g * out + o]) * (qv[s] - zv[s]);
      }
    }
  }
  return w;
}

/** What the fake-quant path gives with fp16 scales: scale16 · (q − zero), one fp32 rounding. */
function expectedF16(q: QuantizedTensor, inF: number): Float32Array {
  return dequantize({ ...q, scales: roundF16(q.scales) }, inF);
}

// -------------------------------------------------------------------------------- synthetic tensors

function synthetic(bits: number, groupSize: number, actOrder: boolean, out: number, inF: number, seed: number): QuantizedTensor {
  const r = rng(seed);
  const maxq = (1 << bits) - 1;
  const ng = groupSize > 0 ? inF / groupSize : 1;
  const qweight = Uint8Array.from({ length: out * inF }, () => Math.floor(r() * (maxq + 1)));
  const scales = Float32Array.from({ length: out * ng }, () => (r() + 0.01) * 0.05);
  const zeros = Float32Array.from({ length: out * ng }, () => Math.floor(r() * (maxq + 1)));
  zeros[0] = 0; // the v1 hole: zero 0 is stored as maxq
  zeros[1] = maxq;
  const gIdx = new Int32Array(inF);
  const perm = Array.from({ length: inF }, (_, i) => i);
  if (actOrder) for (let i = inF - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [perm[i], perm[j]] = [perm[j], perm[i]]; }
  for (let c = 0; c < inF; c++) gIdx[perm[c]] = groupSize > 0 ? Math.floor(c / groupSize) : 0;
  return { bits, groupSize, sym: false, qweight, scales, zeros, gIdx };
}

describe('fp16', () => {
  test('every finite half survives f32 → f16 bits; ties round to even', () => {
    const wrong: number[] = [];
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00 && h & 0x3ff) continue; // NaN
      if (f32ToF16Bits(halfToFloat(h)) !== h) wrong.push(h);
    }
    expect(wrong).toEqual([]);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // halfway 1 ↔ next: even (1)
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(2 ** -25)).toBe(0); // half the smallest subnormal: even (0)
    expect(f32ToF16Bits(1.5 * 2 ** -25)).toBe(1);
  });
});

describe('round trips', () => {
  const OUT = 32;
  const IN = 256;
  for (const bits of [2, 3, 4, 8]) {
    for (const gs of [-1, 32, 128]) {
      for (const act of [false, true]) {
        test(`GPTQ v1/v2 + lowbit uint: ${bits}-bit, group ${gs}, act-order ${act}`, () => {
          const q = synthetic(bits, gs, act, OUT, IN, bits * 1000 + gs * 10 + Number(act));
          for (const fmt of ['gptq', 'gptq_v2'] as const) {
            const p = packGptq(q, OUT, IN, fmt);
            expect(p.qweight.length).toBe(((IN * bits) / 32) * OUT);
            if (fmt === 'gptq') expect(p.zeroZeroGroups).toBeGreaterThanOrEqual(1);
            const u = unpackGptq({ qweight: p.qweight, qzeros: p.qzeros, scales: fromF16Bits(p.scales), gIdx: p.gIdx }, OUT, IN, bits, gs, false, fmt);
            expect(u.qweight).toEqual(q.qweight);
            expect(u.zeros).toEqual(q.zeros); // zero 0 included
            expect(u.scales).toEqual(roundF16(q.scales));
            expect(u.gIdx).toEqual(q.gIdx);
            // the independent decoder agrees with the fake-quant weights on fp16 scales
            expect(refDecodeGptq(p.qweight, p.qzeros, p.scales, p.gIdx, OUT, IN, bits, fmt === 'gptq_v2')).toEqual(expectedF16(q, IN));
          }
          // lowbit's uint layout keeps fp32 scales: exact
          const t = lowbitLinearTensors('x', { weight: dequantize(q), quantized: q, outFeatures: OUT, inFeatures: IN }, parseSpec(`rtn:w${bits}`)).tensors;
          expect(t['x.scales'].dtype).toBe('F32');
          if (bits === 4 && gs > 0 && !act) {
            const a = packAwq(q, OUT, IN);
            const ua = unpackAwq({ qweight: a.qweight, qzeros: a.qzeros, scales: fromF16Bits(a.scales) }, OUT, IN, gs);
            expect(ua.qweight).toEqual(q.qweight);
            expect(ua.zeros).toEqual(q.zeros);
            expect(ua.scales).toEqual(roundF16(q.scales));
            expect(refDecodeAwq(a.qweight, a.qzeros, a.scales, OUT, IN, gs)).toEqual(expectedF16(q, IN));
          } else if (bits === 4 && act && gs > 0) {
            expect(awqUnfit(q, OUT, IN)).toMatch(/act-order .* g_idx/);
            expect(() => packAwq(q, OUT, IN)).toThrow(/cannot pack as AWQ: act-order/);
          }
        });
      }
    }
  }

  test('addon quantizers (RTN grid, GPTQ act-order) → GPTQ/AWQ packs decode to scale16·(q − zero)', async () => {
    const out = 96;
    const inF = 256;
    const g = gauss(7);
    const w = Float32Array.from({ length: out * inF }, () => g() * 0.05);
    for (const bits of [3, 4]) {
      const r = await addon.quantizeRtn(w, { rows: out, cols: inF, bits, groupSize: 64, sym: false, grid: 'gptq' });
      const q: QuantizedTensor = { bits, groupSize: 64, sym: false, qweight: r.qweight, scales: r.scales, zeros: r.zeros };
      expect(dequantize(q, inF)).toEqual(Float32Array.from(r.weight)); // one dequantization, bit-exact with the quantizer's
      const p = packGptq(q, out, inF);
      expect(refDecodeGptq(p.qweight, p.qzeros, p.scales, p.gIdx, out, inF, bits)).toEqual(expectedF16(q, inF));
      if (bits === 4) {
        const a = packAwq(q, out, inF);
        expect(refDecodeAwq(a.qweight, a.qzeros, a.scales, out, inF, 64)).toEqual(expectedF16(q, inF));
      }
    }
    const x = Float32Array.from({ length: 512 * inF }, () => g());
    const H = new Float32Array(inF * inF);
    await addon.hessianAccumulate(H, x, 2 / 512);
    const r = await addon.gptqQuantize(w, H, { rows: out, cols: inF, bits: 4, groupSize: 32, sym: false, actOrder: true, staticGroups: false, damp: 0.01, blockSize: 128 });
    const q: QuantizedTensor = { bits: 4, groupSize: 32, sym: false, qweight: r.qweight, scales: r.scales, zeros: r.zeros, gIdx: r.gIdx };
    expect(dequantize(q)).toEqual(Float32Array.from(r.weight));
    const p = packGptq(q, out, inF);
    expect(refDecodeGptq(p.qweight, p.qzeros, p.scales, p.gIdx, out, inF, 4)).toEqual(expectedF16(q, inF));
  });

  test('BiLLM binary layout: quantizer → tensors → file → loader keeps every bit; the decoder gives the quantizer\'s weights', async () => {
    const out = 24;
    const inF = 320; // two full blocks of 128 and a partial one; not a multiple of 256
    const g = gauss(11);
    const w = Float32Array.from({ length: out * inF }, () => 0.02 * g());
    const X = Float64Array.from({ length: 512 * inF }, () => g());
    const H = new Float32Array(inF * inF);
    for (let i = 0; i < inF; i++) {
      for (let j = 0; j < inF; j++) {
        let v = 0;
        for (let t = 0; t < 512; t++) v += X[t * inF + i] * X[t * inF + j];
        H[i * inF + j] = (2 / 512) * v;
      }
    }
    const r = await billmQuantize(w, H, { rows: out, cols: inF, blockSize: 128 });
    const lin = { weight: r.weight, binary: r.binary, outFeatures: out, inFeatures: inF };
    const { tensors, kind } = lowbitLinearTensors('m', lin, parseSpec('billm:w1g128'));
    expect(kind).toBe('binary');
    expect(Object.keys(tensors).sort()).toEqual(['m.codes', 'm.salient', 'm.scales']);
    expect(tensors['m.scales']).toMatchObject({ dtype: 'F16', shape: [out, 3, 8] });
    const fromTensors = decodeBinary(
      { block: 128, salient: tensors['m.salient'].data as Uint8Array, codes: tensors['m.codes'].data as Int32Array, scales: tensors['m.scales'].data as Uint16Array },
      out,
      inF,
    );
    expect(Buffer.from(fromTensors.buffer).equals(Buffer.from(r.weight.buffer, r.weight.byteOffset, r.weight.byteLength))).toBe(true);
    const dir = path.join(tmp, 'binary-unit');
    fs.mkdirSync(dir, { recursive: true });
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    const qc = readQuantConfig({ quantization_config: { quant_method: 'lowbit', version: 2, method: 'billm', bits: 1, group_size: 128 } }, dir)!;
    const back = loadQuantizedLinear(openCheckpoint(dir), 'm', out, inF, qc)!.binary!;
    const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    expect(back.block).toBe(128);
    expect(bytes(back.salient).equals(bytes(r.binary.salient))).toBe(true);
    expect(bytes(back.codes).equals(bytes(r.binary.codes))).toBe(true);
    expect(bytes(back.scales).equals(bytes(r.binary.scales))).toBe(true);
  });

  test('norms: model dtype only when exact', () => {
    expect(smallTensor(Float32Array.from([1, 0.5, -2]), [3], 'BF16').dtype).toBe('BF16');
    expect(smallTensor(Float32Array.from([1.1]), [1], 'BF16').dtype).toBe('F32');
    expect(smallTensor(Float32Array.from([1, 0.5]), [2], 'F16').dtype).toBe('F16');
    expect(smallTensor(Float32Array.from([1e-9]), [1], 'F16').dtype).toBe('F32');
  });
});

// ------------------------------------------------------------------------------------- end to end

async function nlls(model: LoadedModel): Promise<Float32Array> {
  return Float32Array.from((await scoreSequences(model, seq0, SEQ)).nll.subarray(0, SEQ - 1));
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function header(file: string): Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> {
  const fd = fs.openSync(file, 'r');
  const len = Buffer.alloc(8);
  fs.readSync(fd, len, 0, 8, 0);
  const n = Number(len.readBigUInt64LE());
  const h = Buffer.alloc(n);
  fs.readSync(fd, h, 0, n, 8);
  fs.closeSync(fd);
  const j = JSON.parse(h.toString('utf8'));
  delete j.__metadata__;
  return j;
}

/** The weights each linear stands for: dense ones as they are, packed ones through their integers. */
function weightsOf(lin: Linear & { binary?: PackedLinear['binary'] }): Float32Array {
  if (lin.weight) return lin.weight as Float32Array;
  return lin.binary ? decodeBinary(lin.binary, lin.outFeatures, lin.inFeatures) : dequantize(lin.quantized!, lin.inFeatures);
}

function sameLinears(a: LoadedModel, b: LoadedModel): boolean {
  return a.weights.layers.every((l, i) => LINEAR_NAMES.every((n) => maxDiff(weightsOf(l.linears[n]!), weightsOf(b.weights.layers[i].linears[n]!)) === 0));
}

function meanAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]);
  return s / a.length;
}

describe('export → loadModel on qwen3-tiny', () => {
  const runs: Record<string, { model: LoadedModel; report: QuantizeReport }> = {};
  let fpNll: Float32Array;

  beforeAll(async () => {
    fpNll = await nlls(loadModel(TINY));
    const calibration = readCalibIds(CALIB, 4, SEQ, 2048, 8192);
    for (const s of ['rtn:w4g128', `gptq:w4g128,nsamples=4,seqlen=${SEQ}`]) {
      const model = loadModel(TINY);
      const report = await quantize(model, parseSpec(s), { calibration });
      runs[s.split(':')[0]] = { model, report };
    }
  }, 30000);

  for (const m of ['rtn', 'gptq']) {
    test(`${m}:w4g128 → gptq format → loadModel: identical to the in-memory model with fp16-rounded scales`, async () => {
      const { model, report } = runs[m];
      expect(defaultFormat(model, report.spec)).toBe('gptq');
      const fp32ScalesNll = await nlls(model);
      // What `lowbit quantize --format gptq` does before writing: re-dequantize from fp16 scales.
      roundScalesForFormat(model, 'gptq');
      const memNll = await nlls(model);
      const out = path.join(tmp, `${m}-gptq`);
      const warnings: string[] = [];
      const res = saveQuantized(model, out, report, { format: 'gptq', onWarning: (w) => warnings.push(w) });
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
      expect(cfg.quantization_config).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 128, checkpoint_format: 'gptq', sym: false, desc_act: m === 'gptq' });
      const loaded = loadModel(out);
      const q0 = loaded.weights.layers[0].linears.q;
      expect(q0.quantized!.qweight).toEqual(model.weights.layers[0].linears.q.quantized!.qweight);
      expect(loaded.quantization?.spec.method).toBe(m);
      expect(sameLinears(model, loaded)).toBe(true);
      // The file runs through the packed kernels (fp32 sums in another order than the dense GEMM).
      expect(loaded.weights.layers[0].linears.q.weight).toBeUndefined();
      const fileNll = await nlls(loaded);
      expect(maxDiff(memNll, fileNll)).toBeLessThan(1e-3);
      expect(maxDiff(memNll, fpNll)).toBeGreaterThan(1e-3); // quantization did something
      // Without the rounding, the fp32-scale fake-quant model differs from the file by fp16 scale rounding only.
      let mean = 0;
      for (let t = 0; t < fileNll.length; t++) mean += Math.abs(fileNll[t] - fp32ScalesNll[t]) / fileNll.length;
      const d = maxDiff(fp32ScalesNll, fileNll);
      expect(mean).toBeLessThan(1e-3);
      expect(d).toBeLessThan(1e-2);
      console.log(`${m}:w4g128 gptq export: |ΔNLL| file vs fp32-scale fake quant: mean ${mean.toExponential(2)}, max ${d.toExponential(2)}; vs fp16-rounded (packed kernels): ${maxDiff(memNll, fileNll).toExponential(2)}; zero-0 groups ${res.zeroZeroGroups} (${warnings.length} warning)`);
    });
  }

  test('a loaded checkpoint holds its integers once: packed, unpacked on access; released file pages read back the same', () => {
    const loaded = loadModel(path.join(tmp, 'rtn-gptq'));
    const lin = loaded.weights.layers[0].linears.q as PackedLinear;
    expect(lin.packed?.kind).toBe('packed');
    expect(typeof Object.getOwnPropertyDescriptor(lin, 'quantized')?.get).toBe('function');
    const inMemory = runs.rtn.model.weights.layers[0].linears.q.quantized!;
    const q = lin.quantized!;
    expect(q).toMatchObject({ bits: 4, groupSize: 128, sym: inMemory.sym });
    expect(Buffer.from(q.qweight).equals(Buffer.from(inMemory.qweight))).toBe(true);
    expect(q.zeros).toEqual(inMemory.zeros);
    const ck = openCheckpoint(path.join(tmp, 'rtn-gptq'));
    const t = ck.get('model.layers.0.self_attn.q_proj.qweight');
    const before = Int32Array.from(t.data as Int32Array);
    expect(addon.adviseMapped(t.data, 'dontneed')).toBeGreaterThan(0);
    expect(Buffer.from((t.data as Int32Array).buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from(before.buffer))).toBe(true);
  });

  test('file sizes: quantized linears ≤ 0.35× their bf16 bytes (gptq w4g128)', () => {
    const qh = header(path.join(tmp, 'rtn-gptq', 'model.safetensors'));
    const fh = header(path.join(TINY, 'model.safetensors'));
    let qBytes = 0;
    let bfBytes = 0;
    for (let l = 0; l < 6; l++) {
      for (const n of LINEAR_NAMES) {
        const base = `model.layers.${l}.${LINEAR_TENSORS[n]}`;
        for (const s of ['qweight', 'qzeros', 'scales', 'g_idx']) qBytes += qh[`${base}.${s}`].data_offsets[1] - qh[`${base}.${s}`].data_offsets[0];
        const f = fh[`${base}.weight`];
        expect(f.dtype).toBe('BF16');
        bfBytes += f.shape[0] * f.shape[1] * 2;
      }
    }
    const ratio = qBytes / bfBytes;
    const whole = fs.statSync(path.join(tmp, 'rtn-gptq', 'model.safetensors')).size / fs.statSync(path.join(TINY, 'model.safetensors')).size;
    console.log(`qwen3-tiny gptq w4g128: linears ${qBytes} B vs bf16 ${bfBytes} B = ${ratio.toFixed(4)}; whole file ${whole.toFixed(4)}`);
    expect(ratio).toBeLessThanOrEqual(0.35);
  });

  test('awq and lowbit exports load back to the same weights', async () => {
    const { model, report } = runs.rtn; // scales already fp16-rounded by the gptq test
    saveQuantized(model, path.join(tmp, 'rtn-awq'), report, { format: 'awq' });
    const a = loadModel(path.join(tmp, 'rtn-awq'));
    expect(a.weights.layers[0].linears.down!.quantized!.zeros).toEqual(model.weights.layers[0].linears.down!.quantized!.zeros);
    expect(sameLinears(model, a)).toBe(true);
    saveQuantized(model, path.join(tmp, 'rtn-lowbit'), report, { format: 'lowbit' });
    expect(sameLinears(model, loadModel(path.join(tmp, 'rtn-lowbit')))).toBe(true);
    const { model: gm, report: gr } = runs.gptq;
    expect(() => saveQuantized(gm, path.join(tmp, 'gptq-awq'), gr, { format: 'awq' })).toThrow(/act-order .*g_idx.*AWQ/);
    expect(fs.existsSync(path.join(tmp, 'gptq-awq'))).toBe(false);
  });

  test('SmoothQuant W8A8 → lowbit int8 layout: same mean NLL, abits kept, folded norms in F32', async () => {
    const model = loadModel(TINY);
    const spec = parseSpec(`smoothquant:w8a8,nsamples=2,seqlen=${SEQ}`);
    const report = await quantize(model, spec, { calibration: readCalibIds(CALIB, 2, SEQ, 2048, 8192) });
    expect(defaultFormat(model, spec)).toBe('lowbit');
    const out = path.join(tmp, 'sq');
    const res = saveQuantized(model, out, report, { format: 'lowbit' });
    expect(res.kinds).toEqual({ int8: 42 });
    const h = header(path.join(out, 'model.safetensors'));
    expect(h['model.layers.0.self_attn.q_proj.qweight'].dtype).toBe('I8');
    expect(h['model.layers.0.input_layernorm.weight'].dtype).toBe('F32');
    expect(h['model.norm.weight'].dtype).toBe('BF16');
    const loaded = loadModel(out);
    expect(loaded.quantization?.actBits).toBe(8);
    expect(sameLinears(model, loaded)).toBe(true);
    // Reloaded W8A8 weights run the int8×int8 kernel, as the freshly quantized model's would.
    for (const n of LINEAR_NAMES) expect((loaded.weights.layers[0].linears[n] as { packed?: { kind: string } }).packed?.kind).toBe('int8');
    // int8×int8 kernels vs fp32 fake quantization: per-token 8-bit activation rounding amplifies last-ulp
    // differences (see test/packed.test.ts: one-ulp weight changes alone move positions by ~0.03), so
    // the bounds are on the mean NLL and on the mean per-position change.
    const a = await nlls(model);
    const b = await nlls(loaded);
    const mean = (x: ArrayLike<number>) => Array.from(x).reduce((p, v) => p + v, 0) / x.length;
    expect(Math.abs(mean(a) - mean(b))).toBeLessThan(5e-3);
    expect(meanAbsDiff(a, b)).toBeLessThan(0.06);
  });
});

/** qwen3-tiny with every linear replaced by random BiLLM binary tensors, as a lowbit (version 2) checkpoint. */
function binaryCheckpoint(): string {
  const dir = path.join(tmp, 'billm-synthetic');
  if (fs.existsSync(dir)) return dir;
  fs.mkdirSync(dir, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(TINY, 'config.json'), 'utf8'));
  cfg.quantization_config = { quant_method: 'lowbit', version: 2, method: 'billm', bits: 1, group_size: 128 };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  fs.copyFileSync(path.join(TINY, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
  const ck = openCheckpoint(TINY);
  const t: Record<string, TensorToWrite> = {};
  let seed = 1;
  for (const n of ck.names()) {
    const x = ck.get(n);
    const lin = /^(.*)\.weight$/.exec(n);
    if (lin && /(proj)$/.test(lin[1])) {
      const [out, inF] = x.shape;
      const b = randomBinary(out, inF, 128, seed++);
      t[`${lin[1]}.salient`] = { dtype: 'U8', shape: [Math.ceil(inF / 8)], data: b.salient };
      t[`${lin[1]}.codes`] = { dtype: 'I32', shape: [out, Math.ceil(inF / 16)], data: b.codes };
      t[`${lin[1]}.scales`] = { dtype: 'F16', shape: [out, Math.ceil(inF / 128), 8], data: b.scales };
    } else {
      t[n] = { dtype: x.dtype, shape: [...x.shape], data: x.data.slice() as never };
    }
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), t);
  return dir;
}

describe('BiLLM lowbit checkpoint (synthetic binary tensors on qwen3-tiny)', () => {
  test('loads as 1-bit kernel weights: bits as written, no dense weight; the forward runs', async () => {
    const dir = binaryCheckpoint();
    const model = loadModel(dir);
    expect(model.quantization?.spec.method).toBe('billm');
    const ck = openCheckpoint(dir);
    const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    for (const [l, layer] of model.weights.layers.entries()) {
      for (const n of LINEAR_NAMES) {
        const lin = layer.linears[n] as PackedLinear;
        const base = `model.layers.${l}.${LINEAR_TENSORS[n]}`;
        expect(lin.packed?.kind).toBe('binary');
        expect(lin.weight).toBeUndefined();
        for (const k of ['salient', 'codes', 'scales'] as const) expect(bytes(lin.binary![k]).equals(bytes(ck.get(`${base}.${k}`).data))).toBe(true);
      }
    }
    expect((await nlls(model)).every(Number.isFinite)).toBe(true);
  });
});

// -------------------------------------------------------------------------------------- bad inputs

describe('corrupt checkpoints give errors naming file and tensor', () => {
  const SRC = () => path.join(tmp, 'rtn-gptq');
  const Q = 'model.layers.0.self_attn.q_proj';

  function variant(name: string, editConfig?: (c: any) => void, editTensors?: (t: Record<string, TensorToWrite>) => void, src = SRC()): string {
    const dir = path.join(tmp, `bad-${name}`);
    fs.mkdirSync(dir, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
    editConfig?.(cfg);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const ck = openCheckpoint(src);
    const t: Record<string, TensorToWrite> = {};
    for (const n of ck.names()) {
      const x = ck.get(n);
      t[n] = { dtype: x.dtype, shape: [...x.shape], data: x.data.slice() as never };
    }
    editTensors?.(t);
    writeSafetensors(path.join(dir, 'model.safetensors'), t);
    return dir;
  }

  test('bits not matching the config', () => {
    const dir = variant('bits', (c) => (c.quantization_config.bits = 8));
    expect(() => loadModel(dir)).toThrow(new RegExp(`model\\.safetensors: tensor "${Q}\\.qweight" has shape \\[32, 256\\], expected \\[64, 256\\] \\(it holds 4-bit values, but .*config\\.json quantization_config\\.bits is 8\\)`));
  });
  test('wrong qweight shape', () => {
    const dir = variant('shape', undefined, (t) => {
      t[`${Q}.qweight`] = { dtype: 'I32', shape: [16, 256], data: new Int32Array(16 * 256) };
    });
    expect(() => loadModel(dir)).toThrow(new RegExp(`tensor "${Q}\\.qweight" has shape \\[16, 256\\], expected \\[32, 256\\]`));
  });
  test('g_idx out of range', () => {
    const dir = variant('gidx', undefined, (t) => {
      (t[`${Q}.g_idx`].data as Int32Array)[5] = 7;
    });
    expect(() => loadModel(dir)).toThrow(new RegExp(`tensor "${Q}\\.g_idx"\\[5\\] = 7 is out of range: there are 2 groups`));
  });
  test('missing scales', () => {
    const dir = variant('scales', undefined, (t) => delete t[`${Q}.scales`]);
    expect(() => loadModel(dir)).toThrow(new RegExp(`tensor "${Q}\\.scales" not found in .*model\\.safetensors`));
  });
  test('unsupported bits for AWQ; a GPTQ layout under quant_method awq', () => {
    const d1 = variant('awq3', (c) => (c.quantization_config = { quant_method: 'awq', bits: 3, group_size: 128, zero_point: true, version: 'gemm' }));
    expect(() => loadModel(d1)).toThrow(/config\.json: AWQ checkpoints with 3 bits are not supported \(AWQ GEMM is 4-bit only\)/);
    const d2 = variant('awqlayout', (c) => (c.quantization_config = { quant_method: 'awq', bits: 4, group_size: 128, zero_point: true, version: 'gemm' }));
    expect(() => loadModel(d2)).toThrow(new RegExp(`tensor "${Q}\\.qweight" has shape \\[32, 256\\], expected \\[256, 32\\]`));
  });
  test('group size not dividing in_features', () => {
    const dir = variant('group', (c) => (c.quantization_config.group_size = 100));
    expect(() => loadModel(dir)).toThrow(new RegExp(`"${Q}": group_size 100 \\(.*config\\.json\\) does not divide in_features 256`));
  });
  test('BiLLM binary: wrong codes shape, scales not F16, a non-finite scale, version 1 codebook, unknown version', () => {
    const src = binaryCheckpoint();
    const d1 = variant('bin-codes', undefined, (t) => (t[`${Q}.codes`] = { dtype: 'I32', shape: [256, 8], data: new Int32Array(256 * 8) }), src);
    expect(() => loadModel(d1)).toThrow(new RegExp(`tensor "${Q}\\.codes" has shape \\[256, 8\\], expected \\[256, 16\\]`));
    const d2 = variant('bin-f32', undefined, (t) => (t[`${Q}.scales`] = { dtype: 'F32', shape: [256, 2, 8], data: new Float32Array(256 * 16) }), src);
    expect(() => loadModel(d2)).toThrow(new RegExp(`tensor "${Q}\\.scales" is F32, expected F16`));
    const d3 = variant('bin-inf', undefined, (t) => ((t[`${Q}.scales`].data as Uint16Array)[37] = 0x7c00), src);
    expect(() => loadModel(d3)).toThrow(new RegExp(`tensor "${Q}\\.scales"\\[37\\] is not finite`));
    const d4 = variant('bin-v1', undefined, (t) => {
      for (const k of ['salient', 'codes', 'scales']) delete t[`${Q}.${k}`];
      t[`${Q}.codes`] = { dtype: 'I32', shape: [256, 24], data: new Int32Array(256 * 24) };
      t[`${Q}.codebook`] = { dtype: 'F32', shape: [256, 2, 8], data: new Float32Array(256 * 16) };
    }, src);
    expect(() => loadModel(d4)).toThrow(new RegExp(`"${Q}" uses lowbit format version 1's BiLLM codebook layout, which is no longer read`));
    const d5 = variant('bin-v3', (c) => (c.quantization_config.version = 3), undefined, src);
    expect(() => loadModel(d5)).toThrow(/lowbit format version 3 is not supported \(1, 2\)/);
  });
  test('unknown quant_method, unsupported checkpoint_format', () => {
    const d1 = variant('method', (c) => (c.quantization_config.quant_method = 'bitsandbytes'));
    expect(() => loadModel(d1)).toThrow(/quant_method "bitsandbytes" is not supported/);
    const d2 = variant('cf', (c) => (c.quantization_config.checkpoint_format = 'marlin'));
    expect(() => loadModel(d2)).toThrow(/checkpoint_format "marlin" is not supported/);
  });
});
