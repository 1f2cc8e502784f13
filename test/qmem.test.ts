// Quantization in bounded memory: quantize() leaves every finished layer packed (no fp32 copy of the model),
// `lowbit quantize --out` writes layer by layer, and under --max-memory the calibration activations wait on
// disk. The capped CLI run must give the same checkpoint, byte for byte, and the same perplexity as the
// in-memory API path (quantize + saveQuantized), and the checkpoint must evaluate to it when streamed.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { readCalibIds } from '../lib/calibrate/calibration';
import { CheckpointWriter, saveQuantized } from '../lib/export/checkpoint';
import { perplexity } from '../lib/eval/perplexity';
import { loadModel } from '../lib/load/model';
import { LINEAR_NAMES } from '../lib/load/types';
import type { PackedLinear } from '../lib/quant/packed';
import { quantize } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';
import { tmpDir } from './helpers/fixtures';
import { writeRandomQwen3 } from './helpers/random-model';

const ROOT = path.resolve(__dirname, '..');
const MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');
const CALIB = path.join(ROOT, 'data', 'calib_c4_128x2048.i16');

let tmp: string;
beforeAll(() => {
  tmp = tmpDir('lowbit-qmem-');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('quantize() keeps finished layers compact', () => {
  test('rtn:w4g128: at onLayer(l) layer l runs packed with no fp32 weight, layer l+1 is untouched', async () => {
    const m = loadModel(TINY);
    const seen: number[] = [];
    await quantize(m, parseSpec('rtn:w4g128'), {
      onLayer: (l) => {
        seen.push(l);
        for (const n of LINEAR_NAMES) {
          const lin = m.weights.layers[l].linears[n] as PackedLinear;
          expect(lin.packed?.kind).toBe('packed');
          expect(lin.weight).toBeUndefined();
          expect(lin.quantized?.bits).toBe(4);
          if (l + 1 < m.config.numLayers) expect(m.weights.layers[l + 1].linears[n]!.quantized).toBeUndefined();
        }
      },
    });
    expect(seen).toEqual([...Array(m.config.numLayers).keys()]);
  });

  test('rtn:w5g128 (no 5-bit kernel) keeps the fp32 weight', async () => {
    const m = loadModel(TINY);
    await quantize(m, parseSpec('rtn:w5g128'));
    const lin = m.weights.layers[0].linears.q as PackedLinear;
    expect(lin.packed).toBeUndefined();
    expect(lin.weight).toBeDefined();
    expect(lin.quantized?.bits).toBe(5);
  });
});

describe('writing as quantization goes', () => {
  test('a failure before finish leaves neither the output nor a temporary folder', () => {
    const m = loadModel(TINY);
    const out = path.join(tmp, 'aborted');
    const w = CheckpointWriter.open(m, out, parseSpec('rtn:w4g128'), { format: 'gptq' });
    // Layer 0 is not quantized: the gptq layout has nothing to write.
    expect(() => w.writeLayer(0)).toThrow(/model\.layers\.0\.self_attn\.q_proj carries no quantized integers/);
    w.abort();
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('aborted'))).toEqual([]);
  });

  test('a format the spec cannot fill is refused before any work, naming the linear', () => {
    const m = loadModel(TINY);
    expect(() => CheckpointWriter.open(m, path.join(tmp, 'awq3'), parseSpec('rtn:w3g128'), { format: 'awq' })).toThrow(
      /cannot write --format awq: model\.layers\.0\.self_attn\.q_proj: AWQ GEMM checkpoints hold 4-bit weights only/,
    );
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('awq3'))).toEqual([]);
  });
});

// Sizes where a 7 MiB cap spills the 4 MiB of calibration activations (> half the cap) while the default
// calibration batch (16 sequences) still fits a quarter of it: both paths then accumulate the same batches,
// so the results can be compared bit for bit.
const SIZE = { layers: 2, hidden: 256, inter: 96, heads: 4, kvHeads: 2, headDim: 64, vocab: 8192 };
const NSAMPLES = 128;
const SEQ = 32;
const CAP = '7M';

