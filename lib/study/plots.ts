// The study's plots, as SVG written here (axes, ticks, log scale, legend) and PNG rasterized with resvg:
// per model, perplexity vs weight bits (log y, one line per method, per-channel dashed, an FP reference
// line) for each perplexity task and the average zero-shot accuracy vs bits; across models, the perplexity
// ratio to FP vs bits (best method at each width): the bigger model degrades less.
import * as fs from 'fs';
import type { CellInfo } from './grid';
import type { ModelData, Row, StudyData } from './report';

export interface Series {
  name: string;
  color: string;
  dash?: string; // SVG stroke-dasharray
  points: [number, number][];
}

export interface Chart {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  logY: boolean;
  series: Series[];
  refLines?: { y: number; label: string }[];
  xTicks?: number[];
}

const W = 800;
const H = 480;
const M = { left: 84, right: 230, top: 64, bottom: 62 };
const FONT = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmtTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5) {
    const e = Math.floor(Math.log10(a));
    const m = v / 10 ** e;
    return `${Number(m.toPrecision(2))}e${e}`;
  }
  if (a >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

/** "Nice" linear ticks covering [lo, hi]. */
export function linearTicks(lo: number, hi: number, target = 6): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Ticks for a log axis over [lo, hi] (values, not logs): decades, with 2× and 5× when the range is short. */
export function logTicks(lo: number, hi: number): number[] {
  const a = Math.floor(Math.log10(lo));
  const b = Math.ceil(Math.log10(hi));
  const decades = Math.log10(hi / lo);
  const mult = decades > 4 ? [1] : decades > 1.5 ? [1, 3] : [1, 2, 5];
  const out: number[] = [];
  for (let e = a; e <= b; e++) for (const m of mult) {
    const v = m * 10 ** e;
    if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
  }
  if (out.length >= 3) return out;
  return linearTicks(lo, hi, 5).filter((v) => v > 0);
}

export function renderSvg(c: Chart): string {
  const px0 = M.left;
  const px1 = W - M.right;
  const py0 = H - M.bottom;
  const py1 = M.top;
  const pts = c.series.flatMap((s) => s.points);
  const ys = [...pts.map((p) => p[1]), ...(c.refLines ?? []).map((r) => r.y)].filter((y) => Number.isFinite(y) && (!c.logY || y > 0));
  const xs = [...pts.map((p) => p[0]), ...(c.xTicks ?? [])];
  let xlo = xs.length ? Math.min(...xs) : 0;
  let xhi = xs.length ? Math.max(...xs) : 1;
  if (xhi === xlo) (xlo -= 1), (xhi += 1);
  const xpad = (xhi - xlo) * 0.06;
  xlo -= xpad;
  xhi += xpad;
  let ylo = ys.length ? Math.min(...ys) : 1;
  let yhi = ys.length ? Math.max(...ys) : 10;
  if (c.logY) {
    if (yhi / ylo < 1.05) (ylo /= 1.1), (yhi *= 1.1);
    const f = (yhi / ylo) ** 0.06;
    ylo /= f;
    yhi *= f;
  } else {
    if (yhi === ylo) (ylo -= 1), (yhi += 1);
    const p = (yhi - ylo) * 0.08;
    ylo -= p;
    yhi += p;
  }
  const X = (x: number) => px0 + ((x - xlo) / (xhi - xlo)) * (px1 - px0);
  const Y = (y: number) =>
    c.logY ? py0 - ((Math.log(y) - Math.log(ylo)) / (Math.log(yhi) - Math.log(ylo))) * (py0 - py1) : py0 - ((y - ylo) / (yhi - ylo)) * (py0 - py1);
  const o: string[] = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="${FONT}">`);
  o.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);
  o.push(`<text x="${(px0 + px1) / 2}" y="28" text-anchor="middle" font-size="17" font-weight="bold" fill="#111">${esc(c.title)}</text>`);
  if (c.subtitle) o.push(`<text x="${(px0 + px1) / 2}" y="48" text-anchor="middle" font-size="12" fill="#555">${esc(c.subtitle)}</text>`);
  // grid and ticks
  const yTicks = c.logY ? logTicks(ylo, yhi) : linearTicks(ylo, yhi);
  o.push(`<g font-size="12" fill="#333">`);
  for (const t of yTicks) {
    const y = Y(t).toFixed(1);
    o.push(`<line x1="${px0}" y1="${y}" x2="${px1}" y2="${y}" stroke="#e4e4e4" stroke-width="1"/>`);
    o.push(`<line x1="${px0 - 5}" y1="${y}" x2="${px0}" y2="${y}" stroke="#333"/>`);
    o.push(`<text x="${px0 - 8}" y="${y}" dy="4" text-anchor="end">${esc(fmtTick(t))}</text>`);
  }
  const xTicks = c.xTicks ?? linearTicks(xlo, xhi);
  for (const t of xTicks) {
    const x = X(t).toFixed(1);
    o.push(`<line x1="${x}" y1="${py1}" x2="${x}" y2="${py0}" stroke="#f0f0f0" stroke-width="1"/>`);
    o.push(`<line x1="${x}" y1="${py0}" x2="${x}" y2="${py0 + 5}" stroke="#333"/>`);
    o.push(`<text x="${x}" y="${py0 + 20}" text-anchor="middle">${esc(fmtTick(t))}</text>`);
  }
  o.push(`</g>`);
  o.push(`<rect x="${px0}" y="${py1}" width="${px1 - px0}" height="${py0 - py1}" fill="none" stroke="#333" stroke-width="1"/>`);
  o.push(`<text x="${(px0 + px1) / 2}" y="${H - 16}" text-anchor="middle" font-size="14" fill="#111">${esc(c.xLabel)}</text>`);
  o.push(`<text transform="translate(22 ${(py0 + py1) / 2}) rotate(-90)" text-anchor="middle" font-size="14" fill="#111">${esc(c.yLabel)}</text>`);
  // reference lines
  for (const r of c.refLines ?? []) {
    if (!(r.y > 0) && c.logY) continue;
    const y = Y(r.y).toFixed(1);
    o.push(`<line x1="${px0}" y1="${y}" x2="${px1}" y2="${y}" stroke="#444" stroke-width="1.5" stroke-dasharray="2,4"/>`);
    o.push(`<text x="${px0 + 6}" y="${y}" dy="-5" text-anchor="start" font-size="12" fill="#444">${esc(r.label)}</text>`);
  }
  // series
  o.push(`<g clip-path="none">`);
  for (const s of c.series) {
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!c.logY || y > 0)).sort((a, b) => a[0] - b[0]);
    if (!p.length) continue;
    if (p.length > 1) {
      const d = p.map(([x, y], i) => `${i ? 'L' : 'M'}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(' ');
      o.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2.2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    }
    for (const [x, y] of p) o.push(`<circle cx="${X(x).toFixed(1)}" cy="${Y(y).toFixed(1)}" r="4" fill="${s.dash ? '#fff' : s.color}" stroke="${s.color}" stroke-width="2"/>`);
  }
  o.push(`</g>`);
  // legend
  const lx = px1 + 18;
  let ly = py1 + 8;
  o.push(`<g font-size="12" fill="#111">`);
  for (const s of c.series) {
    if (!s.points.length) continue;
    o.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 30}" y2="${ly}" stroke="${s.color}" stroke-width="2.2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    o.push(`<circle cx="${lx + 15}" cy="${ly}" r="4" fill="${s.dash ? '#fff' : s.color}" stroke="${s.color}" stroke-width="2"/>`);
    o.push(`<text x="${lx + 38}" y="${ly}" dy="4">${esc(s.name)}</text>`);
    ly += 20;
  }
  for (const r of c.refLines ?? []) {
    o.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 30}" y2="${ly}" stroke="#444" stroke-width="1.5" stroke-dasharray="2,4"/>`);
    o.push(`<text x="${lx + 38}" y="${ly}" dy="4">${esc(r.label)}</text>`);
    ly += 20;
  }
  o.push(`</g>`);
  o.push(`</svg>`);
  return o.join('\n') + '\n';
}

