// The study's report from a synthetic store: the study's table layout (FP row first, "value (change)"
// cells, Avg of the zero-shot accuracies), families in separate tables, skipped combinations and failed
// cells listed; results.csv; and the plots: SVGs with their axis labels and legends, PNGs that are PNGs.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Cell, expandGrid } from '../lib/study/grid';
import { fmtDelta, renderCsv, loadStudy, writeReport } from '../lib/study/report';
import { logTicks, renderSvg, svgToPng } from '../lib/study/plots';
import { Manifest, manifestPath } from '../lib/study/runner';
import { ResultStore, TaskMetrics } from '../lib/study/store';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-report-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const ZS = ['piqa', 'arc_easy', 'arc_challenge', 'hellaswag', 'winogrande', 'boolq'];

/** Synthetic results: ppl grows and accuracy falls as bits shrink; the bigger model degrades less. */
function fakeResults(cell: Cell, scale: number): Record<string, TaskMetrics> {
  const loss = cell.method === 'fp' ? 0 : (cell.wbits >= 8 ? 0.01 : 2 ** (4 - cell.wbits) * 0.1) * (cell.groupSize === -1 ? 1.5 : 1) / scale;
  const r: Record<string, TaskMetrics> = {
    wikitext2: { ppl: 190 * (1 + loss) / scale, windows: 4, tokens: 8192, seconds: 1 },
    c4: { ppl: 150 * (1 + loss) / scale, windows: 4, tokens: 8192, seconds: 1 },
  };
  ZS.forEach((t, i) => (r[t] = { acc: Math.max(0.25, 0.6 + 0.02 * i - loss / 4), acc_norm: 0.5, n: 200, seconds: 1 }));
  r.mmlu = { acc: 0.3 - loss / 20, n: 1000, subjects: 57, categories: 4 };
  return r;
}

function syntheticStudy(dir: string): void {
  const grid = expandGrid({
    models: ['/models/tiny', '/models/big'],
    blocks: [
      { methods: ['rtn', 'gptq', 'billm'], wbits: [8, 4, 3, 2, 1], groups: [128, -1] },
      { methods: ['smoothquant'], wbits: [8, 4], groups: [-1, 128], abits: [8, 4] },
    ],
  });
  const store = new ResultStore(dir);
  const cells = grid.cells.map((c, i) => ({ fp: `fp${i}`, cell: c }));
  for (const { fp, cell } of cells) {
    if (cell.label === 'gptq:w2perchannel' && cell.modelName === 'tiny') {
      store.append({ v: 1, fp, cell, status: 'failed', results: null, seconds: 3, error: 'Cholesky failed at model.layers.0.q' });
      continue;
    }
    if (cell.label === 'gptq:w3perchannel' && cell.modelName === 'big') continue; // not run yet
    store.append({ v: 1, fp, cell, status: 'ok', results: fakeResults(cell, cell.modelName === 'big' ? 2 : 1), seconds: 5 });
  }
  store.close();
  const manifest: Manifest = {
    v: 1,
    lowbit: '0.1.0',
    updated: new Date().toISOString(),
    eval: { tasks: ['wikitext2', 'c4', ...ZS, 'mmlu'], seqLen: 2048, maxWindows: 4, limit: 200, dataDir: '/data' },
    calibration: { calibIds: '/data/calib_c4_128x2048.i16' },
    cells: cells.map(({ fp, cell }) => ({ fp, cell: { ...cell, spec: undefined } as Cell })),
    skipped: grid.skipped,
  };
  fs.writeFileSync(manifestPath(dir), JSON.stringify(manifest));
}

test('delta formatting: ppl "+", accuracy with a true minus sign', () => {
  expect(fmtDelta(197.23, 192.9, 'ppl')).toBe('197.2 (+4.3)');
  expect(fmtDelta(61.3, 63.4, 'acc')).toBe('61.3 (\u22122.1)');
  expect(fmtDelta(6.14, 6.14, 'ppl')).toBe('6.14 (±0)');
  expect(fmtDelta(null, 6.1, 'ppl')).toBe('NaN');
});

