// The study's report, from the store alone (DIR/results.log + DIR/study.json): DIR/report.md with one
// table per model and setting family (weight-only per method, W/A, BiLLM) in the study's layout, the
// full-precision row first and every other cell as "value (change from FP)"; DIR/results.csv with the raw
// numbers; DIR/plots/. All written atomically (temp file + rename).
import * as fs from 'fs';
import * as path from 'path';
import { writeDirAtomically } from '../export/checkpoint';
import { CellInfo, SkippedCell } from './grid';
import { fileSafe, renderPlots } from './plots';
import { Manifest, readManifest } from './runner';
import { ResultStore, StudyRecord, TaskMetrics, writeFileAtomically } from './store';

export type Kind = 'ppl' | 'acc';

export interface Column {
  key: string; // task name in the results
  head: string;
  kind: Kind;
}

/** The study's layout; tasks outside it are appended after MMLU under their own names. */
export const LAYOUT: Column[] = [
  { key: 'wikitext2', head: 'Wiki2', kind: 'ppl' },
  { key: 'c4', head: 'C4', kind: 'ppl' },
  { key: 'piqa', head: 'PIQA', kind: 'acc' },
  { key: 'arc_easy', head: 'ARC-E', kind: 'acc' },
  { key: 'arc_challenge', head: 'ARC-C', kind: 'acc' },
  { key: 'hellaswag', head: 'HellaSwag', kind: 'acc' },
  { key: 'winogrande', head: 'WinoGrande', kind: 'acc' },
  { key: 'boolq', head: 'BoolQ', kind: 'acc' },
  { key: 'mmlu', head: 'MMLU', kind: 'acc' },
];
/** The zero-shot tasks whose accuracies Avg averages (the study's Avg column; MMLU is reported apart). */
export const AVG_TASKS = ['piqa', 'arc_easy', 'arc_challenge', 'hellaswag', 'winogrande', 'boolq'];

export type RowStatus = 'ok' | 'failed' | 'pending';

export interface Row {
  cell: CellInfo;
  status: RowStatus;
  /** Per task: perplexity, or accuracy in % (the plain `acc`, as the study reports); null = NaN. */
  values: Record<string, number | null>;
  avg?: number;
  error?: string;
  seconds?: number;
}

export interface ModelData {
  name: string;
  fp?: Row;
  rows: Row[]; // quantized cells, in table order
  skipped: SkippedCell[];
}

export interface StudyData {
  dir: string;
  manifest?: Manifest;
  records: number;
  columns: Column[]; // the layout's columns that have any value, then extra tasks
  models: ModelData[];
}

function metricValue(r: TaskMetrics): { kind: Kind; value: number | null } | undefined {
  if (typeof r.acc === 'number') return { kind: 'acc', value: r.acc <= 1 ? 100 * r.acc : r.acc };
  if ('ppl' in r) return { kind: 'ppl', value: typeof r.ppl === 'number' && Number.isFinite(r.ppl) ? r.ppl : null };
  return undefined;
}

function rowFrom(cell: CellInfo, rec: StudyRecord | undefined, kinds: Map<string, Kind>): Row {
  if (!rec) return { cell, status: 'pending', values: {} };
  if (rec.status !== 'ok' || !rec.results) return { cell, status: 'failed', values: {}, error: rec.error, seconds: rec.seconds };
  const values: Record<string, number | null> = {};
  for (const [task, r] of Object.entries(rec.results)) {
    const m = r && typeof r === 'object' ? metricValue(r) : undefined;
    if (!m) continue;
    values[task] = m.value;
    if (!kinds.has(task)) kinds.set(task, m.kind);
  }
  const accs = AVG_TASKS.map((t) => values[t]).filter((v): v is number => typeof v === 'number');
  return { cell, status: 'ok', values, avg: accs.length ? accs.reduce((a, b) => a + b, 0) / accs.length : undefined, seconds: rec.seconds };
}

const FAMILY_ORDER = { fp: 0, weight: 1, wa: 2, billm: 3 } as const;
const METHOD_ORDER = ['rtn', 'gptq', 'awq', 'smoothquant', 'naive', 'billm'];