const COLORS: Record<string, string> = {
  rtn: '#1f77b4',
  gptq: '#d62728',
  awq: '#2ca02c',
  smoothquant: '#9467bd',
  naive: '#8c564b',
  billm: '#ff7f0e',
};
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];
const NAMES: Record<string, string> = { rtn: 'RTN', gptq: 'GPTQ', awq: 'AWQ', smoothquant: 'SmoothQuant', naive: 'W/A no smoothing', billm: 'BiLLM' };

function seriesKey(c: CellInfo): { key: string; name: string; color: string; dash?: string } {
  const color = COLORS[c.method] ?? '#7f7f7f';
  const n = NAMES[c.method] ?? c.method;
  if (c.family === 'wa') return { key: `${c.method}|a${c.abits}`, name: `${n} W·A${c.abits}`, color, dash: c.abits <= 4 ? '6,3' : undefined };
  const g = c.groupSize === -1 ? 'per-channel' : `g${c.groupSize}`;
  return { key: `${c.method}|${c.groupSize}`, name: `${n} ${g}`, color, dash: c.groupSize === -1 ? '7,4' : undefined };
}

function buildSeries(rows: Row[], value: (r: Row) => number | null | undefined): Series[] {
  const map = new Map<string, Series>();
  for (const r of rows) {
    if (r.status !== 'ok') continue;
    const v = value(r);
    if (typeof v !== 'number' || !Number.isFinite(v)) continue;
    const k = seriesKey(r.cell);
    let s = map.get(k.key);
    if (!s) map.set(k.key, (s = { name: k.name, color: k.color, dash: k.dash, points: [] }));
    s.points.push([r.cell.wbits, v]);
  }
  return [...map.values()];
}