describe('lowbit quantize --max-memory on a synthetic model', () => {
  let model: string;
  let evalIds: Int32Array;
  beforeAll(() => {
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'pipe' });
    model = path.join(tmp, 'synthetic');
    writeRandomQwen3(model, SIZE, TINY);
    // Any token ids will do: the perplexities are compared with each other, not judged.
    evalIds = Int32Array.from(readCalibIds(CALIB, 2, 256).ids);
  });

  test('same checkpoint bytes and perplexity as the in-memory path; activations spilled; streamed eval agrees', async () => {
    const text = `gptq:w4g32,nsamples=${NSAMPLES},seqlen=${SEQ}`;
    const spec = parseSpec(text);
    const m = loadModel(model);
    const calibration = readCalibIds(CALIB, NSAMPLES, SEQ, 2048, SIZE.vocab);
    const report = await quantize(m, spec, { calibration, f16Scales: true });
    expect(report.activations).toBe('memory');
    const inMemory = path.join(tmp, 'in-memory');
    saveQuantized(m, inMemory, report, { format: 'gptq' });
    const ppl = (await perplexity(m, evalIds, { seqLen: SEQ * 4 })).ppl;

    const spill = path.join(tmp, 'spill');
    fs.mkdirSync(spill);
    const capped = path.join(tmp, 'capped');
    const r = spawnSync(
      process.execPath,
      [MAIN, 'quantize', model, '--quant', text, '--calib-ids', CALIB, '--max-memory', CAP, '--spill-dir', spill, '--out', capped, '--threads', '2', '--json'],
      { cwd: ROOT, encoding: 'utf8', timeout: 120000 },
    );
    if (r.status !== 0) throw new Error(`lowbit quantize failed: ${r.stderr}`);
    const doc = JSON.parse(r.stdout);
    expect(doc.format).toBe('gptq');
    expect(doc.quant.activations).toBe('disk');
    expect(fs.readdirSync(spill)).toEqual([]); // the spill file is gone
    expect(fs.readdirSync(tmp).filter((f) => /\.(tmp|old)-/.test(f))).toEqual([]);

    const a = fs.readFileSync(path.join(inMemory, 'model.safetensors'));
    const b = fs.readFileSync(path.join(capped, 'model.safetensors'));
    expect(b.length).toBe(a.length);
    expect(b.equals(a)).toBe(true);

    // The checkpoint reloads (packed) to the in-memory model's perplexity, resident and streamed under a cap below its size.
    const back = loadModel(capped);
    expect((await perplexity(back, evalIds, { seqLen: SEQ * 4 })).ppl).toBe(ppl);
    const streamed = await perplexity(back, evalIds, { seqLen: SEQ * 4, memory: { maxMemory: 1 << 20, spillDir: spill } });
    expect(streamed.mode).not.toBe('resident');
    expect(streamed.ppl).toBe(ppl);

    // quantize --eval scores the model it holds (packed, fp16 scales): what `lowbit eval` of the checkpoint gives.
    const evalArgs = ['--max-windows', '1', '--json']; // quantize --eval scores 2048-token windows, eval's default
    const withEval = path.join(tmp, 'with-eval');
    const q = spawnSync(process.execPath, [MAIN, 'quantize', model, '--quant', text, '--calib-ids', CALIB, '--max-memory', CAP, '--out', withEval, '--threads', '2', '--eval', 'wikitext2', ...evalArgs], { cwd: ROOT, encoding: 'utf8', timeout: 120000 });
    if (q.status !== 0) throw new Error(`lowbit quantize --eval failed: ${q.stderr}`);
    const e = spawnSync(process.execPath, [MAIN, 'eval', capped, '--threads', '2', '--tasks', 'wikitext2', ...evalArgs], { cwd: ROOT, encoding: 'utf8', timeout: 120000 });
    if (e.status !== 0) throw new Error(`lowbit eval failed: ${e.stderr}`);
    const pq = JSON.parse(q.stdout).results.wikitext2.ppl;
    expect(Number.isFinite(pq)).toBe(true);
    expect(JSON.parse(e.stdout).results.wikitext2.ppl).toBe(pq);
  }, 180000);
});