function compareCells(a: CellInfo, b: CellInfo): number {
  return (
    FAMILY_ORDER[a.family] - FAMILY_ORDER[b.family] ||
    METHOD_ORDER.indexOf(a.method) - METHOD_ORDER.indexOf(b.method) ||
    b.wbits - a.wbits ||
    b.abits - a.abits ||
    (a.groupSize === -1 ? 1e9 : a.groupSize) - (b.groupSize === -1 ? 1e9 : b.groupSize)
  );
}

/** Reads the store: the latest study's cells (study.json) joined with their records by fingerprint. */
export function loadStudy(dir: string): StudyData {
  const store = new ResultStore(dir, { readOnly: true });
  const manifest = readManifest(dir);
  const kinds = new Map<string, Kind>();
  let entries: { cell: CellInfo; rec?: StudyRecord }[];
  let skipped: SkippedCell[] = [];
  if (manifest) {
    entries = manifest.cells.map((c) => ({ cell: c.cell, rec: store.get(c.fp) }));
    skipped = manifest.skipped;
  } else {
    // No manifest: every cell in the log, its latest record.
    const latest = new Map<string, StudyRecord>();
    for (const r of store.records()) latest.set(`${r.cell.model}\u0000${r.cell.label}`, r);
    entries = [...latest.values()].map((r) => ({ cell: r.cell, rec: r }));
  }
  const models: ModelData[] = [];
  for (const e of entries) {
    let m = models.find((x) => x.name === e.cell.modelName);
    if (!m) models.push((m = { name: e.cell.modelName, rows: [], skipped: skipped.filter((s) => s.modelName === e.cell.modelName) }));
    const row = rowFrom(e.cell, e.rec, kinds);
    if (e.cell.family === 'fp') m.fp = row;
    else m.rows.push(row);
  }
  for (const m of models) m.rows.sort((a, b) => compareCells(a.cell, b.cell));
  const columns = LAYOUT.filter((c) => kinds.has(c.key));
  for (const [task, kind] of kinds) if (!LAYOUT.some((c) => c.key === task)) columns.push({ key: task, head: task, kind });
  return { dir: path.resolve(dir), manifest, records: store.records().length, columns, models };
}

const MINUS = '\u2212';

function digits(v: number, kind: Kind): number {
  if (kind === 'acc') return 1;
  const a = Math.abs(v);
  return a < 100 ? 2 : a < 10000 ? 1 : 0;
}

export function fmtValue(v: number | null | undefined, kind: Kind): string {
  if (v === undefined) return '–';
  if (v === null) return 'NaN';
  if (kind === 'ppl' && Math.abs(v) >= 1e6) return v.toExponential(2);
  return v.toFixed(digits(v, kind));
}

/** "197.2 (+4.3)", "61.3 (−2.1)": the value and its change from full precision. */
export function fmtDelta(v: number | null | undefined, fp: number | null | undefined, kind: Kind): string {
  const s = fmtValue(v, kind);
  if (typeof v !== 'number' || typeof fp !== 'number') return s;
  const d = v - fp;
  let ds = kind === 'ppl' && Math.abs(d) >= 1e6 ? Math.abs(d).toExponential(2) : Math.abs(d).toFixed(digits(fp, kind));
  if (Number(ds) === 0) return `${s} (±0)`;
  ds = (d < 0 ? MINUS : '+') + ds;
  return `${s} (${ds})`;
}

const METHOD_NAMES: Record<string, string> = {
  fp: 'FP',
  rtn: 'RTN',
  gptq: 'GPTQ',
  awq: 'AWQ',
  smoothquant: 'SmoothQuant',
  naive: 'W/A, no smoothing',
  billm: 'BiLLM',
};

export function methodName(m: string): string {
  return METHOD_NAMES[m] ?? m;
}

function headCells(cell: CellInfo): string[] {
  return [
    methodName(cell.method),
    String(cell.wbits),
    String(cell.abits || 16),
    cell.groupSize === -1 ? '-' : String(cell.groupSize),
  ];
}

function tableColumns(data: StudyData): (Column | 'avg')[] {
  const cols: (Column | 'avg')[] = [...data.columns];
  if (!data.columns.some((c) => AVG_TASKS.includes(c.key))) return cols;
  const mmlu = cols.findIndex((c) => c !== 'avg' && c.key === 'mmlu');
  let lastLayout = -1;
  cols.forEach((c, i) => c !== 'avg' && LAYOUT.some((l) => l.key === c.key) && (lastLayout = i));
  cols.splice(mmlu >= 0 ? mmlu : lastLayout + 1, 0, 'avg');
  return cols;
}

