/**
 * Peak resident memory (max RSS, GNU time) of `lowbit quantize --out` (GPTQ) on a synthetic bf16 Qwen3
 * checkpoint: without a cap, and with --max-memory CAP (calibration batches sized to the cap, activations
 * spilled to disk), same model, same calibration, same run. With --baseline DIR (a checkout of an earlier
 * lowbit, built: DIR/dist/cli/main.js) the same command of that version runs first as the baseline, e.g. the
 * pipeline that held every quantized linear in fp32 until the end. Each checkpoint is then scored on one
 * 512-token window so that the runs can be compared.
 *
 *   sh bench/qmem/run.sh [--layers 12] [--hidden 1024] [--inter N] [--nsamples 64] [--seqlen 256] [--quant SPEC] [--cap 64M] [--threads 2] [--baseline DIR] [--keep DIR]
 *
 * The capped run's checkpoint is also scored under --max-memory CAP (layer-streamed evaluation).
 *
 * The weights are random (perplexity means nothing beyond agreement); shapes are Qwen3-like with an 8192 vocabulary.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { openSafetensors } from '../lib/load/safetensors';
import { writeRandomQwen3 } from '../test/helpers/random-model';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const ROOT = path.resolve(__dirname, '..', '..', '..');
const layers = Number(arg('layers', '12'));
const hidden = Number(arg('hidden', '1024'));
const nsamples = arg('nsamples', '64');
const seqlen = arg('seqlen', '256');
const cap = arg('cap', '64M');
const threads = arg('threads', '2');
const baseline = arg('baseline', '');
const size = { layers, hidden, inter: Number(arg('inter', String(Math.round((hidden * 8) / 3 / 128) * 128))), heads: hidden / 128, kvHeads: Math.max(1, hidden / 256), headDim: 128, vocab: 8192 };
const SPEC = arg('quant', `gptq:w4g128,nsamples=${nsamples},seqlen=${seqlen}`);

interface Run {
  maxRssMiB: number;
  seconds: number;
  ppl: number;
  activations: string;
  /** With a cap: the checkpoint scored under it. */
  capped?: { ppl: number; mode: string; maxRssMiB: number };
}

function timed(main: string, args: string[]): { kb: number; stdout: string; seconds: number } {
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, main, ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${args.slice(0, 2).join(' ')} failed: ${r.stderr}`);
  return { kb: Number(r.stderr.trim().split('\n').pop()), stdout: r.stdout, seconds: (performance.now() - t0) / 1000 };
}

function quantizeRun(root: string, model: string, out: string, extra: string[]): Run {
  const main = path.join(root, 'dist', 'cli', 'main.js');
  const calib = path.join(ROOT, 'data', 'calib_c4_128x2048.i16');
  const q = timed(main, ['quantize', model, '--quant', SPEC, '--calib-ids', calib, '--format', 'gptq', '--out', out, '--threads', threads, '--device', 'cpu', '--json', ...extra]);
  const doc = JSON.parse(q.stdout);
  const evalArgs = ['eval', out, '--tasks', 'wikitext2', '--max-windows', '1', '--seqlen', '512', '--threads', threads, '--device', 'cpu', '--json'];
  const e = timed(path.join(ROOT, 'dist', 'cli', 'main.js'), evalArgs);
  const run: Run = { maxRssMiB: q.kb / 1024, seconds: q.seconds, ppl: JSON.parse(e.stdout).results.wikitext2.ppl, activations: doc.quant.activations ?? 'none' };
  const capAt = extra.indexOf('--max-memory');
  if (capAt >= 0) {
    const c = timed(path.join(ROOT, 'dist', 'cli', 'main.js'), [...evalArgs, '--max-memory', extra[capAt + 1]]);
    const w = JSON.parse(c.stdout).results.wikitext2;
    run.capped = { ppl: w.ppl, mode: w.mode, maxRssMiB: c.kb / 1024 };
  }
  return run;
}

/** Whether two checkpoints hold the same tensors (names, dtypes, shapes, bytes), whatever their order in the file. */
function sameTensors(a: string, b: string): string {
  const fa = openSafetensors(path.join(dir, a, 'model.safetensors'));
  const fb = openSafetensors(path.join(dir, b, 'model.safetensors'));
  const names = fa.names();
  if (names.length !== fb.names().length) return 'different tensor names';
  const differ = names.filter((n) => {
    const [x, y] = [fa.get(n), fb.get(n)];
    const bytes = (t: typeof x) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    return x.dtype !== y.dtype || x.shape.join() !== y.shape.join() || !bytes(x).equals(bytes(y));
  });
  return differ.length ? `${differ.length} of ${names.length} tensors differ` : `all ${names.length} identical`;
}

const keep = arg('keep', '');
const dir = keep || fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-qmem-bench-'));
try {
  const model = path.join(dir, 'model');
  const bytes = writeRandomQwen3(model, size, path.join(ROOT, 'models', 'qwen3-tiny'));
  const actMiB = (Number(nsamples) * Number(seqlen) * hidden * 4) / 2 ** 20;
  console.log(
    `synthetic model: ${layers} layers, hidden ${hidden}, intermediate ${size.inter}, ${(bytes / 2 ** 20).toFixed(0)} MiB bf16 ` +
      `(${((bytes * 2) / 2 ** 20).toFixed(0)} MiB as fp32); ${SPEC} (calibration activations ${actMiB.toFixed(0)} MiB); ${threads} threads; cap ${cap}`,
  );
  const rows: [string, Run][] = [];
  if (baseline) rows.push([`baseline (${path.basename(baseline)}), no cap`, quantizeRun(baseline, model, path.join(dir, 'out-base'), [])]);
  rows.push(['this version, no cap', quantizeRun(ROOT, model, path.join(dir, 'out-resident'), [])]);
  rows.push([`this version, --max-memory ${cap}`, quantizeRun(ROOT, model, path.join(dir, 'out-capped'), ['--max-memory', cap, '--spill-dir', dir])]);
  const base = rows[0][1];
  console.log('| run | calibration activations | max RSS MiB | vs first row | quantize s | ppl (1 window) |\n|---|---|---|---|---|---|');
  for (const [name, r] of rows) {
    console.log(`| ${name} | ${r.activations} | ${r.maxRssMiB.toFixed(0)} | ${(r.maxRssMiB / base.maxRssMiB).toFixed(2)} | ${r.seconds.toFixed(1)} | ${r.ppl.toFixed(4)} |`);
  }
  if (baseline) console.log(`tensors of the baseline's checkpoint and of this version's without a cap: ${sameTensors('out-base', 'out-resident')}`);
  console.log(`tensors without a cap and under the cap: ${sameTensors('out-resident', 'out-capped')}`);
  const c = rows[rows.length - 1][1].capped!;
  console.log(`the capped run's checkpoint evaluated under --max-memory ${cap}: ${c.mode}, max RSS ${c.maxRssMiB.toFixed(0)} MiB, ppl ${c.ppl.toFixed(4)} (${c.ppl === rows[rows.length - 1][1].ppl ? 'identical to' : 'differs from'} its resident evaluation)`);
} finally {
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
}
