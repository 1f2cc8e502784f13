/**
 * Resident memory of a loaded model: for each model folder, in a fresh child process (node --expose-gc), RSS
 * (with its anonymous and file-backed parts from /proc/self/status) before loadModel(dir), right after it, after
 * a GC (the loader's temporaries gone), and after one forward pass over 256 tokens (which touches every weight). File-backed pages are the memory-mapped
 * checkpoint; anonymous ones are copies (packed kernel layouts, unpacked integers, norms, activations).
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench-rss
 *   node /tmp/lowbit-bench-rss/bench/rss.js DIR [DIR ...]
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

interface Mem {
  rss: number;
  anon: number;
  file: number;
}

function mem(): Mem {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
}

async function child(dir: string): Promise<void> {
  /* eslint-disable @typescript-eslint/no-var-requires */
  const { loadModel } = require('../lib/load/model');
  const { scoreSequences } = require('../lib/eval/forward');
  /* eslint-enable @typescript-eslint/no-var-requires */
  const gc = (globalThis as { gc?: () => void }).gc!;
  gc();
  const base = mem();
  const model = loadModel(dir);
  const loaded = mem();
  gc();
  const collected = mem();
  const ids = Int32Array.from({ length: 256 }, (_, i) => (i * 7919 + 13) % model.config.vocabSize);
  await scoreSequences(model, ids, 256);
  gc();
  const forward = mem();
  console.log(JSON.stringify({ base, loaded, collected, forward }));
}

function main(): void {
  if (process.argv[2] === '--child') {
    child(process.argv[3]).catch((e) => {
      console.error(e);
      process.exit(1);
    });
    return;
  }
  const dirs = process.argv.slice(2);
  if (!dirs.length) throw new Error('usage: rss.js MODEL_DIR [MODEL_DIR ...]');
  const MB = (b: number) => (b / 1e6).toFixed(1);
  console.log('| model | file MB | RSS after load MB (anon / file) | Δ | after load + GC (anon / file) | Δ | after a 256-token forward + GC (anon / file) | Δ |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const dir of dirs) {
    const r: { base: Mem; loaded: Mem; collected: Mem; forward: Mem } = JSON.parse(
      execFileSync(process.execPath, ['--expose-gc', __filename, '--child', dir], { encoding: 'utf8', env: { ...process.env, LOWBIT_THREADS: '1' } }).trim(),
    );
    const size = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.safetensors'))
      .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const what = cfg.quantization_config ? `${cfg.quantization_config.quant_method} w${cfg.quantization_config.bits} g${cfg.quantization_config.group_size}` : cfg.dtype ?? cfg.torch_dtype;
    const cell = (m: Mem) => `${MB(m.rss)} (${MB(m.anon)} / ${MB(m.file)}) | ${MB(m.rss - r.base.rss)}`;
    console.log(`| ${path.basename(dir)} (${what}) | ${MB(size)} | ${cell(r.loaded)} | ${cell(r.collected)} | ${cell(r.forward)} |`);
  }
  console.log('\nΔ: against the same child before loadModel (node + lowbit loaded, after a GC).');
}

main();