function mdTable(data: StudyData, m: ModelData, rows: Row[]): string {
  const cols = tableColumns(data);
  const head = ['Method', '#W', '#A', '#G', ...cols.map((c) => (c === 'avg' ? 'Avg' : c.head))];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`];
  const fp = m.fp?.status === 'ok' ? m.fp : undefined;
  for (const r of m.fp ? [m.fp, ...rows] : rows) {
    const isFp = r === m.fp;
    const cells = headCells(r.cell);
    if (r.status !== 'ok') {
      cells.push(r.status === 'failed' ? 'failed (see below)' : 'not run yet', ...cols.slice(1).map(() => ''));
    } else {
      for (const c of cols) {
        const kind: Kind = c === 'avg' ? 'acc' : c.kind;
        const v = c === 'avg' ? r.avg : r.values[c.key];
        const f = c === 'avg' ? fp?.avg : fp?.values[c.key];
        cells.push(isFp ? fmtValue(v, kind) : fmtDelta(v, f, kind));
      }
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

interface Section {
  title: string;
  rows: Row[];
}

function sections(m: ModelData): Section[] {
  const out: Section[] = [];
  for (const method of ['rtn', 'gptq', 'awq']) {
    const rows = m.rows.filter((r) => r.cell.method === method);
    if (rows.length) out.push({ title: `Weight-only: ${methodName(method)}`, rows });
  }
  const wa = m.rows.filter((r) => r.cell.family === 'wa');
  if (wa.length) out.push({ title: 'Weight and activation: SmoothQuant', rows: wa });
  const billm = m.rows.filter((r) => r.cell.family === 'billm');
  if (billm.length) out.push({ title: 'BiLLM (1-bit)', rows: billm });
  const known = new Set(['rtn', 'gptq', 'awq']);
  const other = m.rows.filter((r) => r.cell.family === 'weight' && !known.has(r.cell.method));
  if (other.length) out.push({ title: 'Other', rows: other });
  return out;
}

export function renderMarkdown(data: StudyData, plotFiles: string[] = []): string {
  const out: string[] = ['# lowbit study', ''];
  const mf = data.manifest;
  if (mf) {
    const e = mf.eval;
    out.push(
      `Tasks ${e.tasks.join(', ')}; perplexity windows of ${e.seqLen} tokens${e.maxWindows ? `, at most ${e.maxWindows} per task` : ''}` +
        `${e.limit ? `; at most ${e.limit} examples per zero-shot task` : ''}. ` +
        `Calibration: ${mf.calibration.calibIds ? path.basename(mf.calibration.calibIds) : mf.calibration.calib ?? 'c4'}. lowbit ${mf.lowbit}.`,
      '',
    );
  }
  out.push(
    'Perplexity (lower is better) and accuracy in % (higher is better); each quantized cell shows its change from the ' +
      'full-precision (FP) row. #W/#A: weight/activation bits (16 = not quantized); #G: group size (- = per output channel). ' +
      'Avg: mean of the zero-shot accuracies present (MMLU apart).',
    '',
  );
  const missing = LAYOUT.filter((c) => !data.columns.some((d) => d.key === c.key)).map((c) => c.head);
  if (missing.length) out.push(`Not evaluated (columns omitted): ${missing.join(', ')}.`, '');
  for (const m of data.models) {
    out.push(`## ${m.name}`, '');
    if (!m.fp) out.push('_No full-precision cell in this study._', '');
    const secs = sections(m);
    for (const s of secs) out.push(`### ${s.title}`, '', mdTable(data, m, s.rows), '');
    if (!secs.length && m.fp) out.push(mdTable(data, m, []), '');
    const failed = [m.fp, ...m.rows].filter((r): r is Row => !!r && r.status === 'failed');
    if (failed.length) {
      out.push('Failed cells (rerun with `lowbit study … --retry-failed`):', '');
      for (const r of failed) out.push(`- ${r.cell.label}: ${r.error ?? 'unknown error'}`);
      out.push('');
    }
    const pending = [m.fp, ...m.rows].filter((r): r is Row => !!r && r.status === 'pending');
    if (pending.length) out.push(`Not run yet (rerun the study to resume): ${pending.map((r) => r.cell.label).join(', ')}.`, '');
    if (m.skipped.length) {
      out.push('Skipped combinations:', '');
      const byReason = new Map<string, string[]>();
      for (const s of m.skipped) byReason.set(s.reason, [...(byReason.get(s.reason) ?? []), s.label]);
      for (const [reason, labels] of byReason) out.push(`- ${labels.join(', ')}: ${reason}`);
      out.push('');
    }
    const mine = plotFiles.filter((f) => f.endsWith(`_${fileSafe(m.name)}.svg`));
    if (mine.length) out.push('Plots: ' + mine.map((f) => `[${f}](plots/${f})`).join(', '), '');
  }
  const across = plotFiles.filter((f) => f.startsWith('robustness') && f.endsWith('.svg'));
  if (across.length) out.push('## Across models', '', across.map((f) => `![${f}](plots/${f})`).join('\n'), '');
  return out.join('\n');
}

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function renderCsv(data: StudyData): string {
  const cols = LAYOUT.slice();
  for (const c of data.columns) if (!cols.some((x) => x.key === c.key)) cols.push(c);
  const mmlu = cols.findIndex((c) => c.key === 'mmlu');
  const heads = cols.map((c) => c.head);
  heads.splice(mmlu, 0, 'Avg');
  const lines = [['Model', 'Family', 'Spec', 'Method', '#W', '#A', '#G', ...heads, 'Status'].join(',')];
  const num = (v: number | null | undefined, kind: Kind) => (v === undefined ? '' : v === null ? 'NaN' : v.toFixed(kind === 'ppl' ? 4 : 2));
  for (const m of data.models) {
    for (const r of m.fp ? [m.fp, ...m.rows] : m.rows) {
      const vals = cols.map((c) => num(r.values[c.key], c.kind));
      vals.splice(mmlu, 0, num(r.avg, 'acc'));
      const status = r.status === 'failed' ? `failed: ${r.error ?? ''}` : r.status;
      lines.push([m.name, r.cell.family, r.cell.label, ...headCells(r.cell), ...vals, status].map(csvField).join(','));
    }
    for (const s of m.skipped) {
      const empty = cols.map(() => '');
      empty.push('');
      lines.push(
        [m.name, s.method === 'billm' ? 'billm' : s.abits ? 'wa' : 'weight', s.label, methodName(s.method), String(s.wbits), String(s.abits || 16), s.groupSize === -1 ? '-' : String(s.groupSize), ...empty, `skipped: ${s.reason}`]
          .map(csvField)
          .join(','),
      );
    }
  }
  return lines.join('\n') + '\n';
}

