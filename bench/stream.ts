/**
 * Peak resident memory (max RSS, GNU time) of `lowbit eval` on a synthetic bf16 Qwen3 checkpoint larger than
 * the cap: the resident forward (baseline) against --stream and against --max-memory CAP (streamed on its own,
 * activations spilled to disk when they do not fit either), same model, same windows, same run. Also checks
 * that the three perplexities are identical.
 *
 *   sh bench/stream/run.sh [--layers 16] [--hidden 1024] [--windows 8] [--seqlen 512] [--cap 256M] [--threads 2] [--keep DIR]
 *
 * The weights are random (perplexity means nothing); shapes are Qwen3-0.6B-like with a smaller vocabulary.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeRandomQwen3 } from '../test/helpers/random-model';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const ROOT = path.resolve(__dirname, '..', '..', '..');
const layers = Number(arg('layers', '16'));
const hidden = Number(arg('hidden', '1024'));
const windows = arg('windows', '8');
const seqlen = arg('seqlen', '512');
const cap = arg('cap', '256M');
const threads = arg('threads', '2');
const inter = 4 * hidden, heads = hidden / 128, kv = Math.max(1, heads / 2), hd = 128, vocab = 8192;

function makeModel(dir: string): number {
  return writeRandomQwen3(dir, { layers, hidden, inter, heads, kvHeads: kv, headDim: hd, vocab }, path.join(ROOT, 'models', 'qwen3-tiny'));
}

function evalRun(dir: string, extra: string[]): { maxRssMiB: number; ppl: number; mode: string; seconds: number } {
  const args = ['-f', '%M', process.execPath, path.join(ROOT, 'dist', 'cli', 'main.js'), 'eval', dir, '--tasks', 'wikitext2',
    '--max-windows', windows, '--seqlen', seqlen, '--threads', threads, '--device', 'cpu', '--json', ...extra];
  const r = spawnSync('/usr/bin/time', args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`eval ${extra.join(' ')} failed: ${r.stderr}`);
  const kb = Number(r.stderr.trim().split('\n').pop());
  const doc = JSON.parse(r.stdout);
  return { maxRssMiB: kb / 1024, ppl: doc.results.wikitext2.ppl, mode: doc.results.wikitext2.mode, seconds: doc.results.wikitext2.seconds };
}

// --keep DIR: write the model there and leave it (for profiling runs by hand).
const keep = arg('keep', '');
const dir = keep || fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-stream-bench-'));
try {
  const bytes = makeModel(dir);
  console.log(`synthetic model: ${layers} layers, hidden ${hidden}, ${(bytes / 2 ** 20).toFixed(0)} MiB bf16; ${windows} windows × ${seqlen}; ${threads} threads; cap ${cap}`);
  const rows = [
    ['resident (baseline)', evalRun(dir, [])],
    ['--stream', evalRun(dir, ['--stream'])],
    [`--max-memory ${cap}`, evalRun(dir, ['--max-memory', cap])],
  ] as const;
  const base = rows[0][1];
  console.log('| run | mode | max RSS MiB | vs resident | eval s | ppl |\n|---|---|---|---|---|---|');
  for (const [name, r] of rows) {
    console.log(`| ${name} | ${r.mode} | ${r.maxRssMiB.toFixed(0)} | ${(r.maxRssMiB / base.maxRssMiB).toFixed(2)} | ${r.seconds.toFixed(1)} | ${r.ppl} |`);
  }
  if (!rows.every(([, r]) => r.ppl === base.ppl)) throw new Error('streamed perplexity differs from the resident one');
} finally {
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
}