const TASK_NAMES: Record<string, string> = { wikitext2: 'WikiText-2', c4: 'C4' };

function bitsTicks(rows: Row[]): number[] {
  return [...new Set(rows.filter((r) => r.status === 'ok').map((r) => r.cell.wbits))].sort((a, b) => a - b);
}

export function fileSafe(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]+/g, '_');
}

export function studyCharts(data: StudyData): [string, Chart][] {
  const charts: [string, Chart][] = [];
  const pplCols = data.columns.filter((c) => c.kind === 'ppl');
  for (const m of data.models) {
    const fpOk = m.fp?.status === 'ok' ? m.fp : undefined;
    for (const col of pplCols) {
      const series = buildSeries(m.rows, (r) => r.values[col.key]);
      if (!series.length) continue;
      const fp = fpOk?.values[col.key];
      charts.push([
        `ppl_${fileSafe(col.key)}_${fileSafe(m.name)}`,
        {
          title: `${m.name}: ${TASK_NAMES[col.key] ?? col.key} perplexity vs weight bits`,
          subtitle: 'solid: group 128 · dashed: per-channel (W/A: dashed = 4-bit activations)',
          xLabel: 'weight bits (#W)',
          yLabel: `perplexity, ${TASK_NAMES[col.key] ?? col.key} (log scale)`,
          logY: true,
          series,
          refLines: typeof fp === 'number' ? [{ y: fp, label: `FP ${fp.toFixed(fp < 100 ? 2 : 1)}` }] : [],
          xTicks: bitsTicks(m.rows),
        },
      ]);
    }
    const accSeries = buildSeries(m.rows, (r) => r.avg);
    if (accSeries.length) {
      charts.push([
        `acc_${fileSafe(m.name)}`,
        {
          title: `${m.name}: zero-shot accuracy vs weight bits`,
          subtitle: 'average over the zero-shot tasks present (MMLU apart)',
          xLabel: 'weight bits (#W)',
          yLabel: 'average zero-shot accuracy (%)',
          logY: false,
          series: accSeries,
          refLines: typeof fpOk?.avg === 'number' ? [{ y: fpOk.avg, label: `FP ${fpOk.avg.toFixed(1)}` }] : [],
          xTicks: bitsTicks(m.rows),
        },
      ]);
    }
  }
  // Across models: ppl / FP ppl, the best weight-only (or BiLLM) cell at each bit width.
  const col = pplCols[0];
  if (col) {
    const series: Series[] = [];
    data.models.forEach((m: ModelData, i) => {
      const fp = m.fp?.status === 'ok' ? m.fp.values[col.key] : undefined;
      if (typeof fp !== 'number' || !(fp > 0)) return;
      const best = new Map<number, number>();
      for (const r of m.rows) {
        const v = r.values[col.key];
        if (r.status !== 'ok' || r.cell.family === 'wa' || typeof v !== 'number' || !Number.isFinite(v)) continue;
        const ratio = v / fp;
        if (!best.has(r.cell.wbits) || ratio < best.get(r.cell.wbits)!) best.set(r.cell.wbits, ratio);
      }
      if (best.size) series.push({ name: m.name, color: PALETTE[i % PALETTE.length], points: [...best.entries()] });
    });
    if (series.length) {
      charts.push([
        'robustness',
        {
          title: `Perplexity ratio to full precision vs weight bits`,
          subtitle: `${TASK_NAMES[col.key] ?? col.key}; best weight-only method at each width; lower = more robust (usually the bigger model)`,
          xLabel: 'weight bits (#W)',
          yLabel: 'quantized ppl / FP ppl (log scale)',
          logY: true,
          series,
          refLines: [{ y: 1, label: 'FP (ratio 1)' }],
          xTicks: [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b),
        },
      ]);
    }
  }
  return charts;
}