export interface ReportOutput {
  markdown: string;
  reportPath: string;
  csvPath: string;
  plotsDir: string;
  plots: string[];
  warnings: string[];
  data: StudyData;
}

/** Writes DIR/report.md, DIR/results.csv and DIR/plots/ from the store. */
export function writeReport(dir: string, opts: { png?: boolean } = {}): ReportOutput {
  if (!fs.existsSync(path.join(dir, 'results.log')) && !fs.existsSync(path.join(dir, 'study.json'))) {
    throw new Error(`${dir}: no study here (results.log and study.json are missing)`);
  }
  const data = loadStudy(dir);
  const plotsDir = path.join(data.dir, 'plots');
  const warnings: string[] = [];
  let plots: string[] = [];
  writeDirAtomically(plotsDir, (tmp) => {
    const r = renderPlots(data, { png: opts.png ?? true });
    warnings.push(...r.warnings);
    for (const [name, content] of r.files) fs.writeFileSync(path.join(tmp, name), content);
    plots = r.files.map(([n]) => n);
  });
  const markdown = renderMarkdown(data, plots);
  const reportPath = path.join(data.dir, 'report.md');
  const csvPath = path.join(data.dir, 'results.csv');
  writeFileAtomically(reportPath, markdown);
  writeFileAtomically(csvPath, renderCsv(data));
  return { markdown, reportPath, csvPath, plotsDir, plots, warnings, data };
}
