// Quality against the reference anchors: quantize a model with each spec (calibration = the anchors' own
// ids), evaluate full WikiText-2 and C4 perplexity, and compare with ../shared/golden/<model>.json.
// Usage: npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench &&
//   node /tmp/lowbit-bench/bench/anchors.js --model DIR --golden FILE --calib-ids FILE [--data-dir DIR] [--max-windows N] SPEC…
// SPEC as the CLI takes it (rtn:w4g128 …) or "fp32". Prints a markdown table; --out FILE appends JSON lines.
// --device cuda evaluates on the GPU in fp32 (--dtype fp32, the anchors' precision) and runs GPTQ there too (the
// other methods quantize on the CPU); W/A settings (activation quantization) evaluate there too.
import * as fs from 'fs';
import * as path from 'path';
import { readCalibIds } from '../lib/calibrate/calibration';
import { toDevice } from '../lib/eval/cuda';
import { evaluate } from '../lib/eval/evaluate';
import { loadModel } from '../lib/load/model';
import { loadTokenizer } from '../lib/load/tokenizer';
import { quantize } from '../lib/quant/pipeline';
import { parseSpec, QuantSpec } from '../lib/quant/spec';

function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
}

/** The anchor key the reference used for a spec, e.g. gptq-w4-g128, smoothquant-a0.5-w4a8, naive-w8a8. */
function anchorKey(s: QuantSpec): string {
  if (s.method === 'smoothquant') return `smoothquant-a${s.alpha}-w${s.wbits}a${s.abits}`;
  if (s.method === 'naive') return `naive-w${s.wbits}a${s.abits}`;
  return `${s.method}-w${s.wbits}-${s.groupSize === -1 ? 'perchannel' : `g${s.groupSize}`}`;
}

async function main() {
  const modelDir = arg('--model')!;
  const golden = JSON.parse(fs.readFileSync(arg('--golden')!, 'utf8'));
  const calibIds = arg('--calib-ids')!;
  const dataDir = arg('--data-dir', path.resolve(__dirname, '..', '..', 'data'))!;
  const maxWindows = arg('--max-windows') ? Number(arg('--max-windows')) : undefined;
  const out = arg('--out');
  const device = arg('--device', 'cpu')!;
  const dtype = arg('--dtype', 'fp32') as 'fp32' | 'bf16' | 'fp16';
  const flags = new Set(['--model', '--golden', '--calib-ids', '--data-dir', '--max-windows', '--out', '--device', '--dtype']);
  const specs = process.argv.slice(2).filter((a, i, all) => !a.startsWith('--') && !flags.has(all[i - 1]));
  const tok = loadTokenizer(modelDir);
  const encode = (t: string) => tok.encode(t);
  const rows: string[] = ['| setting | wikitext2 | anchor | ratio | c4 | anchor | ratio | quant s |', '|---|---|---|---|---|---|---|---|'];
  for (const text of specs) {
    const model = loadModel(modelDir);
    let key = 'fp32';
    let quantS = 0;
    let extra = '';
    if (text !== 'fp32') {
      const spec = parseSpec(text);
      key = anchorKey(spec);
      const calibration = spec.method === 'rtn' || (spec.method === 'naive') ? undefined : readCalibIds(calibIds, spec.nsamples, spec.calibSeqLen);
      const r = await quantize(model, spec, { calibration, device });
      quantS = r.seconds;
      if (r.avgBits) extra = ` (${r.avgBits.toFixed(3)} bits)`;
    }
    if (device !== 'cpu') await toDevice(model, device, { dtype });
    const res = await evaluate(model, encode, { tasks: ['wikitext2', 'c4'], dataDir, maxWindows });
    if (device !== 'cpu') await toDevice(model, 'cpu');
    const a = golden.anchors[key] ?? {};
    const w = res.wikitext2.ppl ?? NaN;
    const c = res.c4.ppl ?? NaN;
    const ratio = (x: number, y?: number) => (y ? (x / y).toFixed(4) : '–');
    const line = `| ${text}${extra} | ${w.toFixed(3)} | ${a.wikitext2 ?? '–'} | ${ratio(w, a.wikitext2)} | ${c.toFixed(3)} | ${a.c4 ?? '–'} | ${ratio(c, a.c4)} | ${quantS.toFixed(1)} |`;
    rows.push(line);
    console.error(line);
    if (out) fs.appendFileSync(out, JSON.stringify({ spec: text, anchor: key, wikitext2: w, c4: c, anchorWikitext2: a.wikitext2, anchorC4: a.c4, quantSeconds: quantS, windows: { wikitext2: res.wikitext2.windows, c4: res.c4.windows } }) + '\n');
  }
  console.log(rows.join('\n'));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