test('report.md: per model and family, FP row first, deltas, Avg, skipped and failed cells listed', () => {
  const dir = path.join(tmp, 'study');
  syntheticStudy(dir);
  const out = writeReport(dir);
  const md = fs.readFileSync(path.join(dir, 'report.md'), 'utf8');
  expect(md).toBe(out.markdown);
  const sections = md.split(/^## /m).slice(1);
  expect(sections.map((s) => s.split('\n')[0])).toEqual(['tiny', 'big', 'Across models']);
  const tiny = sections[0];
  expect(tiny.match(/^### .*/gm)).toEqual(['### Weight-only: RTN', '### Weight-only: GPTQ', '### Weight and activation: SmoothQuant', '### BiLLM (1-bit)']);
  const header = '| Method | #W | #A | #G | Wiki2 | C4 | PIQA | ARC-E | ARC-C | HellaSwag | WinoGrande | BoolQ | Avg | MMLU |';
  for (const table of tiny.split('### ').slice(1)) {
    const rows = table.split('\n').filter((l) => l.startsWith('|'));
    expect(rows[0]).toBe(header);
    expect(rows[2]).toMatch(/^\| FP \| 16 \| 16 \| - \| 190\.0 \| 150\.0 \| 60\.0 \| 62\.0 \| 64\.0 \| 66\.0 \| 68\.0 \| 70\.0 \| 65\.0 \| 30\.0 \|$/);
    for (const r of rows.slice(3).filter((l) => !l.includes('failed'))) expect(r).toMatch(/\((\+|\u2212|±)/);
  }
  // rtn w4g128: ppl ×1.1, accuracies −2.5 points
  expect(tiny).toContain('| RTN | 4 | 16 | 128 | 209.0 (+19.0) | 165.0 (+15.0) | 57.5 (\u22122.5) |');
  expect(tiny).toContain('| SmoothQuant | 4 | 4 | - |');
  expect(tiny).toContain('| BiLLM | 1 | 16 | 128 |');
  // rows ordered by bits, g128 before per-channel
  const rtnRows = tiny.split('### Weight-only: RTN')[1].split('###')[0].split('\n').filter((l) => l.startsWith('| RTN')).map((l) => l.split(' | ').slice(1, 4).join('/'));
  expect(rtnRows).toEqual(['8/16/128', '8/16/-', '4/16/128', '4/16/-', '3/16/128', '3/16/-', '2/16/128', '2/16/-']);
  expect(tiny).toMatch(/Failed cells[^\n]*\n\n- gptq:w2perchannel: Cholesky failed at model\.layers\.0\.q/);
  expect(tiny).toContain('- rtn:w1g128, rtn:w1perchannel, gptq:w1g128, gptq:w1perchannel: 1-bit weights: use billm');
  expect(tiny).toMatch(/smoothquant:w8a8g128.*: smoothquant quantizes weights per output channel; group size 128 does not apply/);
  expect(tiny).toMatch(/billm:w1perchannel: billm works on column blocks/);
  expect(sections[1]).toContain('Not run yet (rerun the study to resume): gptq:w3perchannel.');
  expect(fs.readdirSync(dir).filter((f) => /\.tmp-|\.old-/.test(f))).toEqual([]);

  // results.csv: raw numbers, skipped and failed rows with their status
  const csv = fs.readFileSync(path.join(dir, 'results.csv'), 'utf8').trimEnd().split('\n');
  expect(csv[0]).toBe('Model,Family,Spec,Method,#W,#A,#G,Wiki2,C4,PIQA,ARC-E,ARC-C,HellaSwag,WinoGrande,BoolQ,Avg,MMLU,Status');
  expect(csv[1]).toBe('tiny,fp,fp,FP,16,16,-,190.0000,150.0000,60.00,62.00,64.00,66.00,68.00,70.00,65.00,30.00,ok');
  expect(csv).toContain('tiny,weight,rtn:w1g128,RTN,1,16,128,,,,,,,,,,,skipped: 1-bit weights: use billm');
  expect(csv.some((l) => l.startsWith('tiny,weight,gptq:w2perchannel,GPTQ,2,16,-,') && l.endsWith('failed: Cholesky failed at model.layers.0.q'))).toBe(true);
  expect(renderCsv(loadStudy(dir))).toBe(csv.join('\n') + '\n'); // `lowbit report` regenerates the same from the store
});

test('plots: SVGs with titles, axis labels and legends; PNGs rendered with text', () => {
  const dir = path.join(tmp, 'study');
  if (!fs.existsSync(path.join(dir, 'plots'))) {
    syntheticStudy(dir);
    writeReport(dir);
  }
  const plots = fs.readdirSync(path.join(dir, 'plots')).sort();
  expect(plots).toEqual(
    ['acc_big', 'acc_tiny', 'ppl_c4_big', 'ppl_c4_tiny', 'ppl_wikitext2_big', 'ppl_wikitext2_tiny', 'robustness'].flatMap((n) => [`${n}.png`, `${n}.svg`]).sort(),
  );
  const svg = fs.readFileSync(path.join(dir, 'plots', 'ppl_wikitext2_tiny.svg'), 'utf8');
  expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
  expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
  for (const t of ['tiny: WikiText-2 perplexity vs weight bits', 'weight bits (#W)', 'perplexity, WikiText-2 (log scale)', 'RTN g128', 'RTN per-channel', 'GPTQ g128', 'BiLLM g128', 'SmoothQuant W·A8', 'FP 190.0']) {
    expect(svg).toContain(`>${t}<`);
  }
  expect(svg).toMatch(/stroke-dasharray="7,4"/); // per-channel dashed
  // well-formed enough for a strict XML renderer: resvg parses it
  const png = fs.readFileSync(path.join(dir, 'plots', 'ppl_wikitext2_tiny.png'));
  expect(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))).toBe(true);
  expect(png.length).toBeGreaterThan(20000);
  expect(png.readUInt32BE(16)).toBe(1200); // 800 px × 1.5
  const rob = fs.readFileSync(path.join(dir, 'plots', 'robustness.svg'), 'utf8');
  for (const t of ['>tiny<', '>big<', '>quantized ppl / FP ppl (log scale)<', '>FP (ratio 1)<']) expect(rob).toContain(t);
  const acc = fs.readFileSync(path.join(dir, 'plots', 'acc_tiny.svg'), 'utf8');
  expect(acc).toContain('>average zero-shot accuracy (%)<');
});

test('text makes a PNG heavier (a font was found and used)', () => {
  const base = { title: '', xLabel: '', yLabel: '', logY: false, series: [{ name: '', color: '#000', points: [[1, 1], [2, 2]] as [number, number][] }] };
  const blank = svgToPng(renderSvg(base))!;
  const text = svgToPng(renderSvg({ ...base, title: 'Perplexity vs bits, a long title', xLabel: 'weight bits', yLabel: 'perplexity' }))!;
  expect(text.length).toBeGreaterThan(blank.length + 1000);
});

test('log ticks: decades over a wide range, 1-3 or 1-2-5 over shorter ones', () => {
  expect(logTicks(5, 2e5)).toEqual([10, 100, 1000, 10000, 100000]);
  expect(logTicks(120, 900)).toEqual([200, 400, 600, 800]); // too few 1-2-5 ticks: nice linear ones
  expect(logTicks(3, 300)).toEqual([3, 10, 30, 100, 300]);
});