const FONT_FILES = [
  '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf',
  '/usr/share/fonts/dejavu/DejaVuSans.ttf',
  '/usr/share/fonts/TTF/DejaVuSans.ttf',
  '/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf',
  '/usr/share/fonts/liberation/LiberationSans-Regular.ttf',
  '/usr/share/fonts/truetype/freefont/FreeSans.ttf',
  '/Library/Fonts/Arial.ttf',
  '/System/Library/Fonts/Supplemental/Arial.ttf',
  'C:\\Windows\\Fonts\\arial.ttf',
];
const FONT_FAMILIES: Record<string, string> = { DejaVuSans: 'DejaVu Sans', LiberationSans: 'Liberation Sans', FreeSans: 'FreeSans', Arial: 'Arial', arial: 'Arial' };

type ResvgCtor = new (svg: string, opts?: unknown) => { render(): { asPng(): Buffer } };
let resvg: ResvgCtor | null | undefined;

function loadResvg(): ResvgCtor | null {
  if (resvg === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      resvg = (require('@resvg/resvg-js') as { Resvg: ResvgCtor }).Resvg;
    } catch {
      resvg = null;
    }
  }
  return resvg;
}

/** PNG of an SVG via resvg with a font file found on this system (system fonts as the fallback); null if resvg is missing. */
export function svgToPng(svg: string, warnings: string[] = []): Buffer | null {
  const Resvg = loadResvg();
  if (!Resvg) {
    warnings.push('PNG plots skipped: @resvg/resvg-js is not installed');
    return null;
  }
  const fontFile = FONT_FILES.find((f) => fs.existsSync(f));
  const family = fontFile ? (FONT_FAMILIES[fontFile.replace(/^.*[\\/]/, '').replace(/(-Regular)?\.ttf$/, '')] ?? 'DejaVu Sans') : undefined;
  if (!fontFile) warnings.push('no known font file found; PNG text uses the system fonts resvg finds (may be blank)');
  const r = new Resvg(svg, {
    background: '#ffffff',
    fitTo: { mode: 'zoom', value: 1.5 },
    font: { fontFiles: fontFile ? [fontFile] : [], loadSystemFonts: !fontFile, ...(family ? { defaultFontFamily: family, sansSerifFamily: family } : {}) },
  });
  return r.render().asPng();
}

/** The study's plots as [file name, content] pairs: NAME.svg and (with png) NAME.png. */
export function renderPlots(data: StudyData, opts: { png?: boolean } = {}): { files: [string, string | Buffer][]; warnings: string[] } {
  const files: [string, string | Buffer][] = [];
  const warnings: string[] = [];
  for (const [name, chart] of studyCharts(data)) {
    const svg = renderSvg(chart);
    files.push([`${name}.svg`, svg]);
    if (opts.png !== false) {
      const png = svgToPng(svg, warnings);
      if (png) files.push([`${name}.png`, png]);
    }
  }
  return { files, warnings: [...new Set(warnings)] };
}
